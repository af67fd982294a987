-- release.lua: hand back triggers a worker claimed but did not deliver (it is stopping,
-- or it cannot read their jobs).
-- KEYS[1] due   ZSET  job id -> ms the job next needs a worker
-- KEYS[2] runs  HASH  job id -> run state "sched|attempt|count|last|lease"
-- KEYS[3] paused HASH job id -> "{by}|{since ms}|{due ms}" of a paused job (optional)
-- ARGV[1] lease token the triggers were claimed under
-- ARGV[2] ms before which none is due again ("0": each at its own time)
-- ARGV[3..n] pairs: a job id, and the ms its trigger was due at when claimed ("0": its
--         scheduled time; a retry's is later, its retry time)
-- Each trigger becomes due again at its due time (or at ARGV[2], if later), with the
-- attempt it was charged for given back; a paused job's waits in `paused` instead
-- (app/store/pauses.py). Returns how many were released.
local released = 0
local not_before = tonumber(ARGV[2])
for i = 3, #ARGV, 2 do
  local state = redis.call("HGET", KEYS[2], ARGV[i])
  if state then
    local sched, attempt, count, last, lease = string.match(state, "^(%d+)|(%d+)|(%d+)|(%d*)|(.*)$")
    if lease == ARGV[1] then
      local a = math.max(tonumber(attempt) - 1, 0)
      redis.call("HSET", KEYS[2], ARGV[i], sched .. "|" .. a .. "|" .. count .. "|" .. last .. "|")
      local entry = KEYS[3] and redis.call("HGET", KEYS[3], ARGV[i])
      if entry then
        redis.call("ZREM", KEYS[1], ARGV[i])
        local head, due = string.match(entry, "^(%a*|%d*|)(%d*)$")
        if due == "" then
          redis.call("HSET", KEYS[3], ARGV[i], head .. sched)
        end
      else
        -- (a retry claimed ahead of its time, put back at its sched, went out early)
        redis.call("ZADD", KEYS[1], math.max(tonumber(sched), not_before, tonumber(ARGV[i + 1])),
                   ARGV[i])
      end
      released = released + 1
    end
  end
end
return released
