-- claim.lua: take a batch of due triggers and give each a lease, each app within its budget.
-- uses: far
-- KEYS[1] due       ZSET  job id -> ms the job next needs a worker
-- KEYS[2] jobs      HASH  job id -> job record (JSON)
-- KEYS[3] runs      HASH  job id -> run state "sched|attempt|count|last|lease"
-- KEYS[4] held      ZSET  scored 0, "{app}/{due ms, 15 digits}/{name}": due triggers set
--                         aside because their app had no room (app/store/keys.py)
-- KEYS[5] heldapps  ZSET  app id -> ms its held triggers may next be taken
-- KEYS[6] rate      HASH  app id -> token bucket "tokens|ms" of a rate-limited app
-- ARGV[1] now, epoch ms (only entries with score <= now are due); a worker passes a
--         few ms ahead of its clock and holds each trigger until its `due` (below)
-- ARGV[2] most triggers to claim
-- ARGV[3] lease length, ms
-- ARGV[4] lease token of this claim (unique per claim call)
-- ARGV[5] budget of an app not listed in ARGV[7..]: most of its triggers this call takes
-- ARGV[6] most due triggers this call sets aside (bounds the work of one call; the
--         answer says `more` when it stopped there)
-- ARGV[7] "1" when the caller knows of no other live app: a due trigger of an app out of
--         budget then ends the look instead of being set aside (nobody is behind it
--         whom it could keep waiting, and setting a backlog aside costs Redis work)
-- ARGV[8..] groups of 4: app id, its budget, its rate (tokens per ms, 0: no limit), the
--           size of its bucket
-- KEYS[4..6] and ARGV[5..] may be left out: then no app has a budget, and the answer
-- is {earliest, id, record, sched, attempt, count, due, ...} (as before them).
-- Returns {earliest, more, {blocked app, ...}, id, record, sched, attempt, count, due, ...}:
--   earliest  the earliest score of anything else this worker could take (false: none)
--   more      1 when due triggers may be left that this call had no room to look at
--   blocked   apps with due triggers left for want of budget (their caller's slots)
--   due       the entry's score when taken: a retry's time, else sched (or a lease's
--             end, past); the attempt goes out at neither before it nor before sched
-- The lease is the due index itself: a claimed job's score moves to the
-- lease expiry, so a trigger whose worker died becomes due again by itself.
-- Jobs of the far tier due by `now` are first moved into the due index (far.lua), as
-- many as this call may look at; `earliest` counts the far tier's too.
--
-- Fairness: a due trigger of an app without budget (its deliveries in flight in
-- the calling worker are at their cap) or without a token (its rate limit) is
-- moved out of the due index into `held` (run state lease "*", attempt kept), so
-- that one app's backlog never stands before another app's triggers. Held
-- triggers are taken first, oldest app first, by the next call with room for
-- their app. An entry in `held` whose run state is no longer "*" (the job was
-- deleted, overwritten or taken meanwhile) is stale and dropped when reached.
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local token = ARGV[4]
local fair = #KEYS >= 6
local default_budget = fair and tonumber(ARGV[5]) or limit
local max_aside = fair and tonumber(ARGV[6]) or 0
local solo = fair and ARGV[7] == "1"
local aside = 0
local stopped_at_blocked = false
local HELD = "*"
local budget, rate, size = {}, {}, {}
-- Apps the caller has no room for: the looks at `heldapps` read this many more, past
-- them (held first, they filled a window of 64, and an app behind them never got its
-- held triggers back).
local full = 0
for i = 8, #ARGV, 4 do
  budget[ARGV[i]] = tonumber(ARGV[i + 1])
  rate[ARGV[i]] = tonumber(ARGV[i + 2])
  size[ARGV[i]] = tonumber(ARGV[i + 3])
  if budget[ARGV[i]] <= 0 then
    full = full + 1
  end
end
-- Dueness goes by the worker's clock (a claim delayed in transit only sees less
-- as due). The lease goes by Redis's own clock: claims queued while Redis was
-- stalled run late and in any order, and a lease stamped by an old clock would
-- already look expired to the next claim, giving the trigger to two workers.
local t = redis.call("TIME")
local server_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease_until = math.max(now, server_ms) + tonumber(ARGV[3])
local out = {false, 0, {}}
local claimed = 0
local tokens = {}    -- app -> tokens left, for the rate-limited apps this call reads
local touched = {}   -- apps whose held triggers or bucket this call changed
local blocked = {}

local function budget_of(app)
  if budget[app] == nil then
    budget[app] = default_budget
  end
  return budget[app]
end

-- The app's tokens now (math.huge without a rate limit): its bucket refilled.
local function tokens_of(app)
  local r = rate[app]
  if r == nil or r <= 0 then
    return math.huge
  end
  if tokens[app] == nil then
    local have = size[app]
    local raw = redis.call("HGET", KEYS[6], app)
    if raw then
      local left, at = string.match(raw, "^([%d.]+)|(%d+)$")
      if left then
        have = math.min(size[app], tonumber(left) + math.max(now - tonumber(at), 0) * r)
      end
    end
    tokens[app] = have
    touched[app] = true
  end
  return tokens[app]
end

local function parse(state)
  return string.match(state, "^(%d+)|(%d+)|(%d+)|(%d*)|(.*)$")
end

-- The leases are written at the end, one HSET and one ZADD for all (a command per
-- trigger each was a good part of Redis's CPU in a burst). Nothing here reads them back
-- before: a trigger taken is out of `held` and not read from the due index again.
local leased_runs, leased_due = {}, {}
local taken = {}  -- a stale second entry of a job in `held` reads its state before the lease

-- Lease the trigger to this call and add it to the answer.
local function take(id, app, record, sched, attempt, count, last, due)
  if taken[id] then
    return
  end
  taken[id] = true
  attempt = attempt + 1
  leased_runs[#leased_runs + 1] = id
  leased_runs[#leased_runs + 1] = sched .. "|" .. attempt .. "|" .. count .. "|" .. last .. "|" .. token
  leased_due[#leased_due + 1] = lease_until
  leased_due[#leased_due + 1] = id
  out[#out + 1] = id
  out[#out + 1] = record
  out[#out + 1] = sched
  out[#out + 1] = attempt
  out[#out + 1] = count
  out[#out + 1] = due
  claimed = claimed + 1
  if fair then
    budget[app] = budget_of(app) - 1
    if tokens[app] then
      tokens[app] = tokens[app] - 1
    end
  end
end

-- Records and run states of the due entries likely taken, read up front (HMGET).
local records, states = {}, {}

-- A due-index entry: its trigger, or (defensive) an entry without a job, dropped.
local function take_due(id, app, score)
  local record = records[id]
  if record == nil then
    record = redis.call("HGET", KEYS[2], id)
  end
  if not record then
    redis.call("ZREM", KEYS[1], id)
    redis.call("HDEL", KEYS[3], id)
    return
  end
  local sched, attempt, count, last = score, 0, 0, ""
  local state = states[id]
  if state == nil then
    state = redis.call("HGET", KEYS[3], id)
  end
  if state then
    local s, a, c, l = parse(state)
    sched, attempt, count, last = s, tonumber(a), tonumber(c), l
  end
  take(id, app, record, sched, attempt, count, last, score)
end

-- The due ms a member of `held` carries: "{app}/{due ms, 15 digits}/{name}".
local function held_due(app, member)
  return tonumber(string.sub(member, #app + 2, #app + 16))
end

-- Set a due trigger aside until a call with room for its app takes it.
local function hold(id, app, score)
  local sched, attempt, count, last = score, 0, 0, ""
  local state = redis.call("HGET", KEYS[3], id)
  if state then
    local s, a, c, l = parse(state)
    sched, attempt, count, last = s, a, c, l
  end
  redis.call("HSET", KEYS[3], id, sched .. "|" .. attempt .. "|" .. count .. "|" .. last .. "|" .. HELD)
  redis.call("ZREM", KEYS[1], id)
  redis.call("ZADD", KEYS[4], 0, app .. "/" .. string.format("%015d", tonumber(score)) .. "/" .. string.sub(id, #app + 2))
  touched[app] = true
end

-- Up to n of the app's held triggers, oldest first. Stale entries (dropped as they are
-- reached) do not count: counted, they left the app's budget unspent, and its newer due
-- triggers went first. At most limit + max_aside of them a call, over all apps (the work
-- of one call is bounded; `more` then says to call again).
local stale = 0
local function take_held(app, n)
  local got = 0
  while got < n do
    if stale >= limit + max_aside then
      out[2] = 1
      break
    end
    local members = redis.call("ZRANGEBYLEX", KEYS[4], "[" .. app .. "/", "(" .. app .. "0",
                               "LIMIT", 0, n - got)
    if #members == 0 then
      break
    end
    for _, m in ipairs(members) do
      redis.call("ZREM", KEYS[4], m)
      local id = app .. "/" .. string.sub(m, #app + 18)
      local state = redis.call("HGET", KEYS[3], id)
      local record = redis.call("HGET", KEYS[2], id)
      local s, a, c, l, lease
      if state and record then
        s, a, c, l, lease = parse(state)
      end
      if lease == HELD and not taken[id] then
        take(id, app, record, s, tonumber(a), c, l, held_due(app, m))
        got = got + 1
      else
        stale = stale + 1
      end
    end
  end
  touched[app] = true
end

-- 0. The far tier's jobs due by now join the due index, before anything is written: on
-- Redis Cluster a key this script names itself can be missing while its slot moves, and
-- the script then stops there (far.lua), before it took anything out of `held`.
far_promote(KEYS[1], KEYS[2], now, limit + max_aside)

-- 1. Held triggers of the apps waiting longest, each app within its budget and tokens.
if fair then
  local ready = redis.call("ZRANGEBYSCORE", KEYS[5], "-inf", now, "LIMIT", 0, 64 + full)
  for _, app in ipairs(ready) do
    if claimed >= limit then
      out[2] = 1
      break
    end
    local n = math.min(budget_of(app), limit - claimed, math.floor(tokens_of(app)))
    if budget_of(app) <= 0 then
      blocked[app] = true
    elseif n > 0 then
      take_held(app, n)
    end
  end
end

-- 2. The due index in order; triggers of apps without room are set aside.
if claimed < limit then
  local window = limit - claimed + max_aside
  local due = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", now, "WITHSCORES", "LIMIT", 0, window)
  -- As many as this call may take (of the first entry's app, when apps have budgets).
  local first = math.min(#due / 2, limit - claimed)
  if fair and #due > 0 then
    first = math.min(first, math.max(budget_of(string.match(due[1], "^[^/]*")), 0))
  end
  if first > 0 then
    local ids = {}
    for i = 1, first do
      ids[i] = due[2 * i - 1]
    end
    local r = redis.call("HMGET", KEYS[2], unpack(ids))
    local st = redis.call("HMGET", KEYS[3], unpack(ids))
    for i = 1, first do
      records[ids[i]] = r[i]
      states[ids[i]] = st[i]
    end
  end
  for i = 1, #due, 2 do
    if claimed >= limit then
      out[2] = 1
      break
    end
    local id, score = due[i], due[i + 1]
    local app = string.match(id, "^[^/]*")
    if not fair or (budget_of(app) > 0 and tokens_of(app) >= 1) then
      take_due(id, app, score)
    elseif solo and budget_of(app) <= 0 then
      blocked[app] = true
      stopped_at_blocked = true
      break
    elseif aside >= max_aside then
      out[2] = 1
      break
    else
      if budget_of(app) <= 0 then
        blocked[app] = true
      end
      hold(id, app, score)
      aside = aside + 1
    end
  end
  if #due == 2 * window and not stopped_at_blocked then
    out[2] = 1  -- more may be due past the window
  end
end

for i = 1, #leased_runs, 1000 do
  redis.call("HSET", KEYS[3], unpack(leased_runs, i, math.min(i + 999, #leased_runs)))
  redis.call("ZADD", KEYS[1], unpack(leased_due, i, math.min(i + 999, #leased_due)))
end

-- Buckets and the heads of held triggers, for the apps this call changed.
for app, _ in pairs(touched) do
  if tokens[app] then
    redis.call("HSET", KEYS[6], app, string.format("%.6f|%d", tokens[app], now))
  end
  local head = redis.call("ZRANGEBYLEX", KEYS[4], "[" .. app .. "/", "(" .. app .. "0", "LIMIT", 0, 1)
  if head[1] then
    local at = held_due(app, head[1])
    if tokens[app] and tokens[app] < 1 then
      -- Nobody may take them before the next token.
      at = math.max(at, now + math.ceil((1 - tokens[app]) / rate[app]))
    end
    redis.call("ZADD", KEYS[5], at, app)
  else
    redis.call("ZREM", KEYS[5], app)
  end
end

local head = redis.call("ZRANGE", KEYS[1], 0, 0, "WITHSCORES")
local earliest = head[2] and tonumber(head[2])
if stopped_at_blocked then
  earliest = nil  -- the head is the blocked app's: its freed slots wake the caller
end
local far = not stopped_at_blocked and far_head(KEYS[1]) -- (blocked: the app's, as above)
if far and (earliest == nil or tonumber(far) < earliest) then
  earliest = tonumber(far) -- more than the window was due there, or not due yet
end
if fair then
  -- Held triggers count for this caller only where it has room for their app.
  local waiting = redis.call("ZRANGE", KEYS[5], 0, 63 + full, "WITHSCORES")
  for i = 1, #waiting, 2 do
    local app, at = waiting[i], tonumber(waiting[i + 1])
    if budget_of(app) <= 0 then
      blocked[app] = true
    elseif earliest == nil or at < earliest then
      earliest = at
    end
  end
end
if earliest then
  out[1] = string.format("%d", earliest)
end
if not fair then
  table.remove(out, 3)
  table.remove(out, 2)
  return out
end
for app, _ in pairs(blocked) do
  out[3][#out[3] + 1] = app
end
return out
