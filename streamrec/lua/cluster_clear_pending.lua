-- Redis Cluster, the last step of an event batch (streamrec/cluster_apply.py): every
-- other step went through, so the users' pending entries of these events go.
-- KEYS[1]: a key of the users' slot (routing only). ARGV: user, event id, user, ...
for i = 1, #ARGV, 2 do redis.call('HDEL', user_key(ARGV[i], USER_PENDING), ARGV[i + 1]) end
return 0
