-- unstage.lua: an app's API process is live again: its staged triggers are due. A call
-- moves at most ARGV[2] of them, oldest first (store.Store.unstage calls until none is
-- left): Redis serves no one while a script runs, and an app may have parked millions.
-- KEYS[1] due     ZSET  job id -> ms the job next needs a worker
-- KEYS[2] staged  ZSET  job id -> due ms, for this app and partition
-- ARGV[1] wake channel, published to when anything was unstaged
-- ARGV[2] most triggers to move in this call
-- Returns how many triggers were put back.
local staged = redis.call("ZRANGE", KEYS[2], 0, tonumber(ARGV[2]) - 1, "WITHSCORES")
for i = 1, #staged, 2 do
  redis.call("ZADD", KEYS[1], staged[i + 1], staged[i])
end
if #staged > 0 then
  redis.call("ZREMRANGEBYRANK", KEYS[2], 0, #staged / 2 - 1)
  redis.call("PUBLISH", ARGV[1], staged[2])
end
return #staged / 2
