-- delete.lua: remove jobs, their run state and their pending triggers.
-- uses: names_index
-- uses: far
-- KEYS[1] due   ZSET  job id -> ms
-- KEYS[2] jobs  HASH  job id -> job record
-- KEYS[3] runs  HASH  job id -> run state
-- KEYS[4] staged ZSET job id -> due ms, staged triggers of these jobs' app
-- KEYS[5] nametop ZSET the per-app job index (names_index.lua)
-- KEYS[6] paused HASH job id -> a paused job's entry (app/store/pauses.py)
-- KEYS[6 + i] nows SET the trigger-now one-shots of ARGV[i] that may be left: removed
--                   with it (a retry of one, or one not yet sent: a claimed one's
--                   worker finds its lease gone, and its outcome is not recorded)
-- KEYS[6 + n + i] hist LIST the trigger history of ARGV[i] (app/store/history.py),
--                   deleted with it, also when the job itself is over and gone; optional
-- ARGV[1..n] job ids, all of one app
-- Returns how many of them existed.
far_open(KEYS[1]) -- before anything is read (far.lua: the first version's jobs)
local n = 0
local count = #ARGV
local function remove(id)
  redis.call("HDEL", KEYS[3], id)
  redis.call("ZREM", KEYS[1], id)
  redis.call("ZREM", KEYS[4], id)
  redis.call("HDEL", KEYS[6], id)
end
for i = 1, count do
  n = n + redis.call("HDEL", KEYS[2], ARGV[i])
  if far_take(KEYS[1], ARGV[i]) then
    n = n + 1
  end
  remove(ARGV[i])
  for _, once in ipairs(redis.call("SMEMBERS", KEYS[6 + i])) do
    redis.call("HDEL", KEYS[2], once)
    remove(once)
  end
  redis.call("DEL", KEYS[6 + i])
  if KEYS[6 + count + i] then
    redis.call("DEL", KEYS[6 + count + i])
  end
end
names_remove(KEYS[5], ARGV)
return n
