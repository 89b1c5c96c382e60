-- Redis Cluster, step 3 of an event batch (streamrec/cluster_apply.py): trending,
-- the retrain counter and the popularity change log, all under the hash tag `{g}`.
-- KEYS: as apply_events.lua's (`keys.CLUSTER_KEYS`). ARGV: 1 the limits, 2 JSON
-- {"items": [[item, [value, ref] per EVENT_TYPES], ...], "new": events applied for
-- the first time}. An item's trending score is its whole decayed count (its
-- popularity hash, exact once per event: the item step) against trending's epoch,
-- set with ZADD GT: the count only grows, so writing it again, or late, changes
-- nothing, and this step needs no marker. Returns 0.
local c = cjson.decode(ARGV[1])
local half_life, trending_max, rebase = c.half_life_ms, c.trending_max, c.rebase_half_lives
local changed_max = c.changed_max
local types = EVENT_TYPES
local k_new_events, k_pop_seq, k_pop_changed = KEYS[2 + #types], KEYS[3 + #types], KEYS[4 + #types]
local batch = cjson.decode(ARGV[2])
local epoch = tonumber(redis.call('GET', KEYS[1]) or '')

local trend_sets = {}
for t = 1, #types do trend_sets[t] = KEYS[1 + t] end

local changed = 0
for _, entry in ipairs(batch.items) do
  local item, standing = entry[1], entry[2]
  for t = 1, #types do
    local value, ref = tonumber(standing[2 * t - 1]), tonumber(standing[2 * t])
    if value > 0 then
      epoch = trending_exponent(KEYS[1], trend_sets, epoch, ref, half_life, rebase)
      local trend = KEYS[1 + t]
      local score = value * math.pow(2, (ref - epoch) / half_life)
      redis.call('ZADD', trend, 'GT', string.format('%.17g', score), item)
      if redis.call('ZCARD', trend) > trending_max then
        redis.call('ZREMRANGEBYRANK', trend, 0, -trending_max - 1)
      end
    end
  end
  changed = changed + 1
end
if batch.new > 0 then redis.call('INCRBY', k_new_events, batch.new) end
if changed > 0 then
  local seq = redis.call('INCR', k_pop_seq)
  for _, entry in ipairs(batch.items) do redis.call('ZADD', k_pop_changed, seq, entry[1]) end
  redis.call('ZREMRANGEBYRANK', k_pop_changed, 0, -changed_max - 1)
end
return 0
