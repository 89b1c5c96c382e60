-- Redis Cluster, step 1 of a batch of item records (streamrec/cluster_catalogue.py):
-- the records of the items of one slot, compared and written as apply_items.lua
-- does. What is left to apply in other slots (the category sets, the catalogue's
-- counts and change log) is kept in the item's pending hash until the last step, so
-- that applying the batch again hands it back instead of taking the record for a
-- duplicate. KEYS[1]: a key of that slot (routing only). ARGV: 1 the limits, 2 JSON
-- records as apply_items.lua takes them. Returns per record {`ItemApplied`, its
-- pending entry (JSON) or ''}.
local c = cjson.decode(ARGV[1])
local function counted(available, deleted)
  if not available or deleted == '1' then return 0, 0 end
  return 1, (available == '0') and 1 or 0
end
-- The pending entries this call wrote or handed back: the same record again in the
-- batch is then a duplicate, as on one Redis.
local answered = {}
local function apply(r)
  local item, ts, fp, deleted, available = r[1], r[2], r[3], r[4], r[5]
  local ts_text = string.format('%d', ts)
  local k_pending = item_key(item, ITEM_RECORD_PENDING)
  local once = k_pending .. ' ' .. ts_text .. ':' .. fp
  if answered[once] then return {0, ''} end
  local pending = redis.call('HGET', k_pending, ts_text .. ':' .. fp)
  if pending then
    answered[once] = true
    return {cjson.decode(pending).outcome, pending}
  end
  local k = item_key(item, ITEM_INFO)
  local stored = redis.call('HMGET', k, 'ts', 'fp', 'category', 'available', 'deleted')
  local stored_ts = tonumber(stored[1] or '')
  if stored_ts then
    if ts < stored_ts then return {3, ''} end
    if ts == stored_ts and fp == stored[2] then return {0, ''} end
  end
  local live_before, unavailable_before = counted(stored[4], stored[5])
  local live_after, unavailable_after = 0, 0
  if deleted ~= 1 then live_after, unavailable_after = 1, (available == 1) and 0 or 1 end
  local entry = {
    outcome = (deleted == 1) and 2 or 1, ts = ts, deleted = deleted,
    removed = stored[3] and cjson.decode(stored[3]) or {},
    added = (available == 1 and deleted ~= 1) and r[6] or {},
    live = live_after - live_before, unavailable = unavailable_after - unavailable_before,
  }
  pending = cjson.encode(entry)
  answered[once] = true
  redis.call('HSET', k_pending, ts_text .. ':' .. fp, pending)
  redis.call('EXPIRE', k_pending, c.pending_ttl_s)
  redis.call('DEL', k)
  if deleted == 1 then
    redis.call('HSET', k, 'ts', ts_text, 'fp', fp, 'available', '0', 'deleted', '1')
    redis.call('EXPIRE', k, c.tombstone_ttl_s)
  else
    redis.call('HSET', k, 'ts', ts_text, 'fp', fp, 'available', tostring(available), unpack(r[7]))
  end
  return {entry.outcome, pending}
end

local applied = {}
for i, record in ipairs(cjson.decode(ARGV[2])) do applied[i] = apply(record) end
return applied
