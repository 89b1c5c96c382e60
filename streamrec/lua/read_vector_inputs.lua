-- Read-only: what the user encoder and the vector cache need of each user, for the
-- stream worker's vector refresh (stream/vectors.py). KEYS[1]: a key of the users'
-- slot (routing only, as read_users.lua). ARGV: the user ids. Per user one array:
-- the recent events' members oldest first (no times: the encoder takes the order),
-- the sum of the meta hash's per-type counts, its latest event time (nil when none)
-- and the cached vector (nil when none): the state tag's parts
-- (`StoredUser.state_tag`). `read_users` with its scores, purchases and counts cost
-- the refresh twice the client CPU per user.
local out = {}
for i = 1, #ARGV do
  local user = ARGV[i]
  local meta = redis.call('HGETALL', user_key(user, USER_META))
  local total, last_ts = 0, false
  for j = 1, #meta, 2 do
    if string.sub(meta[j], 1, 2) == 'n:' then
      total = total + tonumber(meta[j + 1])
    elseif meta[j] == 'last_ts' then
      last_ts = meta[j + 1]
    end
  end
  out[i] = {
    redis.call('ZRANGE', user_key(user, USER_RECENT), 0, -1), total, last_ts,
    redis.call('GET', user_key(user, USER_VECTOR)),
  }
end
return out
