-- Read-only. KEYS: item popularity hashes; ARGV: event types. Per key and type the
-- stored value and its reference time (0 when absent), then the item's first event
-- time and 0 (as one more pair, so every key is types + 1 pairs), as little-endian
-- doubles:
-- decoding them as one JSON array of numbers cost the server's event loop ~1 ms per
-- 1,000 items (its popularity table reads the whole catalogue at start and on
-- catch-up).
local fields = {}
for i, t in ipairs(ARGV) do fields[2 * i - 1] = t; fields[2 * i] = t .. ':ref' end
fields[#fields + 1] = 'first'
fields[#fields + 1] = 'first:none'  -- never written: the pair's second value, 0
local out, n = {}, 0
for _, key in ipairs(KEYS) do
  local values = redis.call('HMGET', key, unpack(fields))
  for j = 1, #fields do n = n + 1; out[n] = struct.pack('<d', tonumber(values[j]) or 0) end
end
return table.concat(out)
