-- schedule_many.lua: schedule.lua for many jobs of one app in one partition, one after
-- another in the order given (the bulk route, app/api/bulk.py). Each job is stored and
-- indexed exactly as schedule.lua stores it (tests/test_bulk.py compares every key).
-- uses: names_index
-- uses: far
-- KEYS[1] due   ZSET  job id -> ms the job next needs a worker
-- KEYS[2] jobs  HASH  job id -> job record (JSON)
-- KEYS[3] runs  HASH  job id -> run state "sched|attempt|count|last|lease"
-- KEYS[4] staged ZSET job id -> due ms, staged triggers of the jobs' app
-- KEYS[5] nametop ZSET the per-app job index (names_index.lua)
-- KEYS[6] paused     HASH job id -> "{by}|{since ms}|{due ms}" of a paused job
-- KEYS[7] pausedapps HASH app id -> ms it was paused
-- ARGV[1] wake channel: published to once when the partition's earliest due job changed
-- ARGV[2] the jobs, four lines each (none of them holds a newline: ids are validated,
--         records are compact JSON): job id, job record (JSON), first due time (epoch
--         ms), then "1" to overwrite an existing job or "0" to refuse followed by the run
--         state to start from ("sched|0|count|last|", app/jobs/restore.py), nothing for
--         a new job: schedule.lua's ARGV[1..4] and ARGV[6]. One argument, not four per
--         job: each argument costs the API (redis-py) and Redis more than a line does.
-- ARGV[3] how many jobs the app may hold in this partition ("": no bound), as
--         schedule.lua's ARGV[7]
-- ARGV[4] optional: schedule.lua's ARGV[8] (a new job due more than this many ms ahead
--         goes to the far tier, far.lua)
-- Returns one entry per job, in order: 1 when stored; the stored record (a string) when
-- the job exists and overwrite is off (nothing changed: the caller tells a retry from a
-- conflict, app/api/jobs.py); -1 when refused, a new job past ARGV[3]. A name given twice
-- meets its own earlier entry.
--
-- Redis CPU: each job's outcome is worked out here first, from one HMGET of the jobs and
-- what this call has written so far; then each key is written with a few commands of many
-- arguments, not seven commands per job. A job written twice keeps its last write, which
-- leaves every key as the two schedule.lua calls in turn would.
far_open(KEYS[1]) -- before anything is read (far.lua: the first version's jobs)
local due, jobs, runs, staged, names = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local paused, pausedapps = KEYS[6], KEYS[7]
local CHUNK = 4000 -- arguments per command: Lua's unpack takes at most about 8,000
local far_after = ARGV[4]
local before = far_earliest(due)

-- The lines of ARGV[2]: field f of job j (from 0) is lines[j * 4 + f].
local lines, blob, pos = {}, ARGV[2], 1
while true do
  local stop = string.find(blob, "\n", pos, true)
  if not stop then
    lines[#lines + 1] = string.sub(blob, pos)
    break
  end
  lines[#lines + 1] = string.sub(blob, pos, stop - 1)
  pos = stop + 1
end
if #lines % 4 ~= 0 then
  return redis.error_reply("ERR schedule_many.lua: the jobs are not four lines each")
end
local count = #lines / 4

local function call_chunked(command, key, args)
  for c = 1, #args, CHUNK do
    redis.call(command, key, unpack(args, c, math.min(c + CHUNK - 1, #args)))
  end
end

-- The stored record of each job before this call (false: none).
local stored = {}
for c = 0, count - 1, CHUNK do
  local ids = {}
  for j = c, math.min(c + CHUNK, count) - 1 do
    ids[#ids + 1] = lines[j * 4 + 1]
  end
  local got = redis.call("HMGET", jobs, unpack(ids))
  for k = 1, #ids do
    stored[c + k] = got[k]
  end
end
local was_far = {} -- job id -> true: it is in the far tier (far.lua)
local ids = {}
for j = 0, count - 1 do
  ids[#ids + 1] = lines[j * 4 + 1]
end
far_batch(due, ids) -- the far tier sorts them once, for the look below and the writes
local unseen, at = {}, {}
for k = 1, count do
  if not stored[k] then
    unseen[#unseen + 1] = lines[(k - 1) * 4 + 1]
    at[#unseen] = k
  end
end
for n, record in ipairs(far_records(due, unseen)) do
  if record then
    stored[at[n]] = record
    was_far[unseen[n]] = true
  end
end

local written = {} -- job id -> its record as this call leaves it
local order = {} -- the job ids written, in the order first written
local run_of = {} -- job id -> its run state ("" : none)
local due_of = {} -- job id -> its due ms, or false: paused, out of the due index
local pause_of = {} -- job id -> its paused entry, or false: none (unset: not changed)
local app_since = {} -- app id -> ms paused, or false: nothing here changes pausedapps
local limit = tonumber(ARGV[3])
local held = nil -- the app's jobs here, once a new one is met (all the jobs are one app's)
local out = {}
for j = 0, count - 1 do
  local i = j * 4 + 1
  local id, ms, flags = lines[i], lines[i + 2], lines[i + 3]
  local current = written[id]
  if current == nil then
    current = stored[j + 1]
  end
  local existed = current ~= false
  if limit and not existed and held == nil then
    held = names_count(names, string.match(id, "^[^/]*"))
  end
  if string.byte(flags, 1) ~= 49 and existed then -- 49: "1", overwrite
    out[#out + 1] = current
  elseif limit and not existed and held >= limit then
    out[#out + 1] = -1
  else
    if limit and not existed then
      held = held + 1
    end
    if written[id] == nil then
      order[#order + 1] = id
    end
    written[id] = lines[i + 1]
    run_of[id] = string.sub(flags, 2) -- a replaced job starts afresh (schedule.lua)
    local by, since = "", nil
    local entry = false
    if existed then
      entry = pause_of[id]
      if entry == nil then
        entry = redis.call("HGET", paused, id)
      end
    end
    if entry then
      by, since = string.match(entry, "^(%a*)|(%d*)|")
    elseif not existed then
      pause_of[id] = false -- left by a job of this name that is gone
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
      due_of[id] = false
      pause_of[id] = by .. "|" .. since .. "|" .. ms
    else
      due_of[id] = ms
    end
    out[#out + 1] = 1
  end
end

if #order > 0 then
  local records, with_run, without_run = {}, {}, {}
  local dues, undue, pauses, unpaused = {}, {}, {}, {}
  local far, unjobs, unfar = {}, {}, {}
  for _, id in ipairs(order) do
    if due_of[id] and run_of[id] == "" and far_is_far(due_of[id], far_after) then
      far[#far + 1] = {id, written[id], due_of[id]} -- a far one replaced in place
      unjobs[#unjobs + 1] = id
      due_of[id] = false -- out of the near due index
    else
      if was_far[id] then
        unfar[#unfar + 1] = id -- replaced below, as a near job is
      end
      records[#records + 1] = id
      records[#records + 1] = written[id]
    end
    local run = run_of[id]
    if run ~= "" then
      with_run[#with_run + 1] = id
      with_run[#with_run + 1] = run
    else
      without_run[#without_run + 1] = id
    end
    local at = due_of[id]
    if at then
      dues[#dues + 1] = at
      dues[#dues + 1] = id
    else
      undue[#undue + 1] = id
    end
    local entry = pause_of[id]
    if entry then
      pauses[#pauses + 1] = id
      pauses[#pauses + 1] = entry
    elseif entry == false then
      unpaused[#unpaused + 1] = id
    end
  end
  names_add_many(names, order)
  if #far > 0 then -- written before their near copies go (schedule.lua)
    far_put_many(due, far)
  end
  call_chunked("HSET", jobs, records)
  for _, id in ipairs(unfar) do -- after their near records: a stop leaves two copies
    far_take(due, id)
  end
  call_chunked("HSET", runs, with_run)
  call_chunked("HDEL", runs, without_run)
  call_chunked("ZREM", staged, order)
  call_chunked("HDEL", paused, unpaused)
  call_chunked("HSET", paused, pauses)
  call_chunked("ZREM", due, undue)
  call_chunked("ZADD", due, dues)
  call_chunked("HDEL", jobs, unjobs)
end

-- One wake-up for the call (schedule.lua sends one per job that became the earliest).
local after = far_earliest(due)
if after and after ~= before then
  redis.call("PUBLISH", ARGV[1], string.format("%d", after))
end
far_batch_end(due)
return out
