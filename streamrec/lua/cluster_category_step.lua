-- Redis Cluster, step 4 of an event batch (streamrec/cluster_apply.py): the
-- popularity sets of the categories in one slot. KEYS[1]: a key of that slot
-- (routing only). ARGV: 1 the limits, 2 JSON [[category, item, [value, ref] per
-- EVENT_TYPES], ...]. An item's score is its whole decayed count over every type
-- against the set's epoch, set with ZADD GT (it only grows): no marker needed.
local c = cjson.decode(ARGV[1])
local half_life, rebase, category_max, item_ttl = c.half_life_ms, c.rebase_half_lives,
  c.category_max, c.item_ttl_s

for _, entry in ipairs(cjson.decode(ARGV[2])) do
  local category, item, standing = entry[1], entry[2], entry[3]
  local k_set, k_meta = category_key(category, CATEGORY_POPULAR), category_key(category, CATEGORY_META)
  local latest = nil
  for t = 2, #standing, 2 do
    local ref = tonumber(standing[t])
    if tonumber(standing[t - 1]) > 0 and (not latest or ref > latest) then latest = ref end
  end
  if latest then
    local epoch = set_epoch(k_set, k_meta, 'epoch', latest, half_life, rebase)
    local score = 0
    for t = 2, #standing, 2 do
      local value = tonumber(standing[t - 1])
      if value > 0 then score = score + value * math.pow(2, (tonumber(standing[t]) - epoch) / half_life) end
    end
    redis.call('ZADD', k_set, 'GT', string.format('%.17g', score), item)
    kept_strongest(k_set, k_meta, category_max, item_ttl)
  end
end
return 0
