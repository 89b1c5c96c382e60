-- Redis Cluster, step 2 of an event batch (streamrec/cluster_apply.py): what the
-- batch's events add to the items of one slot. KEYS[1]: a key of that slot (routing
-- only). ARGV: 1 the limits, 2 JSON [[marker, item, type, decay ts, [neighbour, ...],
-- ts], ...]: an event's own item (its popularity, and its links back to the user's
-- earlier items), or [marker, item, '', distance, [event's item, ts]]: an earlier
-- item's link to the event's item. Each is added once: a marker per item and event (`keys.item_event_key`) says
-- it was, so a batch applied again after a failure adds nothing twice.
-- Returns per own item {categories JSON or false, [value, ref] per EVENT_TYPES} as
-- the item stands now, whether added now or before (trending and the category sets
-- take these absolute values), and 0 per link.
local c = cjson.decode(ARGV[1])
local item_ttl, half_life, marker_ttl = c.item_ttl_s, c.half_life_ms, c.marker_ttl_s
local covis_half_life, covis_backward = c.covis_half_life_ms, c.covis_backward
local covis_rebase, covis_max = c.covis_rebase_half_lives, c.covis_max

-- Co-visitation links, as apply_events.lua's covis_add.
local function covis_add(item, neighbour, weight, ts)
  decayed_add(item_key(item, ITEM_COVIS), item_key(item, ITEM_POPULARITY), 'cv:epoch', neighbour,
              weight, ts, covis_half_life, covis_rebase, covis_max, item_ttl)
end

local function standing(item)
  local fields = {}
  for _, t in ipairs(EVENT_TYPES) do
    fields[#fields + 1] = t
    fields[#fields + 1] = t .. ':ref'
  end
  local values = redis.call('HMGET', item_key(item, ITEM_POPULARITY), unpack(fields))
  local out = {}
  for i = 1, #values do out[i] = values[i] or '0' end
  return {redis.call('HGET', item_key(item, ITEM_INFO), 'category') or false, out}
end

local out = {}
for i, task in ipairs(cjson.decode(ARGV[2])) do
  local marker, item, etype = task[1], task[2], task[3]
  local first_time = redis.call(
    'SET', item_key(item, ITEM_DEDUP .. marker), '1', 'NX', 'EX', marker_ttl)
  if etype == '' then
    -- A link from this earlier item to the event's item, at distance `ts`.
    if first_time then covis_add(item, task[5][1], 1 / task[4], task[5][2]) end
    out[i] = 0
  else
    if first_time then
      if covis_max > 0 and covis_backward > 0 then
        for d, other in ipairs(task[5]) do covis_add(item, other, covis_backward / d, task[6]) end
      end
      add_popularity(item_key(item, ITEM_POPULARITY), etype, task[4], half_life, item_ttl)
    end
    out[i] = standing(item)
  end
end
return out
