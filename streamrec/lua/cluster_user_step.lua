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
local dedup_ttl, marker_ttl = c.dedup_ttl_s, c.marker_ttl_s
local hit_window, covis_window, covis_max = c.hit_window_ms, c.covis_window, c.covis_max
local experiment_ttl = c.experiment_ttl_s
local clock = redis.call('TIME')
local latest_ts = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  + c.max_future_skew_ms

local applied_here = {}

local function apply(event)
  local event_id, user, item, etype, ts = event[1], event[2], event[3], event[4], event[5]
  local content = event[6]
  local k_items, k_pending = user_key(user, USER_ITEMS), user_key(user, USER_PENDING)
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
    recommended, arm = shown_to(user, item, ts, hit_window)
    if etype == 'click' and recommended then hit = 1 end
  end
  local sums = {}
  if etype == 'click' and arm then sums = user_click_sums(user, arm, hit, experiment_ttl) end

  record_recent(user, event_id, item, etype, ts, c)

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
  record_item(user, item, etype, ts, c)

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
