-- far.lua: a library, not a script. A script whose header holds the line
-- "-- uses: far" runs with it in front (app/store/scripts.py).
--
-- The far tier of a partition: jobs whose first trigger is more than a while ahead when
-- they are scheduled (Settings.far_after_s), kept compact until it comes near. Their
-- records and due entries are spread by a hash of the job id over small keys that Redis
-- keeps as listpacks (about 90 B a record and 35 B a due entry, where the `jobs` hash
-- took 130 and the `due` sorted set 119):
--   {base}:farjobs:{b}  HASH job id -> record, of the jobs in bucket b
--   {base}:fardue:{b}   ZSET job id -> due ms, of the same jobs
--   {base}:fartop       ZSET bucket b -> its earliest due ms
--   {base}:farmeta      HASH "n": how many buckets (absent: 1), "count": jobs held,
--                            "key": the bucket hash's secret (far_hash)
-- The buckets grow by linear hashing: past FAR_FILL jobs a bucket on average, the next
-- bucket in turn splits in two, and a split moves one bucket's jobs. A bucket not yet
-- split in its round covers twice the hashes, so it holds up to about 2 * FAR_FILL: 40
-- keeps that well under Redis's 128 entries (zset-max-listpack-entries; one past it turns
-- the sorted set into a skiplist for good). A far job is not paused, staged, claimed nor
-- replayed: the near tier (`jobs`, `due`) holds every job that is, and every job a worker
-- can take. A claim moves the far jobs due by then into the near tier first
-- (far_promote); a script that changes a far job brings it near first (far_unfar), or
-- replaces it in place; readers look in both tiers (far_get). Scripts pass the due key;
-- the rest is named from it and shares its hash tag (Redis Cluster): a script reads them
-- before it writes where a stop half-way (a slot being moved) would lose anything.

local FAR_FILL = 40

local far_state_of = {}

-- The partition's far tier: its keys and the bucket count and job count, read once a
-- script (the script's own splits keep them up to date).
local function far_of(due)
  local s = far_state_of[due]
  if s == nil then
    local base = string.sub(due, 1, #due - #":due")
    s = {base = base, meta = base .. ":farmeta", top = base .. ":fartop"}
    local meta = redis.call("HMGET", s.meta, "n", "count", "key")
    s.n, s.count, s.key = tonumber(meta[1] or "1"), tonumber(meta[2] or "0"), meta[3] or ""
    far_state_of[due] = s
  end
  return s
end

-- The bucket hash: SHA-1 of the partition's secret (farmeta "key", random, set by the first
-- script that puts a job here, from its caller's ARGV) and the job id, so that nobody who
-- picks job names can pick their buckets and overfill one.
local far_hash_of = {} -- job id -> its hash, for the script's life (SHA-1 costs)
local function far_hash(s, id)
  local h = far_hash_of[id]
  if h == nil then
    h = tonumber(string.sub(redis.sha1hex(s.key .. id), 1, 8), 16)
    far_hash_of[id] = h
  end
  return h
end

-- The largest power of two not above n.
local function far_low(n)
  local low = 1
  while low * 2 <= n do
    low = low * 2
  end
  return low
end

-- Linear hashing: the buckets below n - low have split into b and b + low already.
local function far_bucket(s, id)
  local h, low = far_hash(s, id), far_low(s.n)
  local b = h % low
  if b < s.n - low then
    b = h % (2 * low)
  end
  return b
end

local function far_keys(s, b)
  return s.base .. ":farjobs:" .. b, s.base .. ":fardue:" .. b
end

-- fartop holds the bucket's earliest due ms, or not the bucket once it is empty.
local function far_settle(s, b)
  local _, due = far_keys(s, b)
  local head = redis.call("ZRANGE", due, 0, 0, "WITHSCORES")
  if head[1] then
    redis.call("ZADD", s.top, head[2], b)
  else
    redis.call("ZREM", s.top, b)
  end
end

-- The partition's hash secret: `key` (the caller's random one) when the far tier holds no
-- job and has none yet; else the one it has (its jobs' buckets were found with it).
local function far_use_key(due, key)
  local s = far_of(due)
  if s.key == "" and s.count <= 0 and key and key ~= "" then
    redis.call("HSET", s.meta, "key", key)
    s.key = key
    far_hash_of = {}
  end
end

local function far_count(s, delta)
  s.count = s.count + delta
  redis.call("HINCRBY", s.meta, "count", delta)
end

-- `command` on `key` with `args`, `step` (2,000) at a time: Lua's unpack takes at most
-- about 8,000 values.
local function far_chunked(command, key, args, step)
  step = step or 2000
  for c = 1, #args, step do
    redis.call(command, key, unpack(args, c, math.min(c + step - 1, #args)))
  end
end

-- Split the next bucket in turn: its jobs whose hash says so move to the new bucket.
-- Read once each (its due entries in order, so each half's first is its earliest). The
-- new bucket is written first and the count of buckets last: a script that stops half-way
-- (Redis Cluster, a slot being moved: a key the script names itself that is not there
-- yet) leaves every job in the bucket where far_bucket finds it.
local function far_split(s)
  local low = far_low(s.n)
  local from, to = s.n - low, s.n
  local from_jobs, from_due = far_keys(s, from)
  local to_jobs, to_due = far_keys(s, to)
  local entries = redis.call("ZRANGE", from_due, 0, -1, "WITHSCORES")
  local moved, moved_entries, kept_head, moved_head = {}, {}, nil, nil
  for i = 1, #entries, 2 do
    local id = entries[i]
    if far_hash(s, id) % (2 * low) == to then
      moved[#moved + 1] = id
      moved_entries[#moved_entries + 1] = entries[i + 1]
      moved_entries[#moved_entries + 1] = id
      moved_head = moved_head or entries[i + 1]
    else
      kept_head = kept_head or entries[i + 1]
    end
  end
  if #moved > 0 then
    local records = {}
    for c = 1, #moved, 2000 do
      for _, record in ipairs(redis.call("HMGET", from_jobs,
                                         unpack(moved, c, math.min(c + 1999, #moved)))) do
        records[#records + 1] = record
      end
    end
    local fields = {}
    for i, id in ipairs(moved) do
      fields[#fields + 1] = id
      fields[#fields + 1] = records[i]
    end
    far_chunked("HSET", to_jobs, fields)
    far_chunked("ZADD", to_due, moved_entries)
    redis.call("ZADD", s.top, moved_head, to)
    far_chunked("HDEL", from_jobs, moved)
    far_chunked("ZREM", from_due, moved)
    if kept_head then
      redis.call("ZADD", s.top, kept_head, from)
    else
      redis.call("ZREM", s.top, from)
    end
  end
  s.n = s.n + 1
  redis.call("HSET", s.meta, "n", s.n)
end

-- The far job's record, its due ms (a string) and its bucket; nil when it is not far.
local function far_get(due, id)
  local s = far_of(due)
  if s.count <= 0 then
    return nil
  end
  local b = far_bucket(s, id)
  local jobs_key, due_key = far_keys(s, b)
  local record = redis.call("HGET", jobs_key, id)
  if not record then
    return nil
  end
  return record, redis.call("ZSCORE", due_key, id), b
end

-- Take the job out of the far tier: its record and due ms, or nil when it was not there.
local function far_take(due, id)
  local record, score, b = far_get(due, id)
  if not record then
    return nil
  end
  local s = far_of(due)
  local jobs_key, due_key = far_keys(s, b)
  redis.call("HDEL", jobs_key, id)
  redis.call("ZREM", due_key, id)
  far_settle(s, b)
  far_count(s, -1)
  return record, score
end

-- Bring a far job into the near tier (`jobs` and `due`), as it would be had it never
-- been far; true when it was far.
local function far_unfar(due, jobs, id)
  local record, score = far_take(due, id)
  if not record then
    return false
  end
  redis.call("HSET", jobs, id, record)
  if score then
    redis.call("ZADD", due, score, id)
  end
  return true
end

-- Whether a job first due at `ms` (epoch ms) goes far: more than `after` ms from now by
-- Redis's clock ("" or nil `after`: a caller that keeps no far tier).
local far_now_ms = nil
local function far_is_far(ms, after)
  if after == nil or after == "" then
    return false
  end
  if far_now_ms == nil then
    local t = redis.call("TIME")
    far_now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return tonumber(ms) > far_now_ms + tonumber(after)
end

-- Put a job in the far tier; the caller has taken it out of the near one.
local function far_put(due, id, record, ms)
  local s = far_of(due)
  local b = far_bucket(s, id)
  local jobs_key, due_key = far_keys(s, b)
  local new = redis.call("HSET", jobs_key, id, record)
  redis.call("ZADD", due_key, ms, id)
  if new == 0 then
    far_settle(s, b) -- its due time may have moved later
    return
  end
  redis.call("ZADD", s.top, "LT", ms, b)
  far_count(s, 1)
  if s.count > FAR_FILL * s.n then
    far_split(s)
  end
end

-- `items` by the bucket of each one's job id (`id_of(item)`), and the buckets in the order
-- first met.
local function far_group(s, items, id_of)
  local by_bucket, order = {}, {}
  for _, item in ipairs(items) do
    local b = far_bucket(s, id_of(item))
    if by_bucket[b] == nil then
      by_bucket[b] = {}
      order[#order + 1] = b
    end
    table.insert(by_bucket[b], item)
  end
  return by_bucket, order
end

-- The far records of `ids` (false where an id is not far), one HMGET a bucket: a bulk
-- schedule's look for the jobs it overwrites.
local function far_records(due, ids)
  local s = far_of(due)
  local out = {}
  if s.count <= 0 then
    for i = 1, #ids do
      out[i] = false
    end
    return out
  end
  local positions = {}
  for i = 1, #ids do
    positions[i] = i
  end
  local by_bucket, order = far_group(s, positions, function(i) return ids[i] end)
  for _, b in ipairs(order) do
    local members = by_bucket[b]
    for c = 1, #members, 2000 do -- Lua's unpack takes at most about 8,000 values
      local wanted = {}
      for k = c, math.min(c + 1999, #members) do
        wanted[#wanted + 1] = ids[members[k]]
      end
      local got = redis.call("HMGET", (far_keys(s, b)), unpack(wanted))
      for k = 1, #wanted do
        out[members[c + k - 1]] = got[k]
      end
    end
  end
  return out
end

-- far_put of many jobs (each once; one already far is replaced in place): {id, record, ms}
-- each, written with a few commands a bucket and the count once. The buckets split first,
-- for all of them: a bucket that took them all before splitting would pass 128 entries.
local function far_put_many(due, jobs)
  if #jobs == 0 then
    return
  end
  local s = far_of(due)
  while s.count + #jobs > FAR_FILL * s.n do
    far_split(s)
  end
  local by_bucket, order = far_group(s, jobs, function(job) return job[1] end)
  local heads = {} -- each bucket's earliest of these, for one ZADD LT of the top
  local added = 0
  for _, b in ipairs(order) do
    local records, entries, earliest = {}, {}, nil
    for _, job in ipairs(by_bucket[b]) do
      records[#records + 1] = job[1]
      records[#records + 1] = job[2]
      entries[#entries + 1] = job[3]
      entries[#entries + 1] = job[1]
      local ms = tonumber(job[3])
      if earliest == nil or ms < earliest then
        earliest = ms
      end
    end
    local jobs_key, due_key = far_keys(s, b)
    local new = 0
    for c = 1, #records, 2000 do -- Lua's unpack takes at most about 8,000 values
      local last = math.min(c + 1999, #records)
      new = new + redis.call("HSET", jobs_key, unpack(records, c, last))
      redis.call("ZADD", due_key, unpack(entries, c, math.min(c + 1999, #entries)))
    end
    added = added + new
    if new < #records / 2 then
      far_settle(s, b) -- a job replaced: its due time may have moved later
    else
      heads[#heads + 1] = earliest
      heads[#heads + 1] = b
    end
  end
  for c = 1, #heads, 2000 do
    redis.call("ZADD", s.top, "LT", unpack(heads, c, math.min(c + 1999, #heads)))
  end
  far_count(s, added)
end

-- The earliest due ms of the far tier (a string), or nil when it is empty.
local function far_head(due)
  local s = far_of(due)
  if s.count <= 0 then
    return nil
  end
  return redis.call("ZRANGE", s.top, 0, 0, "WITHSCORES")[2]
end

-- Move the far jobs due by `upto` into the near tier, at most `most` of them, earliest
-- buckets first; how many moved.
local function far_promote(due, jobs, upto, most)
  local s = far_of(due)
  if s.count <= 0 then
    return 0
  end
  local moved = 0
  for _, b in ipairs(redis.call("ZRANGEBYSCORE", s.top, "-inf", upto, "LIMIT", 0, most)) do
    if moved >= most then
      break
    end
    local jobs_key, due_key = far_keys(s, b)
    local entries = redis.call("ZRANGEBYSCORE", due_key, "-inf", upto, "WITHSCORES",
                               "LIMIT", 0, most - moved)
    if #entries > 0 then
      local ids, dues = {}, {}
      for i = 1, #entries, 2 do
        ids[#ids + 1] = entries[i]
        dues[#dues + 1] = entries[i + 1]
        dues[#dues + 1] = entries[i]
      end
      local records = redis.call("HMGET", jobs_key, unpack(ids))
      local near = {}
      for i, id in ipairs(ids) do
        if records[i] then
          near[#near + 1] = id
          near[#near + 1] = records[i]
        end
      end
      if #near > 0 then
        redis.call("HSET", jobs, unpack(near))
      end
      redis.call("ZADD", due, unpack(dues))
      redis.call("HDEL", jobs_key, unpack(ids))
      redis.call("ZREM", due_key, unpack(ids))
      far_count(s, -#ids)
      moved = moved + #ids
    end
    far_settle(s, b)
  end
  return moved
end

-- The earliest due ms of the partition, near or far (a number), or nil when none.
local function far_earliest(due)
  local near = redis.call("ZRANGE", due, 0, 0, "WITHSCORES")[2]
  local far = far_head(due)
  if near and far then
    return math.min(tonumber(near), tonumber(far))
  end
  return tonumber(near or far)
end
