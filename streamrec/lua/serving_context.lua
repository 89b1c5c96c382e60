-- Read-only. ARGV: 1 n, 2 the user's latest item, 3.. items asked about. Returns
-- {per asked item {categories (JSON) or false, available ('0'/'1') or false}, then per
-- category of the latest item {its n most popular available items}, then the
-- categories of those}. Category keys are other slots, built here (one Redis, as the
-- apply script).
local n = tonumber(ARGV[1])
local function info(item)
  return redis.call('HMGET', item_key(item, ITEM_INFO), 'category', 'available')
end
local asked = {}
for i = 3, #ARGV do asked[#asked + 1] = info(ARGV[i]) end
local lists, popular = {}, {}
local latest = info(ARGV[2])[1]
if latest and n > 0 then
  for _, category in ipairs(cjson.decode(latest)) do
    local items = {}
    for _, item in ipairs(redis.call('ZREVRANGE', category_key(category, CATEGORY_POPULAR), 0, 2 * n - 1)) do
      if #items < n and redis.call('ZSCORE', category_key(category, CATEGORY_AVAILABLE), item) then
        items[#items + 1] = item
        popular[#popular + 1] = item
      end
    end
    lists[#lists + 1] = items
  end
end
local popular_categories = {}
for i, item in ipairs(popular) do popular_categories[i] = info(item)[1] end
return {asked, lists, popular, popular_categories}
