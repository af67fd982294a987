-- stage.lua: park claimed triggers of an app that has no live API process.
-- KEYS[1] due     ZSET  job id -> ms the job next needs a worker
-- KEYS[2] runs    HASH  job id -> run state "sched|attempt|count|last|lease"
-- KEYS[3] staged  ZSET  job id -> due ms, for this app and partition
-- KEYS[4] paused  HASH  job id -> "{by}|{since ms}|{due ms}" of a paused job (optional)
-- ARGV[1] lease token the triggers were claimed under
-- ARGV[2..n] job ids
-- A staged trigger leaves the due index (no worker looks at it, no retry is
-- spent) until unstage.lua puts it back; a paused job's waits in `paused` instead, for
-- its resume (app/store/pauses.py). Returns how many were staged.
local staged = 0
for i = 2, #ARGV do
  local state = redis.call("HGET", KEYS[2], ARGV[i])
  if state then
    local sched, attempt, count, last, lease = string.match(state, "^(%d+)|(%d+)|(%d+)|(%d*)|(.*)$")
    if lease == ARGV[1] then
      local a = math.max(tonumber(attempt) - 1, 0)
      redis.call("HSET", KEYS[2], ARGV[i], sched .. "|" .. a .. "|" .. count .. "|" .. last .. "|")
      redis.call("ZREM", KEYS[1], ARGV[i])
      local entry = KEYS[4] and redis.call("HGET", KEYS[4], ARGV[i])
      if entry then
        local head, due = string.match(entry, "^(%a*|%d*|)(%d*)$")
        if due == "" then
          redis.call("HSET", KEYS[4], ARGV[i], head .. sched)
        end
      else
        redis.call("ZADD", KEYS[3], sched, ARGV[i])
      end
      staged = staged + 1
    end
  end
end
return staged
