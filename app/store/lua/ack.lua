-- ack.lua: settle a batch of delivered (or failed) triggers.
-- uses: names_index
-- uses: far
-- KEYS[1] due      ZSET  job id -> ms the job next needs a worker
-- KEYS[2] jobs     HASH  job id -> job record
-- KEYS[3] runs     HASH  job id -> run state "sched|attempt|count|last|lease"
-- KEYS[4] dead     HASH  dead-letter id -> dead-letter record (JSON)
-- KEYS[5] deadidx  ZSET  dead-letter id -> ms it was dead-lettered
-- KEYS[6] nametop  ZSET  the per-app job index (names_index.lua)
-- KEYS[7] deadlex  ZSET  "{app}/{ms, 13 digits}/{dead-letter id}": the per-app dead-letter index
-- KEYS[8] paused   HASH  job id -> "{by}|{since ms}|{due ms}" of a paused job (app/store/pauses.py)
-- KEYS[8 + k] hist  LIST  the trigger history of the k-th group's job (app/store/history.py;
--                        only when ARGV[2] is above 0)
-- ARGV[1] now, epoch ms
-- ARGV[2] history size: the outcomes kept per job; 0: none (no history keys given)
-- ARGV[3] how long a history is kept once its job is over, ms
-- ARGV[4..] groups of 3 (few arguments: each costs the worker's client as much as a
--   short one's text):
--   "{lease token}|{action}|{time ms}|{bytes of the job id}|{job id}{dead-letter id}",
--   the dead-letter record, the history entry ("": none)
--   action "next":  the trigger is finished; time = next trigger's due ms, "" when the job is over
--   action "retry": the delivery failed and will be tried again at time
--   action "dead":  the failure policy is spent: store the dead letter, then as "next"
--   action "skip":  the trigger was missed and passed over, not delivered (a job's catch-up
--                   policy, app/jobs/schedule.py catch_up_due): time = the trigger due
--                   instead, not counted as fired; "" when that ends the job
-- A paused job's next trigger (or retry) waits in `paused` instead of the due index.
-- An entry whose lease token no longer matches (job deleted or overwritten,
-- or its lease expired and another worker took it) changes nothing, and is not recorded.
-- Returns one character per group, in their order: "1" applied, "0" not (its lease was gone).
-- app/store/keys.py dead_member: the app is the letter id's text before '/'.
local function dead_member(letter, ms)
  return string.match(letter, "^[^/]*") .. "/" .. string.format("%013d", tonumber(ms)) .. "/" .. letter
end
-- The outcome goes first in the job's history, which keeps its newest `size` entries; it
-- has no expiry while the job exists, and expires `keep` ms after the job is over. A
-- replay's outcome is its job's (the history key of the job it replays), and that job may
-- live on after the replay is over.
local size, keep = tonumber(ARGV[2]), ARGV[3]
local gone = {}  -- job ids whose job ends in this batch (deleted at the end)
local far_parent = {} -- job id -> true: a one-shot's job of this batch is in the far tier
local function record(hist, entry, id, over)
  local n = redis.call("LPUSH", hist, entry)
  if n > size then
    redis.call("LTRIM", hist, 0, size - 1)
  end
  if over and string.find(id, "\31", 1, true) then
    local job = string.match(id, "^[^\31]*")
    over = gone[job] or (redis.call("HEXISTS", KEYS[2], job) == 0 and not far_parent[job])
  end
  if over then
    redis.call("PEXPIRE", hist, keep)
  elseif n > 1 then
    redis.call("PERSIST", hist)  -- a job that ended earlier under this name, scheduled anew
  end
end
-- Writes of the batch gathered and made at the end, one command each for all entries
-- (a Redis command costs about as much as its arguments do: 12 calls per delivery of a
-- one-shot job were most of Redis's CPU in a burst). An id appears once in a batch, or
-- again only after it was applied (its lease is gone then: a later entry changes
-- nothing), so nothing of one entry reads what another's deferred writes would change.
local runs_set, due_add, ended = {}, {}, {}
-- Put the job's trigger due at `at`: in the due index, or in `paused` when it is paused.
local function requeue(id, at, paused)
  if paused then
    redis.call("ZREM", KEYS[1], id)
    redis.call("HSET", KEYS[8], id, string.match(paused, "^%a*|%d*|") .. at)
  else
    due_add[#due_add + 1] = at
    due_add[#due_add + 1] = id
  end
end
local function set_run(id, state)
  runs_set[#runs_set + 1] = id
  runs_set[#runs_set + 1] = state
end
-- One command over many arguments, in chunks (Lua's unpack takes a few thousand at most).
local function bulk(cmd, key, args)
  for i = 1, #args, 1000 do
    redis.call(cmd, key, unpack(args, i, math.min(i + 999, #args)))
  end
end
local ids, tokens, actions, ats, letters = {}, {}, {}, {}, {}
for i = 4, #ARGV, 3 do
  local token, action, at, n, rest = string.match(ARGV[i], "^([^|]*)|(%a*)|(%d*)|(%d+)|(.*)$")
  n = tonumber(n)
  local g = #ids + 1
  ids[g], tokens[g], actions[g], ats[g] = string.sub(rest, 1, n), token, action, at
  letters[g] = string.sub(rest, n + 1)
end
local states, pauses = {}, {}
for i = 1, #ids, 1000 do
  local chunk = {unpack(ids, i, math.min(i + 999, #ids))}
  local s = redis.call("HMGET", KEYS[3], unpack(chunk))
  local p = redis.call("HMGET", KEYS[8], unpack(chunk))
  for k = 1, #chunk do
    states[i + k - 1] = s[k]
    pauses[i + k - 1] = p[k]
  end
end
-- The far tier read before anything is written: on Redis Cluster a key this script names
-- itself can be missing while its slot moves, and the script then stops there (far.lua).
for _, id in ipairs(ids) do
  if string.find(id, "\31", 1, true) then
    local job = string.match(id, "^[^\31]*")
    far_parent[job] = far_parent[job] or far_get(KEYS[1], job) ~= nil
  end
end
local applied = {}
local done = {}
local group = 0
for i = 4, #ARGV, 3 do
  group = group + 1
  applied[group] = "0"
  local id, token, action, at = ids[group], tokens[group], actions[group], ats[group]
  local state = states[group]
  if state and not done[id] then
    local sched, attempt, count, last, lease = string.match(state, "^(%d+)|(%d+)|(%d+)|(%d*)|(.*)$")
    if lease == token then
      applied[group] = "1"
      done[id] = true
      if action == "retry" then
        set_run(id, sched .. "|" .. attempt .. "|" .. count .. "|" .. last .. "|")
        requeue(id, at, pauses[group])
      elseif action == "skip" and at ~= "" then
        set_run(id, at .. "|0|" .. count .. "|" .. last .. "|")
        requeue(id, at, pauses[group])
      else
        if action == "dead" then
          local letter = letters[group]
          redis.call("HSET", KEYS[4], letter, ARGV[i + 1])
          local was = redis.call("ZSCORE", KEYS[5], letter)
          if was then
            redis.call("ZREM", KEYS[7], dead_member(letter, was))
          end
          -- Indexed at the letter's own time (its record's deadMs, the outcome's), which
          -- the lists show: the batch's is a few ms later, and not in the same order.
          -- (`,"deadMs":` is the record's key: a quote inside a JSON string is escaped.)
          local ms = string.match(ARGV[i + 1], ',"deadMs":(%d+)') or ARGV[1]
          redis.call("ZADD", KEYS[7], 0, dead_member(letter, ms))
          redis.call("ZADD", KEYS[5], ms, letter)
        end
        if at == "" then
          ended[#ended + 1] = id
          gone[id] = true
        else
          set_run(id, at .. "|0|" .. (tonumber(count) + 1) .. "|" .. sched .. "|")
          requeue(id, at, pauses[group])
        end
      end
      if size > 0 and ARGV[i + 2] ~= "" then
        record(KEYS[8 + group], ARGV[i + 2], id, action ~= "retry" and at == "")
      elseif size > 0 and action == "skip" and at == "" then
        redis.call("PEXPIRE", KEYS[8 + group], keep) -- over, with nothing to record
      end
    end
  end
end
bulk("HSET", KEYS[3], runs_set)
bulk("ZADD", KEYS[1], due_add)
bulk("HDEL", KEYS[2], ended)
bulk("HDEL", KEYS[3], ended)
bulk("ZREM", KEYS[1], ended)
local listed = {}
for _, id in ipairs(ended) do
  if not string.find(id, "\31", 1, true) then -- a replay or a trigger-now is not listed
    listed[#listed + 1] = id
  end
end
names_remove(KEYS[6], listed)
bulk("HDEL", KEYS[8], ended)
return table.concat(applied)
