-- Read-only. KEYS: item info hashes; ARGV[1]: one field. Per key its value, or false.
local values = {}
for i, k in ipairs(KEYS) do values[i] = redis.call('HGET', k, ARGV[1]) end
return values
