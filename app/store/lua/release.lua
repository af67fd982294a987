-- release.lua: hand back triggers a stopping worker claimed but did not deliver.
-- KEYS[1] due   ZSET  job id -> ms the job next needs a worker
-- KEYS[2] runs  HASH  job id -> run state "sched|attempt|count|last|lease"
-- ARGV[1] lease token the triggers were claimed under
-- ARGV[2..n] job ids
-- Each trigger becomes due again at its retry/due time at once, with the
-- attempt it was charged for given back. Returns how many were released.
local released = 0
for i = 2, #ARGV do
  local state = redis.call("HGET", KEYS[2], ARGV[i])
  if state then
    local sched, attempt, count, last, lease = string.match(state, "^(%d+)|(%d+)|(%d+)|(%d*)|(.*)$")
    if lease == ARGV[1] then
      local a = math.max(tonumber(attempt) - 1, 0)
      redis.call("HSET", KEYS[2], ARGV[i], sched .. "|" .. a .. "|" .. count .. "|" .. last .. "|")
      redis.call("ZADD", KEYS[1], sched, ARGV[i])
      released = released + 1
    end
  end
end
return released
