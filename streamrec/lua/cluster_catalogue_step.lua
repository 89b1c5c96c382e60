-- Redis Cluster, step 3 of a batch of item records (streamrec/cluster_catalogue.py):
-- the catalogue's counts and change log, under the hash tag `{catalogue}`, once per
-- record (a marker each, so applying the batch again adds nothing twice).
-- KEYS: marker, items, unavailable, seq, changes, deletions (`keys.CatalogueKeys`).
-- ARGV: 1 the limits, 2 JSON [[record marker key, item, ts, deleted (0/1), change of
-- the live count, change of the unavailable count], ...] in the batch's order.
local c = cjson.decode(ARGV[1])
local k_marker, k_items, k_unavailable = KEYS[1], KEYS[2], KEYS[3]
local k_seq, k_changes, k_deletions = KEYS[4], KEYS[5], KEYS[6]
for _, r in ipairs(cjson.decode(ARGV[2])) do
  local marker, item, ts, deleted, live, unavailable = r[1], r[2], r[3], r[4], r[5], r[6]
  if redis.call('EXISTS', marker) == 0 then
    if live ~= 0 then redis.call('INCRBY', k_items, live) end
    if unavailable ~= 0 then redis.call('INCRBY', k_unavailable, unavailable) end
    redis.call('ZADD', k_changes, redis.call('INCR', k_seq), item)
    if deleted == 1 then
      redis.call('ZADD', k_deletions, string.format('%d', ts), item)
      forget_deletions_before(k_deletions, k_changes, ts - c.tombstone_ttl_s * 1000)
    else
      redis.call('ZREM', k_deletions, item)
    end
    redis.call('SET', marker, '1', 'EX', c.pending_ttl_s)
  end
end
redis.call('SET', k_marker, '1')
return 0
