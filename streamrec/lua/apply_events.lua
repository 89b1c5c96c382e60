-- One script call applies a whole batch, passed as one JSON argument, so Python
-- packs one small command per 100 events (per-event keys and arguments cost the
-- worker a quarter of its time in redis-py's command packing). The script builds
-- each event's keys with the key layout's functions (streamrec/keys.py).
-- KEYS: 1 trending epoch, 2..(1+T) trending per type (one per EVENT_TYPES), then
--   the count of events applied since the last retraining trigger, the popularity
--   change counter and the popularity change log.
-- ARGV: 1 the limits as one JSON object (`StateStore._apply_config`), 2 JSON
--   [[event_id, user_id, item_id, type, ts_ms, content fingerprint], ...].
-- Returns per event: 0 duplicate, 1 applied, 2 applied and a click on an item
-- recommended to that user within the hit window (the online hit rate), 3 a
-- duplicate id whose content differs from the event applied under it (not applied).
-- A click or purchase by a user shown an experiment arm's answers within the hit
-- window (their `arm` key, from the write-back) is counted for that run and arm:
-- clicks, hits (clicks on an item recommended in the window), purchases of such items;
-- and, for the arm's cluster-robust interval, its per-user sums (`count_user_click`).
-- Keys other than the global ones are not declared, so this needs a single Redis
-- (primary + replicas); see docs/state.md.
local c = cjson.decode(ARGV[1])
local recent_max, purchased_max, items_max = c.recent_max, c.purchased_max, c.user_items_max
local user_ttl, item_ttl, dedup_ttl = c.user_ttl_s, c.item_ttl_s, c.dedup_ttl_s
local half_life, trending_max, rebase = c.half_life_ms, c.trending_max, c.rebase_half_lives
local hit_window, changed_max = c.hit_window_ms, c.changed_max
local covis_window, covis_max = c.covis_window, c.covis_max
local covis_half_life, covis_backward = c.covis_half_life_ms, c.covis_backward
local covis_rebase = c.covis_rebase_half_lives
local category_max = c.category_max
local experiment_ttl = c.experiment_ttl_s
local types = EVENT_TYPES
local k_new_events, k_pop_seq, k_pop_changed = KEYS[2 + #types], KEYS[3 + #types], KEYS[4 + #types]
local changed_items = {}
local epoch = tonumber(redis.call('GET', KEYS[1]) or '')
-- The latest time the decayed counters take from an event: Redis's clock plus the
-- allowed skew, so no single event dated far ahead moves their time origin.
local clock = redis.call('TIME')
local latest_ts = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  + c.max_future_skew_ms

-- The arm's sums over its users (streamrec/hit_rates.py): users, and of each user's
-- clicks c and hits h in the run, c^2, h^2 and c*h. The user's own c and h are kept in
-- a key of theirs (their hash tag, one run at a time: another run's tag starts at 0);
-- each click moves the sums by what it changes: (c+1)^2 - c^2 = 2c + 1, and so on.
local function count_user_click(user, arm, k_counts, name, hit)
  local k_user = user_key(user, USER_ARM_COUNTS)
  local held = redis.call('HMGET', k_user, 'arm', 'clicks', 'hits')
  local c, h = 0, 0
  if held[1] == arm then
    c, h = tonumber(held[2]) or 0, tonumber(held[3]) or 0
  else
    redis.call('HINCRBY', k_counts, name .. ':users', 1)
  end
  redis.call('HINCRBY', k_counts, name .. ':clicks_sq', 2 * c + 1)
  if hit == 1 then redis.call('HINCRBY', k_counts, name .. ':hits_sq', 2 * h + 1) end
  redis.call('HINCRBY', k_counts, name .. ':clicks_hits', h + hit * (c + 1))
  redis.call('HSET', k_user, 'arm', arm, 'clicks', c + 1, 'hits', h + hit)
  redis.call('EXPIRE', k_user, experiment_ttl)
end

local trend_key = {}
for i, t in ipairs(types) do trend_key[t] = KEYS[1 + i] end

-- A member's score in a decayed sorted set is w * 2^((ts - epoch) / half-life)
-- against the set's own epoch (field `epoch_field` of hash `k_epoch`); the epoch moves
-- forward (and the scores are scaled down) once the exponent passes `rebase_at`.
-- The set keeps its `max_members` strongest members.
local function decayed_add(k_set, k_epoch, epoch_field, member, weight, ts, hl, rebase_at,
                           max_members, ttl)
  local epoch = tonumber(redis.call('HGET', k_epoch, epoch_field) or '')
  if not epoch or redis.call('EXISTS', k_set) == 0 then
    epoch = ts
    redis.call('HSET', k_epoch, epoch_field, epoch)
  end
  local exponent = (ts - epoch) / hl
  if exponent > rebase_at then
    local shift = math.floor(exponent / rebase_at) * rebase_at
    local scale = math.pow(2, -shift)
    local members = redis.call('ZRANGE', k_set, 0, -1, 'WITHSCORES')
    for i = 1, #members, 2 do
      redis.call('ZADD', k_set, tonumber(members[i + 1]) * scale, members[i])
    end
    epoch = epoch + math.floor(shift * hl)
    redis.call('HSET', k_epoch, epoch_field, epoch)
    exponent = exponent - shift
  end
  redis.call('ZINCRBY', k_set, string.format('%.17g', weight * math.pow(2, exponent)), member)
  if redis.call('ZCARD', k_set) > max_members then
    redis.call('ZREMRANGEBYRANK', k_set, 0, -max_members - 1)
  end
  redis.call('EXPIRE', k_set, ttl)
  redis.call('EXPIRE', k_epoch, ttl)
end

-- Co-visitation (streamrec/covis.py has the rule and its Python twin): each item's
-- links are a decayed set against the item's own epoch, kept in that item's
-- popularity hash; each item keeps its `covis_max` strongest links.
local function covis_add(item, neighbour, weight, ts)
  local k_links, k_pop = item_key(item, ITEM_COVIS), item_key(item, ITEM_POPULARITY)
  decayed_add(k_links, k_pop, 'cv:epoch', neighbour, weight, ts, covis_half_life, covis_rebase,
              covis_max, item_ttl)
end

-- Popularity within each category the catalogue gives the item (retrain.popularity.
-- CategoryPopularity is the twin): every event counts once, decayed as popularity.
local function category_add(item, ts)
  local categories = redis.call('HGET', item_key(item, ITEM_INFO), 'category')
  if not categories then return end
  for _, category in ipairs(cjson.decode(categories)) do
    decayed_add(category_key(category, CATEGORY_POPULAR), category_key(category, CATEGORY_META),
                'epoch', item, 1, ts, half_life, rebase, category_max, item_ttl)
  end
end

local function covisit(k_items, item, ts)
  local earlier = redis.call('ZREVRANGEBYSCORE', k_items, ts, '-inf', 'LIMIT', 0, covis_window + 1)
  local d = 0
  for _, other in ipairs(earlier) do
    if other ~= item and d < covis_window then
      d = d + 1
      covis_add(other, item, 1 / d, ts)
      if covis_backward > 0 then covis_add(item, other, covis_backward / d, ts) end
    end
  end
end

local function apply(event)
  local event_id, user, item, etype, ts = event[1], event[2], event[3], event[4], event[5]
  local content = event[6]
  local k_recent, k_buy = user_key(user, USER_RECENT), user_key(user, USER_PURCHASED)
  local k_items, k_cnt = user_key(user, USER_ITEMS), user_key(user, USER_COUNTS)
  local k_meta = user_key(user, USER_META)
  local k_pop = item_key(item, ITEM_POPULARITY)
  -- The dedup marker holds the event's content fingerprint, so a second event under
  -- the same id with other content is told apart (a conflict) from a redelivery.
  local k_dedup = user_key(user, USER_DEDUP .. event_id)
  if not redis.call('SET', k_dedup, content, 'NX', 'EX', dedup_ttl) then
    local seen = redis.call('GET', k_dedup)
    -- '1': a marker written before fingerprints were kept; nothing to compare.
    if seen and seen ~= content and seen ~= '1' then return 3 end
    return 0
  end

  local hit = 0
  if (etype == 'click' or etype == 'purchase') and hit_window > 0 then
    local at = tonumber(redis.call('ZSCORE', user_key(user, USER_RECOMMENDED), item) or '')
    local recommended = at and ts >= at and ts - at <= hit_window
    local arm = redis.call('GET', user_key(user, USER_ARM))
    if arm then
      local bar = string.find(arm, '|', 1, true)
      local k_counts, name = experiment_key(string.sub(arm, 1, bar - 1)), string.sub(arm, bar + 1)
      if etype == 'click' then
        redis.call('HINCRBY', k_counts, name .. ':clicks', 1)
        if recommended then redis.call('HINCRBY', k_counts, name .. ':hits', 1) end
        count_user_click(user, arm, k_counts, name, recommended and 1 or 0)
      elseif recommended then
        redis.call('HINCRBY', k_counts, name .. ':purchases', 1)
      end
      redis.call('EXPIRE', k_counts, experiment_ttl)
    end
    if etype == 'click' and recommended then hit = 1 end
  end

  -- Length-prefixed, so any id round-trips: <len>:<event_id><len>:<item_id><type>
  local member = #event_id .. ':' .. event_id .. #item .. ':' .. item .. etype
  redis.call('ZADD', k_recent, ts, member)
  redis.call('ZREMRANGEBYRANK', k_recent, 0, -recent_max - 1)
  redis.call('EXPIRE', k_recent, user_ttl)

  if etype == 'purchase' then
    redis.call('ZADD', k_buy, 'GT', ts, item)
    redis.call('ZREMRANGEBYRANK', k_buy, 0, -purchased_max - 1)
    redis.call('EXPIRE', k_buy, user_ttl)
  end

  if covis_max > 0 then covisit(k_items, item, ts) end
  redis.call('ZADD', k_items, 'GT', ts, item)
  redis.call('HINCRBY', k_cnt, etype .. ':' .. item, 1)
  local excess = redis.call('ZCARD', k_items) - items_max
  if excess > 0 then
    local evicted = redis.call('ZPOPMIN', k_items, excess)
    for i = 1, #evicted, 2 do
      for _, t in ipairs(types) do
        redis.call('HDEL', k_cnt, t .. ':' .. evicted[i])
      end
    end
  end
  redis.call('EXPIRE', k_items, user_ttl)
  redis.call('EXPIRE', k_cnt, user_ttl)

  redis.call('HINCRBY', k_meta, 'n:' .. etype, 1)
  local last_ts = tonumber(redis.call('HGET', k_meta, 'last_ts') or '-1')
  if ts > last_ts then redis.call('HSET', k_meta, 'last_ts', ts) end
  redis.call('EXPIRE', k_meta, user_ttl)

  -- Decayed popularity: the value is kept at a reference time (the newest event
  -- seen); an older event adds its weight decayed to that time, so the result
  -- does not depend on arrival order. Both counters take the event's time capped
  -- at `latest_ts`.
  local decay_ts = math.min(ts, latest_ts)
  local ref_field = etype .. ':ref'
  local pop = redis.call('HMGET', k_pop, etype, ref_field, 'first')
  local value, ref = tonumber(pop[1] or '0'), tonumber(pop[2] or tostring(decay_ts))
  if decay_ts >= ref then
    value = value * math.pow(2, -(decay_ts - ref) / half_life) + 1
    ref = decay_ts
  else
    value = value + math.pow(2, -(ref - decay_ts) / half_life)
  end
  -- `first`: the item's earliest event time, whatever order events arrive in (the
  -- ranker's item_newness, streamrec/features.py).
  local first = tonumber(pop[3] or '')
  if not first or decay_ts < first then first = decay_ts end
  redis.call('HSET', k_pop, etype, string.format('%.17g', value), ref_field, ref,
    'first', string.format('%d', first))
  redis.call('EXPIRE', k_pop, item_ttl)
  changed_items[item] = true

  -- Trending: scores are 2^((ts - epoch) / half-life); the epoch moves forward
  -- (and every score is scaled down) before the exponent can overflow a double.
  if not epoch then
    epoch = decay_ts
    redis.call('SET', KEYS[1], epoch)
  end
  local exponent = (decay_ts - epoch) / half_life
  if exponent > rebase then
    local shift = math.floor(exponent / rebase) * rebase
    local scale = math.pow(2, -shift)
    for t = 2, 1 + #types do
      local members = redis.call('ZRANGE', KEYS[t], 0, -1, 'WITHSCORES')
      for i = 1, #members, 2 do
        redis.call('ZADD', KEYS[t], tonumber(members[i + 1]) * scale, members[i])
      end
    end
    epoch = epoch + shift * half_life
    redis.call('SET', KEYS[1], string.format('%.17g', epoch))
    exponent = exponent - shift
  end
  local trend = trend_key[etype]
  redis.call('ZINCRBY', trend, string.format('%.17g', math.pow(2, exponent)), item)
  if redis.call('ZCARD', trend) > trending_max then
    redis.call('ZREMRANGEBYRANK', trend, 0, -trending_max - 1)
  end
  if category_max > 0 then category_add(item, decay_ts) end
  return 1 + hit
end

local applied = {}
for i, event in ipairs(cjson.decode(ARGV[2])) do
  applied[i] = apply(event)
end
local count = 0
for _, a in ipairs(applied) do if a == 1 or a == 2 then count = count + 1 end end
if count > 0 then
  redis.call('INCRBY', k_new_events, count)
  local seq = redis.call('INCR', k_pop_seq)
  for item in pairs(changed_items) do redis.call('ZADD', k_pop_changed, seq, item) end
  redis.call('ZREMRANGEBYRANK', k_pop_changed, 0, -changed_max - 1)
end
return applied
