-- Read-only. KEYS: the popularity change counter and log; ARGV: 1 the counter value
-- the reader has seen ('' for none), 2 the log's cap. Returns {counter, items
-- changed since} or {counter, nil} when the log cannot tell: the counter went
-- back (Redis lost it) or the log was trimmed past what the reader has seen.
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
if ARGV[1] == '' then return {seq, {}} end
local since = tonumber(ARGV[1])
if seq < since then return {seq, false} end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if tonumber(oldest[2]) > since then return {seq, false} end
end
return {seq, redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. since, '+inf')}
