-- claim.lua: take a batch of due triggers and give each a lease.
-- KEYS[1] due   ZSET  job id -> ms the job next needs a worker
-- KEYS[2] jobs  HASH  job id -> job record (JSON)
-- KEYS[3] runs  HASH  job id -> run state "sched|attempt|count|last|lease"
-- ARGV[1] now, epoch ms (only entries with score <= now are due)
-- ARGV[2] most triggers to claim
-- ARGV[3] lease length, ms
-- ARGV[4] lease token of this claim (unique per claim call)
-- Returns {earliest remaining score or false, id, record, sched, attempt, count, ...}.
-- The lease is the due index itself: a claimed job's score moves to the
-- lease expiry, so a trigger whose worker died becomes due again by itself.
local now = tonumber(ARGV[1])
-- Dueness goes by the worker's clock (a claim delayed in transit only sees less
-- as due). The lease goes by Redis's own clock: claims queued while Redis was
-- stalled run late and in any order, and a lease stamped by an old clock would
-- already look expired to the next claim, giving the trigger to two workers.
local t = redis.call("TIME")
local server_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease_until = math.max(now, server_ms) + tonumber(ARGV[3])
local due = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", now, "WITHSCORES", "LIMIT", 0, tonumber(ARGV[2]))
local out = {false}
for i = 1, #due, 2 do
  local id = due[i]
  local record = redis.call("HGET", KEYS[2], id)
  if not record then
    -- Defensive: an index entry without a job is dropped, never delivered.
    redis.call("ZREM", KEYS[1], id)
    redis.call("HDEL", KEYS[3], id)
  else
    local sched, attempt, count, last = due[i + 1], 0, 0, ""
    local state = redis.call("HGET", KEYS[3], id)
    if state then
      local s, a, c, l = string.match(state, "^(%d+)|(%d+)|(%d+)|(%d*)|")
      sched, attempt, count, last = s, tonumber(a), tonumber(c), l
    end
    attempt = attempt + 1
    redis.call("HSET", KEYS[3], id, sched .. "|" .. attempt .. "|" .. count .. "|" .. last .. "|" .. ARGV[4])
    redis.call("ZADD", KEYS[1], lease_until, id)
    out[#out + 1] = id
    out[#out + 1] = record
    out[#out + 1] = sched
    out[#out + 1] = attempt
    out[#out + 1] = count
  end
end
local head = redis.call("ZRANGE", KEYS[1], 0, 0, "WITHSCORES")
if head[2] then
  out[1] = head[2]
end
return out
