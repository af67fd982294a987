-- trigger.lua: fire a job once at once, beside its schedule: a one-shot job of its own
-- (a replay's kind of job id, app/store/keys.py), due now, that the job's schedule,
-- run state and pause know nothing of.
-- uses: far
-- KEYS[1] due   ZSET  job id -> ms the job next needs a worker
-- KEYS[2] jobs  HASH  job id -> job record
-- KEYS[3] nows  SET   the job's trigger-now one-shots that may be left (delete.lua
--                     removes them with the job)
-- ARGV[1] the job's id
-- ARGV[2] the job's record as read (the one-shot is built from it); "": whatever it
--         holds now (the caller's last try, of a job overwritten again and again)
-- ARGV[3] the one-shot's job id
-- ARGV[4] the one-shot's record
-- ARGV[5] its due time, ms
-- ARGV[6] wake channel
-- ARGV[7] past this many members of `nows`, those whose one-shot is over are dropped, of
--         twice as many members picked at random (a bound on each call's work: all of a
--         set this call kept within it); as many still left, the trigger is refused: a
--         job's one-shots waiting to go (its app's receiver down) are each a copy of it
-- ARGV[8] how long `nows` is kept after this one, ms
-- Returns 1 when stored, 0 when the job is gone, -1 when it changed since it was read,
-- -2 when refused: ARGV[7] of the job's one-shots wait to go.
far_open(KEYS[1]) -- before anything is read (far.lua: the first version's jobs)
local record = redis.call("HGET", KEYS[2], ARGV[1]) or far_get(KEYS[1], ARGV[1])
if not record then
  return 0
end
if ARGV[2] ~= "" and record ~= ARGV[2] then
  return -1
end
local most = tonumber(ARGV[7])
if KEYS[3] and redis.call("SCARD", KEYS[3]) >= most then
  for _, once in ipairs(redis.call("SRANDMEMBER", KEYS[3], 2 * most)) do
    if redis.call("HEXISTS", KEYS[2], once) == 0 then
      redis.call("SREM", KEYS[3], once)
    end
  end
  if redis.call("SCARD", KEYS[3]) >= most then
    return -2
  end
end
redis.call("HSET", KEYS[2], ARGV[3], ARGV[4])
redis.call("ZADD", KEYS[1], ARGV[5], ARGV[3])
if KEYS[3] then
  redis.call("SADD", KEYS[3], ARGV[3])
  redis.call("PEXPIRE", KEYS[3], ARGV[8])
end
redis.call("PUBLISH", ARGV[6], ARGV[5])
return 1
