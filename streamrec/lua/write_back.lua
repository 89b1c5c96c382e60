-- Written back after serving, many users at once. ARGV: hit window ms (0: record no items), max items,
-- vector ttl s, experiment counters' ttl s, '1' to count the answers of experiment
-- arms here ('0': a Redis Cluster, where the counters are another slot: they are
-- returned instead, `<run id>|<arm>` per answer), then per user: user id, now ms, the cached
-- vector ('' for none), the experiment run and arm `<run id>|<arm>` ('' for none), the
-- item count, the item ids. An answer of an experiment's arm is counted in the run's
-- counters (`<arm>:answers`) and the user's arm kept beside the items, so the apply
-- script counts their clicks for it; an answer outside an experiment clears it. A user's recommended items older than the window
-- and beyond the cap are dropped. Builds the user keys itself, like the apply script.
-- A vector is written only while the user's state still has the tag it was computed
-- from: one read before an event, or before the user was forgotten, is not cached;
-- the items shown only while the user has state.
local window, max_items, vector_ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local experiment_ttl, count_here = ARGV[4], ARGV[5] == '1'
local answered = {}
-- Members per ZADD call: Lua's unpack() holds a few thousand values at most.
local ZADD_PAIRS_MAX = 500

-- StoredUser.state_tag, from the meta hash: "<events applied>:<last_ts or None>".
local function state_tag(user)
  local meta = redis.call('HGETALL', user_key(user, USER_META))
  local applied, last_ts = 0, 'None'
  for j = 1, #meta, 2 do
    if string.sub(meta[j], 1, 2) == 'n:' then applied = applied + tonumber(meta[j + 1])
    elseif meta[j] == 'last_ts' then last_ts = meta[j + 1] end
  end
  return applied .. ':' .. last_ts
end

-- The tag inside a cached vector `<version>|<tag>|<bytes>`.
local function vector_tag(vector)
  local first = string.find(vector, '|', 1, true)
  local second = string.find(vector, '|', first + 1, true)
  return string.sub(vector, first + 1, second - 1)
end
local i = 6
while i <= #ARGV do
  local now, vector, arm, n = tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
  if vector ~= '' and vector_tag(vector) == state_tag(ARGV[i]) then
    redis.call('SET', user_key(ARGV[i], USER_VECTOR), vector, 'EX', vector_ttl)
  end
  -- Only for a user with state (the server asks nothing else): an answer read before
  -- the user was forgotten and written back after it leaves nothing.
  if window > 0 and n > 0 and redis.call('EXISTS', user_key(ARGV[i], USER_META)) == 1 then
    local k_rec = user_key(ARGV[i], USER_RECOMMENDED)
    -- One ZADD for the answer's items (one call per item cost Redis twice as much).
    local pairs_ = {}
    for j = i + 5, i + 4 + n do
      pairs_[#pairs_ + 1] = now
      pairs_[#pairs_ + 1] = ARGV[j]
      if #pairs_ >= ZADD_PAIRS_MAX * 2 then
        redis.call('ZADD', k_rec, unpack(pairs_))
        pairs_ = {}
      end
    end
    if #pairs_ > 0 then redis.call('ZADD', k_rec, unpack(pairs_)) end
    redis.call('ZREMRANGEBYSCORE', k_rec, '-inf', '(' .. (now - window))
    redis.call('ZREMRANGEBYRANK', k_rec, 0, -max_items - 1)
    redis.call('PEXPIRE', k_rec, window)
    local k_arm = user_key(ARGV[i], USER_ARM)
    if arm == '' then
      redis.call('DEL', k_arm)
    else
      redis.call('SET', k_arm, arm, 'PX', window)
      answered[#answered + 1] = arm
    end
    if arm ~= '' and count_here then
      local bar = string.find(arm, '|', 1, true)
      local k_counts = experiment_key(string.sub(arm, 1, bar - 1))
      redis.call('HINCRBY', k_counts, string.sub(arm, bar + 1) .. ':answers', 1)
      redis.call('EXPIRE', k_counts, experiment_ttl)
    end
  end
  i = i + 5 + n
end
if count_here then return {} end
return answered
