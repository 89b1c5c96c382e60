-- Read-only. KEYS[1]: a key of the users' slot (routing only: on a Redis Cluster
-- every user of one call shares a slot, and a user's keys share the user's hash tag).
-- ARGV: 1 "1" to read purchases and item counts (ranking), else "0"; 2 for ranking,
-- of how many of the user's latest distinct items to read the co-visitation links;
-- then the user ids. Per user one array: events and scores, purchases, counts, meta
-- (flat field/value lists), the vector (nil when none) and per linked item {item,
-- epoch, links and scores}. One script call is one command for the client to pack
-- and one reply to parse, where a MULTI/EXEC pipeline of five commands per user cost
-- the model server ~1 ms of its CPU per request; the keys are built here, one
-- argument per user, where six keys per user cost the client redis-py's encoding
-- of every one.
local ranking = ARGV[1] == '1'
local covis_items = tonumber(ARGV[2] or '0')
local out = {}
for i = 3, #ARGV do
  local user = ARGV[i]
  local purchased, counts, covis = {}, {}, {}
  if ranking then
    purchased = redis.call('ZRANGE', user_key(user, USER_PURCHASED), 0, -1)
    counts = redis.call('HGETALL', user_key(user, USER_COUNTS))
    if covis_items > 0 then
      for _, item in ipairs(redis.call('ZRANGE', user_key(user, USER_ITEMS), 0, covis_items - 1,
                                       'REV')) do
        covis[#covis + 1] = {
          item, redis.call('HGET', item_key(item, ITEM_POPULARITY), 'cv:epoch') or '0',
          redis.call('ZRANGE', item_key(item, ITEM_COVIS), 0, -1, 'REV', 'WITHSCORES'),
        }
      end
    end
  end
  out[#out + 1] = {
    redis.call('ZRANGE', user_key(user, USER_RECENT), 0, -1, 'WITHSCORES'), purchased, counts,
    redis.call('HGETALL', user_key(user, USER_META)), redis.call('GET', user_key(user, USER_VECTOR)),
    covis,
  }
end
return out
