-- Redis Cluster, step 5 of an event batch (streamrec/cluster_apply.py): the
-- counters of the experiment runs in one slot. KEYS[1]: a key of that slot (routing
-- only). ARGV: 1 the counters' ttl s, 2 the markers' ttl s, 3 JSON [[marker, run,
-- arm, type, recommended (0/1), per-user sums], ...]: a click or purchase by a user
-- shown that arm's answers, counted as apply_events.lua counts it, once (a marker per
-- run and event); a click's per-user sums ({users, clicks_sq, hits_sq, clicks_hits}
-- deltas, step 1 worked them out in the user's slot) added with it.
local ttl, marker_ttl = ARGV[1], ARGV[2]
for _, entry in ipairs(cjson.decode(ARGV[3])) do
  local marker, run, arm, etype, recommended = entry[1], entry[2], entry[3], entry[4], entry[5]
  local sums = entry[6]
  local k_counts = experiment_key(run)
  if redis.call('SET', k_counts .. ':dd:' .. marker, '1', 'NX', 'EX', marker_ttl) then
    if etype == 'click' then
      redis.call('HINCRBY', k_counts, arm .. ':clicks', 1)
      if recommended == 1 then redis.call('HINCRBY', k_counts, arm .. ':hits', 1) end
      if #sums == #ARM_SUM_FIELDS then add_arm_sums(k_counts, arm, sums) end
    elseif recommended == 1 then
      redis.call('HINCRBY', k_counts, arm .. ':purchases', 1)
    end
    redis.call('EXPIRE', k_counts, ttl)
  end
end
return 0
