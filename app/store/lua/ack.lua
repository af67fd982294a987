-- ack.lua: settle a batch of delivered (or failed) triggers.
-- KEYS[1] due      ZSET  job id -> ms the job next needs a worker
-- KEYS[2] jobs     HASH  job id -> job record
-- KEYS[3] runs     HASH  job id -> run state "sched|attempt|count|last|lease"
-- KEYS[4] dead     HASH  dead-letter id -> dead-letter record (JSON)
-- KEYS[5] deadidx  ZSET  dead-letter id -> ms it was dead-lettered
-- KEYS[6] names    ZSET  job ids scored 0: the per-app job index (app/store/keys.py)
-- KEYS[7] deadlex  ZSET  "{app}/{ms, 13 digits}/{dead-letter id}": the per-app dead-letter index
-- ARGV[1] now, epoch ms
-- ARGV[2..] groups of 6: job id, lease token, action, time ms, dead-letter id, dead-letter record
--   action "next":  the trigger is finished; time = next trigger's due ms, "" when the job is over
--   action "retry": the delivery failed and will be tried again at time
--   action "dead":  the failure policy is spent: store the dead letter, then as "next"
-- An entry whose lease token no longer matches (job deleted or overwritten,
-- or its lease expired and another worker took it) changes nothing.
-- Returns the number of entries applied.
-- app/store/keys.py dead_member: the app is the letter id's text before '/'.
local function dead_member(letter, ms)
  return string.match(letter, "^[^/]*") .. "/" .. string.format("%013d", tonumber(ms)) .. "/" .. letter
end
local applied = 0
for i = 2, #ARGV, 6 do
  local id, token, action, at = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local state = redis.call("HGET", KEYS[3], id)
  if state then
    local sched, attempt, count, last, lease = string.match(state, "^(%d+)|(%d+)|(%d+)|(%d*)|(.*)$")
    if lease == token then
      applied = applied + 1
      if action == "retry" then
        redis.call("HSET", KEYS[3], id, sched .. "|" .. attempt .. "|" .. count .. "|" .. last .. "|")
        redis.call("ZADD", KEYS[1], at, id)
      else
        if action == "dead" then
          redis.call("HSET", KEYS[4], ARGV[i + 4], ARGV[i + 5])
          local was = redis.call("ZSCORE", KEYS[5], ARGV[i + 4])
          if was then
            redis.call("ZREM", KEYS[7], dead_member(ARGV[i + 4], was))
          end
          redis.call("ZADD", KEYS[7], 0, dead_member(ARGV[i + 4], ARGV[1]))
          redis.call("ZADD", KEYS[5], ARGV[1], ARGV[i + 4])
        end
        if at == "" then
          redis.call("HDEL", KEYS[2], id)
          redis.call("HDEL", KEYS[3], id)
          redis.call("ZREM", KEYS[1], id)
          redis.call("ZREM", KEYS[6], id)
        else
          redis.call("HSET", KEYS[3], id, at .. "|0|" .. (tonumber(count) + 1) .. "|" .. sched .. "|")
          redis.call("ZADD", KEYS[1], at, id)
        end
      end
    end
  end
end
return applied
