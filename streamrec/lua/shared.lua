-- Functions the single-Redis apply (apply_events.lua) and the Redis Cluster steps
-- (cluster_*.lua) share: what one event does to a user's keys, to an item's
-- popularity, to a decayed sorted set (co-visitation links, category popularity), to
-- the trending sets' epoch and to an experiment arm's per-user sums.
-- `lua_script` puts this after the key layout, before every script; each takes what
-- it needs as arguments (the scripts' settings differ in name and in source).

-- The user's recent events (length-prefixed members, so any id round-trips:
-- <len>:<event_id><len>:<item_id><type>) and purchases, each capped.
local function record_recent(user, event_id, item, etype, ts, limits)
  local k_recent, k_buy = user_key(user, USER_RECENT), user_key(user, USER_PURCHASED)
  local member = #event_id .. ':' .. event_id .. #item .. ':' .. item .. etype
  redis.call('ZADD', k_recent, ts, member)
  redis.call('ZREMRANGEBYRANK', k_recent, 0, -limits.recent_max - 1)
  redis.call('EXPIRE', k_recent, limits.user_ttl_s)
  if etype == 'purchase' then
    redis.call('ZADD', k_buy, 'GT', ts, item)
    redis.call('ZREMRANGEBYRANK', k_buy, 0, -limits.purchased_max - 1)
    redis.call('EXPIRE', k_buy, limits.user_ttl_s)
  end
end

-- The user's items (latest time each), their per-type counts (an evicted item's
-- go with it) and the per-type totals and latest time in the user's meta hash.
local function record_item(user, item, etype, ts, limits)
  local k_items, k_cnt = user_key(user, USER_ITEMS), user_key(user, USER_COUNTS)
  local k_meta = user_key(user, USER_META)
  redis.call('ZADD', k_items, 'GT', ts, item)
  redis.call('HINCRBY', k_cnt, etype .. ':' .. item, 1)
  local excess = redis.call('ZCARD', k_items) - limits.user_items_max
  if excess > 0 then
    local evicted = redis.call('ZPOPMIN', k_items, excess)
    for i = 1, #evicted, 2 do
      for _, t in ipairs(EVENT_TYPES) do redis.call('HDEL', k_cnt, t .. ':' .. evicted[i]) end
    end
  end
  redis.call('EXPIRE', k_items, limits.user_ttl_s)
  redis.call('EXPIRE', k_cnt, limits.user_ttl_s)
  redis.call('HINCRBY', k_meta, 'n:' .. etype, 1)
  local last_ts = tonumber(redis.call('HGET', k_meta, 'last_ts') or '-1')
  if ts > last_ts then redis.call('HSET', k_meta, 'last_ts', ts) end
  redis.call('EXPIRE', k_meta, limits.user_ttl_s)
end

-- Decayed popularity of one event type in an item's hash `k_pop`: the value is kept
-- at a reference time (the newest event seen); an older event adds its weight
-- decayed to that time, so the result does not depend on arrival order. `first`:
-- the item's earliest event time, whatever order events arrive in (the ranker's
-- item_newness, streamrec/features.py).
local function add_popularity(k_pop, etype, decay_ts, half_life, ttl)
  local ref_field = etype .. ':ref'
  local pop = redis.call('HMGET', k_pop, etype, ref_field, 'first')
  local value, ref = tonumber(pop[1] or '0'), tonumber(pop[2] or tostring(decay_ts))
  if decay_ts >= ref then
    value = value * math.pow(2, -(decay_ts - ref) / half_life) + 1
    ref = decay_ts
  else
    value = value + math.pow(2, -(ref - decay_ts) / half_life)
  end
  local first = tonumber(pop[3] or '')
  if not first or decay_ts < first then first = decay_ts end
  redis.call('HSET', k_pop, etype, string.format('%.17g', value), ref_field, ref,
    'first', string.format('%d', first))
  redis.call('EXPIRE', k_pop, ttl)
end

-- A decayed sorted set's scores are w * 2^((ts - epoch) / half-life) against the
-- set's own epoch (field `epoch_field` of hash `k_epoch`; `ts` becomes it when the set
-- is new); the epoch moves forward, and the scores are scaled down, once the exponent
-- passes `rebase_at`. Returns the epoch and `ts`'s exponent against it.
local function set_epoch(k_set, k_epoch, epoch_field, ts, hl, rebase_at)
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
  return epoch, exponent
end

-- A decayed sorted set after a write: its `max_members` strongest members kept, and
-- it and its epoch's hash living `ttl` more seconds.
local function kept_strongest(k_set, k_epoch, max_members, ttl)
  if redis.call('ZCARD', k_set) > max_members then
    redis.call('ZREMRANGEBYRANK', k_set, 0, -max_members - 1)
  end
  redis.call('EXPIRE', k_set, ttl)
  redis.call('EXPIRE', k_epoch, ttl)
end

-- Adds `weight` at `ts` to `member` of a decayed sorted set (`set_epoch`), which keeps
-- its `max_members` strongest members.
local function decayed_add(k_set, k_epoch, epoch_field, member, weight, ts, hl, rebase_at,
                           max_members, ttl)
  local _, exponent = set_epoch(k_set, k_epoch, epoch_field, ts, hl, rebase_at)
  redis.call('ZINCRBY', k_set, string.format('%.17g', weight * math.pow(2, exponent)), member)
  kept_strongest(k_set, k_epoch, max_members, ttl)
end

-- Trending scores are 2^((ts - epoch) / half-life) against the epoch in `k_epoch`
-- (nil: not set yet, `ts` becomes it); the epoch moves forward, and every score of
-- the sets `k_sets` is scaled down, before the exponent can overflow a double.
-- Returns the epoch and `ts`'s exponent against it.
local function trending_exponent(k_epoch, k_sets, epoch, ts, half_life, rebase)
  if not epoch then
    epoch = ts
    redis.call('SET', k_epoch, epoch)
  end
  local exponent = (ts - epoch) / half_life
  if exponent > rebase then
    local shift = math.floor(exponent / rebase) * rebase
    local scale = math.pow(2, -shift)
    for _, k_set in ipairs(k_sets) do
      local members = redis.call('ZRANGE', k_set, 0, -1, 'WITHSCORES')
      for i = 1, #members, 2 do
        redis.call('ZADD', k_set, tonumber(members[i + 1]) * scale, members[i])
      end
    end
    epoch = epoch + shift * half_life
    redis.call('SET', k_epoch, string.format('%.17g', epoch))
    exponent = exponent - shift
  end
  return epoch, exponent
end

-- The catalogue's change log (`k_changes`) lets go of the items deleted before
-- `before_ms` (event time, `k_deletions`), as their markers expire: a bounded number
-- per call, each delete trims what it can.
local function forget_deletions_before(k_deletions, k_changes, before_ms)
  local old = redis.call(
    'ZRANGEBYSCORE', k_deletions, '-inf', string.format('(%d', before_ms), 'LIMIT', 0, 100)
  if #old > 0 then
    redis.call('ZREM', k_changes, unpack(old))
    redis.call('ZREM', k_deletions, unpack(old))
  end
end

-- Was `item` shown to `user` (the write-back's `rec` set) within `hit_window` ms
-- before `ts`, and which experiment arm's answers the user saw lately (`arm` key,
-- `<run id>|<arm>`; false: none). For a click or purchase with a hit window only.
local function shown_to(user, item, ts, hit_window)
  local at = tonumber(redis.call('ZSCORE', user_key(user, USER_RECOMMENDED), item) or '')
  local recommended = (at and ts >= at and ts - at <= hit_window) and true or false
  return recommended, redis.call('GET', user_key(user, USER_ARM))
end

-- The arm's sums over its users (streamrec/hit_rates.py): users, and of each user's
-- clicks c and hits h in the run, c^2, h^2 and c*h. The user's own c and h are kept in
-- a key of theirs (their hash tag, one run at a time: another run's tag starts at 0);
-- a click moves the sums by what it changes: (c+1)^2 - c^2 = 2c + 1, and so on.
-- Returns those moves, in ARM_SUM_FIELDS order.
local ARM_SUM_FIELDS = {'users', 'clicks_sq', 'hits_sq', 'clicks_hits'}
local function user_click_sums(user, arm, hit, ttl)
  local k_user = user_key(user, USER_ARM_COUNTS)
  local held = redis.call('HMGET', k_user, 'arm', 'clicks', 'hits')
  local c, h, new_user = 0, 0, 1
  if held[1] == arm then c, h, new_user = tonumber(held[2]) or 0, tonumber(held[3]) or 0, 0 end
  redis.call('HSET', k_user, 'arm', arm, 'clicks', c + 1, 'hits', h + hit)
  redis.call('EXPIRE', k_user, ttl)
  return {new_user, 2 * c + 1, hit * (2 * h + 1), h + hit * (c + 1)}
end

-- Adds a click's moves (`user_click_sums`) to arm `name`'s sums in the run hash.
local function add_arm_sums(k_counts, name, sums)
  for i, field in ipairs(ARM_SUM_FIELDS) do
    if sums[i] ~= 0 then redis.call('HINCRBY', k_counts, name .. ':' .. field, sums[i]) end
  end
end
