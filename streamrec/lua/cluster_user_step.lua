-- Redis Cluster, step 1 of an event batch (streamrec/cluster_apply.py): the events
-- of users in one slot. KEYS[1]: a key of that slot (routing only). ARGV: 1 the
-- limits (`StateStore._apply_config` plus `marker_ttl_s`), 2 JSON [[event_id, user_id,
-- item_id, type, ts_ms, content fingerprint], ...].
-- Dedups and writes the user's keys as apply_events.lua does, and keeps in the
-- user's pending hash what is left to apply in other slots (its item's popularity,
-- co-visitation links, trending, category and experiment counts) until the worker
-- clears it: a duplicate still pending hands that back, so a batch cut short
-- between the steps is finished by its redelivery.
-- Returns per event {outcome, effects JSON or false, 1 when those were pending from
-- an earlier attempt else 0}: outcomes as apply_events.lua's.
local c = cjson.decode(ARGV[1])
local recent_max, purchased_max, items_max = c.recent_max, c.purchased_max, c.user_items_max
local user_ttl, dedup_ttl, marker_ttl = c.user_ttl_s, c.dedup_ttl_s, c.marker_ttl_s
local hit_window, covis_window, covis_max = c.hit_window_ms, c.covis_window, c.covis_max
local experiment_ttl = c.experiment_ttl_s
local types = EVENT_TYPES
local clock = redis.call('TIME')
local latest_ts = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  + c.max_future_skew_ms

local applied_here = {}

-- A click's share of its arm's per-user sums (streamrec/hit_rates.py), as
-- apply_events.lua's count_user_click moves them: the user's own clicks c and hits h
-- in the run are kept here, in their slot; what the sums move by ({new user, 2c+1,
-- 2h+1 on a hit, h + hit * (c+1)}) goes with the pending effects to step 5.
local function user_click_sums(user, arm, hit)
  local k_user = user_key(user, USER_ARM_COUNTS)
  local held = redis.call('HMGET', k_user, 'arm', 'clicks', 'hits')
  local c, h, new_user = 0, 0, 1
  if held[1] == arm then c, h, new_user = tonumber(held[2]) or 0, tonumber(held[3]) or 0, 0 end
  redis.call('HSET', k_user, 'arm', arm, 'clicks', c + 1, 'hits', h + hit)
  redis.call('EXPIRE', k_user, experiment_ttl)
  return {new_user, 2 * c + 1, hit * (2 * h + 1), h + hit * (c + 1)}
end

local function apply(event)
  local event_id, user, item, etype, ts = event[1], event[2], event[3], event[4], event[5]
  local content = event[6]
  local k_recent, k_buy = user_key(user, USER_RECENT), user_key(user, USER_PURCHASED)
  local k_items, k_cnt = user_key(user, USER_ITEMS), user_key(user, USER_COUNTS)
  local k_meta, k_pending = user_key(user, USER_META), user_key(user, USER_PENDING)
  local k_dedup = user_key(user, USER_DEDUP .. event_id)
  if not redis.call('SET', k_dedup, content, 'NX', 'EX', dedup_ttl) then
    local seen = redis.call('GET', k_dedup)
    if seen and seen ~= content and seen ~= '1' then return {3, false, 0} end
    local pending = redis.call('HGET', k_pending, event_id)
    -- (Not a copy of one applied in this very call: that one is a duplicate.)
    if pending and not applied_here[k_dedup] then return {cjson.decode(pending).outcome, pending, 1} end
    return {0, false, 0}
  end

  local hit, recommended, arm = 0, false, false
  if (etype == 'click' or etype == 'purchase') and hit_window > 0 then
    local at = tonumber(redis.call('ZSCORE', user_key(user, USER_RECOMMENDED), item) or '')
    recommended = (at and ts >= at and ts - at <= hit_window) and true or false
    arm = redis.call('GET', user_key(user, USER_ARM))
    if etype == 'click' and recommended then hit = 1 end
  end
  local sums = {}
  if etype == 'click' and arm then sums = user_click_sums(user, arm, hit) end

  local member = #event_id .. ':' .. event_id .. #item .. ':' .. item .. etype
  redis.call('ZADD', k_recent, ts, member)
  redis.call('ZREMRANGEBYRANK', k_recent, 0, -recent_max - 1)
  redis.call('EXPIRE', k_recent, user_ttl)

  if etype == 'purchase' then
    redis.call('ZADD', k_buy, 'GT', ts, item)
    redis.call('ZREMRANGEBYRANK', k_buy, 0, -purchased_max - 1)
    redis.call('EXPIRE', k_buy, user_ttl)
  end

  -- The user's earlier items and their distance: the co-visitation links to add.
  local neighbours = {}
  if covis_max > 0 then
    local earlier = redis.call('ZREVRANGEBYSCORE', k_items, ts, '-inf', 'LIMIT', 0, covis_window + 1)
    for _, other in ipairs(earlier) do
      if other ~= item and #neighbours < covis_window then
        neighbours[#neighbours + 1] = other
      end
    end
  end
  redis.call('ZADD', k_items, 'GT', ts, item)
  redis.call('HINCRBY', k_cnt, etype .. ':' .. item, 1)
  local excess = redis.call('ZCARD', k_items) - items_max
  if excess > 0 then
    local evicted = redis.call('ZPOPMIN', k_items, excess)
    for i = 1, #evicted, 2 do
      for _, t in ipairs(types) do redis.call('HDEL', k_cnt, t .. ':' .. evicted[i]) end
    end
  end
  redis.call('EXPIRE', k_items, user_ttl)
  redis.call('EXPIRE', k_cnt, user_ttl)

  redis.call('HINCRBY', k_meta, 'n:' .. etype, 1)
  local last_ts = tonumber(redis.call('HGET', k_meta, 'last_ts') or '-1')
  if ts > last_ts then redis.call('HSET', k_meta, 'last_ts', ts) end
  redis.call('EXPIRE', k_meta, user_ttl)

  local effects = cjson.encode({
    outcome = 1 + hit, item = item, type = etype, ts = ts, decay_ts = math.min(ts, latest_ts),
    neighbours = neighbours, arm = arm or '', recommended = recommended and 1 or 0,
    sums = sums,
  })
  applied_here[k_dedup] = true
  redis.call('HSET', k_pending, event_id, effects)
  redis.call('EXPIRE', k_pending, marker_ttl)
  return {1 + hit, effects, 0}
end

local out = {}
for i, event in ipairs(cjson.decode(ARGV[2])) do out[i] = apply(event) end
return out
