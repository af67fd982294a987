-- resume.lua: resume jobs of one app, each as app/store/pauses.py planned it from its
-- paused entry, if that entry is still as it was read.
-- uses: names_index
-- KEYS[1] due     ZSET  job id -> ms the job next needs a worker
-- KEYS[2] jobs    HASH  job id -> job record
-- KEYS[3] runs    HASH  job id -> run state "sched|attempt|count|last|lease"
-- KEYS[4] paused  HASH  job id -> "{by}|{since ms}|{due ms}" (app/store/keys.py)
-- KEYS[5] nametop ZSET  the per-app job index (names_index.lua)
-- KEYS[6] pausegen HASH app id -> the number of the last pause or resume of the app here
-- KEYS[6 + k] hist LIST  the trigger history of the k-th group's job (app/store/history.py;
--                        only when ARGV[3] is not "")
-- ARGV[1] who resumes: "j" (the job itself) or "a" (its app)
-- ARGV[2] wake channel: published to when a trigger was put back
-- ARGV[3] how long the history of a job this ends is kept, ms; "": histories are off
-- ARGV[4] the app's id (all the jobs are that app's)
-- ARGV[5] the app's resume's number (app_flag.lua; "" for a job's own resume)
-- ARGV[6..] groups of 4: job id; its paused entry as read; its due ms once resumed (""
--   to leave the due index as it is: a trigger in flight or none pending; "end": the
--   catch-up policy passed over what was left of the job, which is over); the run state
--   to set with it ("": as it is)
-- A job still paused by the other (`by` keeps "j" or "a") keeps waiting. A group whose
-- entry changed meanwhile (a settlement, an overwrite) changes nothing: the caller reads
-- it again. The caller's last try, for a job whose entry kept changing, gives "*" as
-- the entry and the due: whatever entry it holds now, its trigger back at that entry's
-- own due time (no catch-up: there was no stable entry to plan it from).
-- The app's resume ("a") lifts nothing once a later pause or resume of the app has
-- reached this partition (pause.lua says why).
-- Returns {resumed: no longer paused, changed: job ids whose entries had changed}.
local who, keep = ARGV[1], ARGV[3]
local resumed, changed, earliest = 0, {}, nil
if who == "a" and redis.call("HGET", KEYS[6], ARGV[4]) ~= ARGV[5] then
  return {resumed, changed}
end
local group = 0
for i = 6, #ARGV, 4 do
  group = group + 1
  local id, seen, at, run = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local entry = redis.call("HGET", KEYS[4], id)
  if seen == "*" and entry then
    seen = entry
    at = string.match(entry, "|(%d*)$")
  end
  if entry ~= seen then
    if entry then
      changed[#changed + 1] = id
    end
  else
    local by, rest = string.match(entry, "^(%a*)|(.*)$")
    by = string.gsub(by, who, "")
    if by ~= "" then
      redis.call("HSET", KEYS[4], id, by .. "|" .. rest)
    else
      redis.call("HDEL", KEYS[4], id)
      resumed = resumed + 1
      if at == "end" then
        redis.call("HDEL", KEYS[2], id)
        redis.call("HDEL", KEYS[3], id)
        redis.call("ZREM", KEYS[1], id)
        names_remove(KEYS[5], {id})
        if keep ~= "" then
          redis.call("PEXPIRE", KEYS[6 + group], keep) -- kept a while, as ack.lua does
        end
      elseif at ~= "" then
        if run ~= "" then
          redis.call("HSET", KEYS[3], id, run)
        end
        redis.call("ZADD", KEYS[1], at, id)
        if earliest == nil or tonumber(at) < earliest then
          earliest = tonumber(at)
        end
      end
    end
  end
end
if earliest then
  redis.call("PUBLISH", ARGV[2], string.format("%d", earliest))
end
return {resumed, changed}
