-- ack.lua: settle a batch of delivered (or failed) triggers.
-- KEYS[1] due      ZSET  job id -> ms the job next needs a worker
-- KEYS[2] jobs     HASH  job id -> job record
-- KEYS[3] runs     HASH  job id -> run state "sched|attempt|count|last|lease"
-- KEYS[4] dead     HASH  dead-letter id -> dead-letter record (JSON)
-- KEYS[5] deadidx  ZSET  dead-letter id -> ms it was dead-lettered
-- KEYS[6] names    ZSET  job ids scored 0: the per-app job index (app/store/keys.py)
-- KEYS[7] deadlex  ZSET  "{app}/{ms, 13 digits}/{dead-letter id}": the per-app dead-letter index
-- KEYS[8] paused   HASH  job id -> "{by}|{since ms}|{due ms}" of a paused job (app/store/pauses.py)
-- KEYS[8 + k] hist  LIST  the trigger history of the k-th group's job (app/store/history.py;
--                        only when ARGV[2] is above 0)
-- ARGV[1] now, epoch ms
-- ARGV[2] history size: the outcomes kept per job; 0: none (no history keys given)
-- ARGV[3] how long a history is kept once its job is over, ms
-- ARGV[4..] groups of 7: job id, lease token, action, time ms, dead-letter id, dead-letter
--   record, history entry ("": none)
--   action "next":  the trigger is finished; time = next trigger's due ms, "" when the job is over
--   action "retry": the delivery failed and will be tried again at time
--   action "dead":  the failure policy is spent: store the dead letter, then as "next"
--   action "skip":  the trigger was missed and passed over, not delivered (a job's catch-up
--                   policy, app/jobs/schedule.py catch_up_due): time = the trigger due
--                   instead, not counted as fired; "" when that ends the job
-- A paused job's next trigger (or retry) waits in `paused` instead of the due index.
-- An entry whose lease token no longer matches (job deleted or overwritten,
-- or its lease expired and another worker took it) changes nothing, and is not recorded.
-- Returns the number of entries applied.
-- app/store/keys.py dead_member: the app is the letter id's text before '/'.
local function dead_member(letter, ms)
  return string.match(letter, "^[^/]*") .. "/" .. string.format("%013d", tonumber(ms)) .. "/" .. letter
end
-- The outcome goes first in the job's history, which keeps its newest `size` entries; it
-- has no expiry while the job exists, and expires `keep` ms after the job is over. A
-- replay's outcome is its job's (the history key of the job it replays), and that job may
-- live on after the replay is over.
local size, keep = tonumber(ARGV[2]), ARGV[3]
local function record(hist, entry, id, over)
  local n = redis.call("LPUSH", hist, entry)
  if n > size then
    redis.call("LTRIM", hist, 0, size - 1)
  end
  if over and string.find(id, "\31", 1, true) then
    over = redis.call("HEXISTS", KEYS[2], string.match(id, "^[^\31]*")) == 0
  end
  if over then
    redis.call("PEXPIRE", hist, keep)
  elseif n > 1 then
    redis.call("PERSIST", hist)  -- a job that ended earlier under this name, scheduled anew
  end
end
-- Put the job's trigger due at `at`: in the due index, or in `paused` when it is paused.
local function requeue(id, at)
  local entry = redis.call("HGET", KEYS[8], id)
  if entry then
    redis.call("ZREM", KEYS[1], id)
    redis.call("HSET", KEYS[8], id, string.match(entry, "^%a*|%d*|") .. at)
  else
    redis.call("ZADD", KEYS[1], at, id)
  end
end
local applied = 0
local group = 0
for i = 4, #ARGV, 7 do
  group = group + 1
  local id, token, action, at = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local state = redis.call("HGET", KEYS[3], id)
  if state then
    local sched, attempt, count, last, lease = string.match(state, "^(%d+)|(%d+)|(%d+)|(%d*)|(.*)$")
    if lease == token then
      applied = applied + 1
      if action == "retry" then
        redis.call("HSET", KEYS[3], id, sched .. "|" .. attempt .. "|" .. count .. "|" .. last .. "|")
        requeue(id, at)
      elseif action == "skip" and at ~= "" then
        redis.call("HSET", KEYS[3], id, at .. "|0|" .. count .. "|" .. last .. "|")
        requeue(id, at)
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
          redis.call("HDEL", KEYS[8], id)
        else
          redis.call("HSET", KEYS[3], id, at .. "|0|" .. (tonumber(count) + 1) .. "|" .. sched .. "|")
          requeue(id, at)
        end
      end
      if size > 0 and ARGV[i + 6] ~= "" then
        record(KEYS[8 + group], ARGV[i + 6], id, action ~= "retry" and at == "")
      elseif size > 0 and action == "skip" and at == "" then
        redis.call("PEXPIRE", KEYS[8 + group], keep) -- over, with nothing to record
      end
    end
  end
end
return applied
