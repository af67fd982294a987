-- schedule.lua: store a job and put its first trigger in the due index.
-- uses: names_index
-- uses: far
-- KEYS[1] due   ZSET  job id -> ms the job next needs a worker
-- KEYS[2] jobs  HASH  job id -> job record (JSON)
-- KEYS[3] runs  HASH  job id -> run state "sched|attempt|count|last|lease"
-- KEYS[4] staged ZSET job id -> due ms, staged triggers of this job's app
-- KEYS[5] nametop ZSET the per-app job index (names_index.lua)
-- KEYS[6] paused     HASH job id -> "{by}|{since ms}|{due ms}" of a paused job (optional)
-- KEYS[7] pausedapps HASH app id -> ms it was paused (optional, with KEYS[6])
-- ARGV[1] job id
-- ARGV[2] job record (JSON)
-- ARGV[3] first due time, epoch ms
-- ARGV[4] "1" to overwrite an existing job, "0" to refuse
-- ARGV[5] wake channel: published to when this job became the earliest due
-- ARGV[6] optional: the run state to start from, "sched|0|count|last|" with sched =
--         ARGV[3] (a job put back where it stood, app/jobs/restore.py); absent or ""
--         for a new job
-- ARGV[7] optional: how many jobs the job's app may hold in this partition ("" or
--         absent: no bound, app/settings.py app_max_jobs); a new job past it is refused
-- ARGV[8] optional: a new job's first trigger more than this many ms ahead goes to the
--         far tier (far.lua); absent or "": none does
-- A job that is paused, or of a paused app, stays paused: its first trigger waits in
-- `paused` (app/store/pauses.py) rather than in the due index.
-- Returns 0 when the job exists and overwrite is off, 1 when stored,
-- 2 when stored and it is now the earliest job of this partition, -1 when refused: the
-- app holds as many jobs here as ARGV[7] lets it.
far_open(KEYS[1]) -- before anything is read (far.lua: the first version's jobs)
local existed = redis.call("HEXISTS", KEYS[2], ARGV[1]) == 1
local was_far = not existed and far_get(KEYS[1], ARGV[1]) ~= nil
existed = existed or was_far
if ARGV[4] ~= "1" and existed then
  return 0
end
if not existed and ARGV[7] and ARGV[7] ~= "" then
  if names_count(KEYS[5], string.match(ARGV[1], "^[^/]*")) >= tonumber(ARGV[7]) then
    return -1
  end
end
-- Where the job goes: paused (its own pause kept, or its app's), the far tier, or the
-- due index. Read before anything is written (far.lua: a key the script names itself).
local by, since, stale_pause = "", nil, false
if KEYS[7] then
  local entry = existed and redis.call("HGET", KEYS[6], ARGV[1])
  if entry then
    by, since = string.match(entry, "^(%a*)|(%d*)|")
  elseif not existed then
    stale_pause = true -- an entry left by a job of this name that is gone
  end
  local app_since = redis.call("HGET", KEYS[7], string.match(ARGV[1], "^[^/]*"))
  if app_since and not string.find(by, "a", 1, true) then
    by, since = by .. "a", since or app_since
  end
end
local far = by == "" and (not ARGV[6] or ARGV[6] == "") and far_is_far(ARGV[3], ARGV[8])
local earliest = far and far_earliest(KEYS[1])
-- The index first: on Redis Cluster a leaf (a key of the script's slot it does not name)
-- can be elsewhere while the slot moves, and then the script stops there, before it
-- wrote anything but the index. A far job is written before its near copy is removed.
names_add(KEYS[5], ARGV[1])
if far then
  far_put(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) -- a far one replaced in place
  if existed and not was_far then
    redis.call("HDEL", KEYS[2], ARGV[1])
  end
  redis.call("HDEL", KEYS[3], ARGV[1])
  redis.call("ZREM", KEYS[4], ARGV[1])
  redis.call("ZREM", KEYS[1], ARGV[1])
  if stale_pause then
    redis.call("HDEL", KEYS[6], ARGV[1])
  end
  if earliest == nil or tonumber(ARGV[3]) < earliest then
    redis.call("PUBLISH", ARGV[5], ARGV[3])
    return 2
  end
  return 1
end
redis.call("HSET", KEYS[2], ARGV[1], ARGV[2])
if was_far then
  far_take(KEYS[1], ARGV[1]) -- after its near record: a stop half-way leaves two copies
end
-- A replaced job starts afresh: any in-flight trigger of the old one is
-- orphaned, so its late acknowledge (lease token gone) changes nothing.
if ARGV[6] and ARGV[6] ~= "" then
  redis.call("HSET", KEYS[3], ARGV[1], ARGV[6])
else
  redis.call("HDEL", KEYS[3], ARGV[1])
end
redis.call("ZREM", KEYS[4], ARGV[1])
if stale_pause then
  redis.call("HDEL", KEYS[6], ARGV[1])
end
if by ~= "" then
  redis.call("ZREM", KEYS[1], ARGV[1])
  redis.call("HSET", KEYS[6], ARGV[1], by .. "|" .. since .. "|" .. ARGV[3])
  return 1
end
redis.call("ZADD", KEYS[1], ARGV[3], ARGV[1])
local head = redis.call("ZRANGE", KEYS[1], 0, 0)
if head[1] == ARGV[1] then
  local far_ms = far_head(KEYS[1])
  if far_ms == nil or tonumber(ARGV[3]) < tonumber(far_ms) then
    redis.call("PUBLISH", ARGV[5], ARGV[3])
    return 2
  end
end
return 1
