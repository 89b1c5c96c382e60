-- ARGV: 1 the limits as one JSON object, 2 JSON [[item_id, ts, fingerprint, deleted
-- (0/1), available (0/1), [categories], [field, value, ...]], ...] (the hash fields
-- beyond ts, fp and available). Returns an `ItemApplied` per record. Category keys
-- are other slots and are built here, so this needs one Redis, as the event apply
-- script does; a Redis Cluster runs the same in steps by slot
-- (streamrec/cluster_catalogue.py). Keeps the catalogue's counts
-- (CATALOGUE_ITEMS: items with a live record; CATALOGUE_UNAVAILABLE: those of them
-- unavailable) with every record it applies, and the change log (CATALOGUE_CHANGES:
-- each item scored by the CATALOGUE_SEQ value of its newest record; a deleted item
-- stays while its deletion marker lives, CATALOGUE_DELETIONS scoring it by the
-- delete's ts, so that a follower of the log learns of the delete too).
local c = cjson.decode(ARGV[1])
-- (1 when a record is a live item, 1 when that item is unavailable) from a stored
-- record's `available` and `deleted` fields.
local function counted(available, deleted)
  if not available or deleted == '1' then return 0, 0 end
  return 1, (available == '0') and 1 or 0
end
-- The counts move with each record, right after it is written: a script error on a
-- later record of the batch (the batch is then applied again one by one, this
-- record a duplicate) neither loses nor repeats them.
local function recount(stored, deleted, available)
  local live_before, unavailable_before = counted(stored[4], stored[5])
  local live_after, unavailable_after = 0, 0
  if deleted ~= 1 then live_after, unavailable_after = 1, (available == 1) and 0 or 1 end
  if live_after ~= live_before then
    redis.call('INCRBY', CATALOGUE_ITEMS, live_after - live_before)
  end
  if unavailable_after ~= unavailable_before then
    redis.call('INCRBY', CATALOGUE_UNAVAILABLE, unavailable_after - unavailable_before)
  end
end
local function apply(r)
  local item, ts, fp, deleted, available = r[1], r[2], r[3], r[4], r[5]
  local k = item_key(item, ITEM_INFO)
  local stored = redis.call('HMGET', k, 'ts', 'fp', 'category', 'available', 'deleted')
  local stored_ts = tonumber(stored[1] or '')
  if stored_ts then
    if ts < stored_ts then return 3 end
    if ts == stored_ts and fp == stored[2] then return 0 end
  end
  if stored[3] then
    for _, category in ipairs(cjson.decode(stored[3])) do
      redis.call('ZREM', category_key(category, CATEGORY_AVAILABLE), item)
    end
  end
  if available == 1 then
    for _, category in ipairs(r[6]) do
      redis.call('ZADD', category_key(category, CATEGORY_AVAILABLE), ts, item)
    end
  end
  -- The record (with its ts, the guard above) is written last: a script error before
  -- it leaves the record to be applied again, not taken for a duplicate.
  redis.call('DEL', k)
  local ts_text = string.format('%d', ts)
  if deleted == 1 then
    redis.call('HSET', k, 'ts', ts_text, 'fp', fp, 'available', '0', 'deleted', '1')
    redis.call('EXPIRE', k, c.tombstone_ttl_s)
    recount(stored, deleted, available)
    redis.call('ZADD', CATALOGUE_CHANGES, redis.call('INCR', CATALOGUE_SEQ), item)
    redis.call('ZADD', CATALOGUE_DELETIONS, ts_text, item)
    forget_deletions_before(CATALOGUE_DELETIONS, CATALOGUE_CHANGES, ts - c.tombstone_ttl_s * 1000)
    return 2
  end
  redis.call('HSET', k, 'ts', ts_text, 'fp', fp, 'available', tostring(available), unpack(r[7]))
  recount(stored, deleted, available)
  redis.call('ZADD', CATALOGUE_CHANGES, redis.call('INCR', CATALOGUE_SEQ), item)
  redis.call('ZREM', CATALOGUE_DELETIONS, item)
  return 1
end

local applied = {}
for i, record in ipairs(cjson.decode(ARGV[2])) do applied[i] = apply(record) end
-- Serving reads the catalogue per request only once it has ever held a record.
redis.call('SET', CATALOGUE_MARKER, '1')
return applied
