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
-- and, for the arm's cluster-robust interval, its per-user sums (`user_click_sums`,
-- lua/shared.lua, which also holds what an event writes to the user's keys, the
-- item's popularity and the trending epoch: the Redis Cluster steps share them).
-- Keys other than the global ones are not declared, so this needs a single Redis
-- (primary + replicas); see docs/state.md.
local c = cjson.decode(ARGV[1])
local item_ttl, dedup_ttl = c.item_ttl_s, c.dedup_ttl_s
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

local trend_key, trend_sets = {}, {}
for i, t in ipairs(types) do
  trend_key[t] = KEYS[1 + i]
  trend_sets[i] = KEYS[1 + i]
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
  local k_items, k_pop = user_key(user, USER_ITEMS), item_key(item, ITEM_POPULARITY)
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
    local recommended, arm = shown_to(user, item, ts, hit_window)
    if arm then
      local bar = string.find(arm, '|', 1, true)
      local k_counts, name = experiment_key(string.sub(arm, 1, bar - 1)), string.sub(arm, bar + 1)
      if etype == 'click' then
        redis.call('HINCRBY', k_counts, name .. ':clicks', 1)
        if recommended then redis.call('HINCRBY', k_counts, name .. ':hits', 1) end
        add_arm_sums(k_counts, name, user_click_sums(user, arm, recommended and 1 or 0,
                                                    experiment_ttl))
      elseif recommended then
        redis.call('HINCRBY', k_counts, name .. ':purchases', 1)
      end
      redis.call('EXPIRE', k_counts, experiment_ttl)
    end
    if etype == 'click' and recommended then hit = 1 end
  end

  record_recent(user, event_id, item, etype, ts, c)
  if covis_max > 0 then covisit(k_items, item, ts) end
  record_item(user, item, etype, ts, c)

  -- Both counters take the event's time capped at `latest_ts`.
  local decay_ts = math.min(ts, latest_ts)
  add_popularity(k_pop, etype, decay_ts, half_life, item_ttl)
  changed_items[item] = true
  local exponent
  epoch, exponent = trending_exponent(KEYS[1], trend_sets, epoch, decay_ts, half_life, rebase)
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
