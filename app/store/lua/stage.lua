-- stage.lua: park claimed triggers of an app that has no live API process.
-- KEYS[1] due     ZSET  job id -> ms the job next needs a worker
-- KEYS[2] runs    HASH  job id -> run state "sched|attempt|count|last|lease"
-- KEYS[3] staged  ZSET  job id -> due ms, for this app and partition
-- ARGV[1] lease token the triggers were claimed under
-- ARGV[2..n] job ids
-- A staged trigger leaves the due index (no worker looks at it, no retry is
-- spent) until unstage.lua puts it back. Returns how many were staged.
local staged = 0
for i = 2, #ARGV do
  local state = redis.call("HGET", KEYS[2], ARGV[i])
  if state then
    local sched, attempt, count, last, lease = string.match(state, "^(%d+)|(%d+)|(%d+)|(%d*)|(.*)$")
    if lease == ARGV[1] then
      local a = math.max(tonumber(attempt) - 1, 0)
      redis.call("HSET", KEYS[2], ARGV[i], sched .. "|" .. a .. "|" .. count .. "|" .. last .. "|")
      redis.call("ZREM", KEYS[1], ARGV[i])
      redis.call("ZADD", KEYS[3], sched, ARGV[i])
      staged = staged + 1
    end
  end
end
return staged
