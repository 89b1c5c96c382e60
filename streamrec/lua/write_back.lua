-- Written back after serving, many users at once. ARGV: hit window ms (0: record no items), max items,
-- vector ttl s, then per user: user id, now ms, the cached vector ('' for none),
-- the item count, the item ids. A user's recommended items older than the window
-- and beyond the cap are dropped. Builds the user keys itself, like the apply script.
local window, max_items, vector_ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local i = 4
while i <= #ARGV do
  local now, vector, n = tonumber(ARGV[i + 1]), ARGV[i + 2], tonumber(ARGV[i + 3])
  if vector ~= '' then redis.call('SET', user_key(ARGV[i], USER_VECTOR), vector, 'EX', vector_ttl) end
  if window > 0 and n > 0 then
    local k_rec = user_key(ARGV[i], USER_RECOMMENDED)
    for j = i + 4, i + 3 + n do redis.call('ZADD', k_rec, now, ARGV[j]) end
    redis.call('ZREMRANGEBYSCORE', k_rec, '-inf', '(' .. (now - window))
    redis.call('ZREMRANGEBYRANK', k_rec, 0, -max_items - 1)
    redis.call('PEXPIRE', k_rec, window)
  end
  i = i + 4 + n
end
return 0
