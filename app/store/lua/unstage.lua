-- unstage.lua: an app's API process is live again: its staged triggers are due.
-- KEYS[1] due     ZSET  job id -> ms the job next needs a worker
-- KEYS[2] staged  ZSET  job id -> due ms, for this app and partition
-- ARGV[1] wake channel, published to when anything was unstaged
-- Returns how many triggers were put back.
local staged = redis.call("ZRANGE", KEYS[2], 0, -1, "WITHSCORES")
for i = 1, #staged, 2 do
  redis.call("ZADD", KEYS[1], staged[i + 1], staged[i])
end
if #staged > 0 then
  redis.call("DEL", KEYS[2])
  redis.call("PUBLISH", ARGV[1], staged[2])
end
return #staged / 2
