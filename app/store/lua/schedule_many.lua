-- schedule_many.lua: schedule.lua for many jobs of one app in one partition, one after
-- another in the order given (the bulk route, app/api/bulk.py). Each job is stored and
-- indexed exactly as schedule.lua stores it (tests/test_bulk.py compares every key).
-- KEYS[1] due   ZSET  job id -> ms the job next needs a worker
-- KEYS[2] jobs  HASH  job id -> job record (JSON)
-- KEYS[3] runs  HASH  job id -> run state "sched|attempt|count|last|lease"
-- KEYS[4] staged ZSET job id -> due ms, staged triggers of the jobs' app
-- KEYS[5] names  ZSET job ids scored 0: the per-app job index (app/store/keys.py)
-- KEYS[6] paused     HASH job id -> "{by}|{since ms}|{due ms}" of a paused job
-- KEYS[7] pausedapps HASH app id -> ms it was paused
-- ARGV[1] wake channel: published to once when the partition's earliest due job changed
-- ARGV[2..] five per job, as schedule.lua's ARGV[1..4] and ARGV[6]: job id, job record
--         (JSON), first due time (epoch ms), "1" to overwrite an existing job or "0" to
--         refuse, the run state to start from ("sched|0|count|last|", app/jobs/restore.py)
--         or "" for a new job
-- Returns one entry per job, in order: 1 when stored; the stored record (a string) when
-- the job exists and overwrite is off (nothing changed: the caller tells a retry from a
-- conflict, app/api/jobs.py). A name given twice meets its own earlier entry.
local due, jobs, runs, staged, names = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local paused, pausedapps = KEYS[6], KEYS[7]
local before = redis.call("ZRANGE", due, 0, 0, "WITHSCORES")
local app_since = {} -- app id -> ms paused, or false: nothing here changes pausedapps
local out = {}
for i = 2, #ARGV, 5 do
  local id, ms = ARGV[i], ARGV[i + 2]
  local existed = redis.call("HEXISTS", jobs, id) == 1
  if ARGV[i + 3] ~= "1" and existed then
    out[#out + 1] = redis.call("HGET", jobs, id)
  else
    redis.call("HSET", jobs, id, ARGV[i + 1])
    redis.call("ZADD", names, 0, id)
    -- A replaced job starts afresh (schedule.lua).
    local run = ARGV[i + 4]
    if run ~= "" then
      redis.call("HSET", runs, id, run)
    else
      redis.call("HDEL", runs, id)
    end
    redis.call("ZREM", staged, id)
    local by, since = "", nil
    local entry = existed and redis.call("HGET", paused, id)
    if entry then
      by, since = string.match(entry, "^(%a*)|(%d*)|")
    elseif not existed then
      redis.call("HDEL", paused, id) -- left by a job of this name that is gone
    end
    local app = string.match(id, "^[^/]*")
    local app_ms = app_since[app]
    if app_ms == nil then
      app_ms = redis.call("HGET", pausedapps, app)
      app_since[app] = app_ms
    end
    if app_ms and not string.find(by, "a", 1, true) then
      by, since = by .. "a", since or app_ms
    end
    if by ~= "" then
      redis.call("ZREM", due, id)
      redis.call("HSET", paused, id, by .. "|" .. since .. "|" .. ms)
    else
      redis.call("ZADD", due, ms, id)
    end
    out[#out + 1] = 1
  end
end
-- One wake-up for the call (schedule.lua sends one per job that became the earliest).
local after = redis.call("ZRANGE", due, 0, 0, "WITHSCORES")
if after[1] and (after[1] ~= before[1] or after[2] ~= before[2]) then
  redis.call("PUBLISH", ARGV[1], after[2])
end
return out
