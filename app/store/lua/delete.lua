-- delete.lua: remove jobs, their run state and their pending triggers.
-- KEYS[1] due   ZSET  job id -> ms
-- KEYS[2] jobs  HASH  job id -> job record
-- KEYS[3] runs  HASH  job id -> run state
-- KEYS[4] staged ZSET job id -> due ms, staged triggers of these jobs' app
-- KEYS[5] names  ZSET job ids scored 0: the per-app job index
-- KEYS[6] paused HASH job id -> a paused job's entry (app/store/pauses.py)
-- KEYS[6 + i] hist LIST the trigger history of ARGV[i] (app/store/history.py), deleted
--                   with it, also when the job itself is over and gone; optional
-- ARGV[1..n] job ids, all of one app
-- Returns how many of them existed.
local n = 0
for i = 1, #ARGV do
  n = n + redis.call("HDEL", KEYS[2], ARGV[i])
  redis.call("HDEL", KEYS[3], ARGV[i])
  redis.call("ZREM", KEYS[1], ARGV[i])
  redis.call("ZREM", KEYS[4], ARGV[i])
  redis.call("ZREM", KEYS[5], ARGV[i])
  redis.call("HDEL", KEYS[6], ARGV[i])
  if KEYS[6 + i] then
    redis.call("DEL", KEYS[6 + i])
  end
end
return n
