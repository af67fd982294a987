-- replay.lua: turn a dead letter back into a trigger, due at once.
-- KEYS[1] due      ZSET  job id -> ms the job next needs a worker
-- KEYS[2] jobs     HASH  job id -> job record
-- KEYS[3] runs     HASH  job id -> run state
-- KEYS[4] dead     HASH  dead-letter id -> dead-letter record
-- KEYS[5] deadidx  ZSET  dead-letter id -> ms it was dead-lettered
-- KEYS[6] names    ZSET  the per-app job index (not used: a replay is not listed)
-- KEYS[7] deadlex  ZSET  "{app}/{ms, 13 digits}/{dead-letter id}": the per-app index
-- KEYS[8] paused   HASH  (not used: a replay is not paused with its job)
-- ARGV[1] dead-letter id
-- ARGV[2] job id of the replay (a one-shot job of its own)
-- ARGV[3] its job record
-- ARGV[4] its due time, ms
-- ARGV[5] wake channel
-- The dead letter leaves the queue in the same step the replay is stored, so
-- a letter is replayed once; a replay that fails again dead-letters anew.
-- Returns 1 when replayed, 0 when the letter was gone.
if redis.call("HDEL", KEYS[4], ARGV[1]) == 0 then
  return 0
end
local ms = redis.call("ZSCORE", KEYS[5], ARGV[1])
if ms then
  -- app/store/keys.py dead_member: the app is the letter id's text before '/'.
  redis.call("ZREM", KEYS[7], string.match(ARGV[1], "^[^/]*") .. "/"
    .. string.format("%013d", tonumber(ms)) .. "/" .. ARGV[1])
end
redis.call("ZREM", KEYS[5], ARGV[1])
redis.call("HSET", KEYS[2], ARGV[2], ARGV[3])
redis.call("HDEL", KEYS[3], ARGV[2])
redis.call("ZADD", KEYS[1], ARGV[4], ARGV[2])
redis.call("PUBLISH", ARGV[5], ARGV[4])
return 1
