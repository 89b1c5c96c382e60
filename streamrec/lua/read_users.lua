-- Read-only. KEYS: per user its recent events, purchases, item counts, meta, cached
-- vector and items keys; ARGV[1]: "1" to read purchases and item counts (ranking),
-- else "0"; ARGV[2]: for ranking, of how many of the user's latest distinct items
-- to read the co-visitation links. Per user one array: events and scores,
-- purchases, counts, meta (flat field/value lists), the vector (nil when none) and
-- per linked item {item, epoch, links and scores}. One script call is one command
-- for the client to pack and one reply to parse, where a MULTI/EXEC pipeline of
-- five commands per user cost the model server ~1 ms of its CPU per request.
local ranking = ARGV[1] == '1'
local covis_items = tonumber(ARGV[2] or '0')
local out = {}
for i = 1, #KEYS, 6 do
  local purchased, counts, covis = {}, {}, {}
  if ranking then
    purchased = redis.call('ZRANGE', KEYS[i + 1], 0, -1)
    counts = redis.call('HGETALL', KEYS[i + 2])
    if covis_items > 0 then
      for _, item in ipairs(redis.call('ZRANGE', KEYS[i + 5], 0, covis_items - 1, 'REV')) do
        covis[#covis + 1] = {
          item, redis.call('HGET', item_key(item, ITEM_POPULARITY), 'cv:epoch') or '0',
          redis.call('ZRANGE', item_key(item, ITEM_COVIS), 0, -1, 'REV', 'WITHSCORES'),
        }
      end
    end
  end
  out[#out + 1] = {
    redis.call('ZRANGE', KEYS[i], 0, -1, 'WITHSCORES'), purchased, counts,
    redis.call('HGETALL', KEYS[i + 3]), redis.call('GET', KEYS[i + 4]), covis,
  }
end
return out
