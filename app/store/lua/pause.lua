-- pause.lua: pause jobs of one app: each pending trigger leaves the due index and waits in
-- `paused` until resume.lua puts it back (app/store/pauses.py).
-- uses: far
-- KEYS[1] due     ZSET  job id -> ms the job next needs a worker
-- KEYS[2] jobs    HASH  job id -> job record
-- KEYS[3] runs    HASH  job id -> run state "sched|attempt|count|last|lease"
-- KEYS[4] paused  HASH  job id -> "{by}|{since ms}|{due ms}" (app/store/keys.py)
-- KEYS[5] staged  ZSET  job id -> due ms, staged triggers of these jobs' app
-- KEYS[6] pausegen HASH app id -> the number of the last pause or resume of the app here
-- ARGV[1] now, epoch ms
-- ARGV[2] who pauses: "j" (the job itself) or "a" (its app)
-- ARGV[3] the app's id
-- ARGV[4] the app's pause's number (app_flag.lua; "" for a job's own pause)
-- ARGV[5..] job ids, all of that app
-- The app's pause ("a") pauses nothing once a later pause or resume of the app has reached
-- this partition (app_flag.lua): that one's walk decides every job here.
-- A trigger in flight stays with its worker (its due-index entry is its lease): the
-- worker's settlement puts the next due time into `paused` (ack.lua). One whose lease ran
-- out (its worker is gone) waits like any other. A trigger a claim set aside for want of
-- room (run state lease "*", claim.lua) is due: it waits at its due time, and its entry
-- in `held` is left stale (claim.lua drops such entries).
-- Returns how many of the ids are jobs (paused now, or already).
far_open(KEYS[1]) -- before anything is read (far.lua: the first version's jobs)
local now, who = tonumber(ARGV[1]), ARGV[2]
local n = 0
if who == "a" and redis.call("HGET", KEYS[6], ARGV[3]) ~= ARGV[4] then
  for i = 5, #ARGV do
    n = n + redis.call("HEXISTS", KEYS[2], ARGV[i])
    if far_get(KEYS[1], ARGV[i]) then
      n = n + 1
    end
  end
  return n
end
for i = 5, #ARGV do
  local id = ARGV[i]
  far_unfar(KEYS[1], KEYS[2], id) -- a paused job is near (far.lua)
  if redis.call("HEXISTS", KEYS[2], id) == 1 then
    n = n + 1
    local entry = redis.call("HGET", KEYS[4], id)
    if entry then
      local by, rest = string.match(entry, "^(%a*)|(.*)$")
      if not string.find(by, who, 1, true) then
        redis.call("HSET", KEYS[4], id, by .. who .. "|" .. rest)
      end
    else
      local due = ""
      local sched, attempt, count, last, lease
      local state = redis.call("HGET", KEYS[3], id)
      if state then
        sched, attempt, count, last, lease = string.match(state, "^(%d+)|(%d+)|(%d+)|(%d*)|(.*)$")
      end
      local score = redis.call("ZSCORE", KEYS[1], id)
      if state and lease ~= "" and (lease == "*" or (score and tonumber(score) <= now)) then
        -- Set aside by a claim, or its worker is gone: due at its time, held by nobody.
        redis.call("HSET", KEYS[3], id, sched .. "|" .. attempt .. "|" .. count .. "|" .. last .. "|")
        redis.call("ZREM", KEYS[1], id)
        due = sched
      elseif state and lease ~= "" then
        due = "" -- in flight: the settlement says when the next trigger is due
      elseif score then
        redis.call("ZREM", KEYS[1], id)
        due = string.format("%d", tonumber(score))
      else
        local staged = redis.call("ZSCORE", KEYS[5], id)
        if staged then
          redis.call("ZREM", KEYS[5], id)
          due = string.format("%d", tonumber(staged))
        elseif state then
          due = sched
        end
      end
      redis.call("HSET", KEYS[4], id, who .. "|" .. string.format("%d", now) .. "|" .. due)
    end
  end
end
return n
