-- far.lua: a library, not a script. A script whose header holds the line
-- "-- uses: far" runs with it in front (app/store/scripts.py).
--
-- The far tier of a partition: jobs whose first trigger is more than a while ahead when
-- they are scheduled (Settings.far_after_s), kept compact until it comes near. It is a
-- B-tree by job id in bytewise order, as the job index is (names_index.lua): each leaf
-- holds the records and due times of the ids from its low bound to the next leaf's, in
-- a hash and a sorted set small enough for Redis to keep as listpacks (about 90 B a
-- record and 35 B a due entry, where the `jobs` hash took 130 and the `due` sorted set 119):
--   {base}:fartree        ZSET scored 0: each leaf's low bound ("" for the first leaf)
--   {base}:farleaf:{low}  HASH job id -> record, of the leaf's jobs
--   {base}:farwhen:{low}  ZSET job id -> due ms, of the same jobs
--   {base}:farheads       ZSET leaf low bound -> its earliest due ms
--   {base}:farmeta        HASH "count": the jobs the tier holds
--   {base}:farscratch     ZSET a call's ids, for Redis to sort: gone before the script ends
--   {base}:farmerge       ZSET a leaf's ids and the call's that go there, as farscratch
-- A leaf that would reach FAR_LEAF_MAX entries is cut into even leaves of at most
-- FAR_PIECE; one that falls under FAR_LEAF_MIN joins the leaf before it when both fit.
-- Leaves split by size whatever the ids, so no choice of job names overfills one, and the
-- jobs of one request, whose names are mostly alike, share a few leaves: a few commands
-- a leaf, not a few a job. A far job is not paused, staged, claimed nor replayed: the near
-- tier (`jobs`, `due`) holds every job that is, and every job a worker can take. A claim
-- moves the far jobs due by then into the near tier first (far_promote); a script that
-- changes a far job brings it near first (far_unfar), or replaces it in place; readers look
-- in both tiers (far_get). Scripts pass the due key; the rest is named from it and shares
-- its hash tag (Redis Cluster): a script reads them before it writes where a stop half-way
-- (a slot being moved) would lose anything, and a leaf's jobs are written to their new
-- leaf before they leave the old one. Bounds are compared by Redis only: Lua's string
-- order follows the server's locale, Redis's is bytewise.
--
-- The first version of the tier (653c6f6 to e94122f, never released) spread its jobs over
-- buckets by a hash of the job id (farjobs:{b}, fardue:{b}, fartop; farmeta "n" and
-- "key"): the first script that looks at the tier moves those jobs into the near tier, as
-- they stand (far_legacy), before it reads anything (far_open).

-- hash- and zset-max-listpack-entries (128): one past it turns the key into a hashtable or
-- skiplist for good (Redis does not convert back when it shrinks). A record or id longer
-- than 64 bytes (*-max-listpack-value) does as well, for its leaf.
local FAR_LEAF_MAX = 128
local FAR_PIECE = 96 -- a cut leaf's most: room for 32 more before it is cut again
local FAR_LEAF_MIN = 32

-- `command` on `key` with `args`, `step` (2,000) at a time: Lua's unpack takes at most
-- about 8,000 values.
local function far_chunked(command, key, args, step)
  step = step or 2000
  for c = 1, #args, step do
    redis.call(command, key, unpack(args, c, math.min(c + step - 1, #args)))
  end
end

-- The sorted set `key` whole, as ZADD's arguments (score, member each), earliest first.
local function far_entries(key)
  local entries = redis.call("ZRANGE", key, 0, -1, "WITHSCORES")
  local args = {}
  for i = 1, #entries, 2 do
    args[#args + 1] = entries[i + 1]
    args[#args + 1] = entries[i]
  end
  return args
end

-- The first version's buckets (0 to n - 1), emptied into the near tier; how many jobs
-- they held.
local function far_legacy(s, n)
  local jobs, moved = s.base .. ":jobs", 0
  for b = 0, n - 1 do
    local records_key, due_key = s.base .. ":farjobs:" .. b, s.base .. ":fardue:" .. b
    local dues = far_entries(due_key)
    far_chunked("HSET", jobs, redis.call("HGETALL", records_key))
    far_chunked("ZADD", s.due, dues)
    redis.call("DEL", records_key, due_key)
    moved = moved + #dues / 2
  end
  redis.call("DEL", s.base .. ":fartop")
  redis.call("HDEL", s.meta, "n", "key")
  if moved > 0 then
    redis.call("HINCRBY", s.meta, "count", -moved)
  end
  return moved
end

local far_state_of = {}

-- The partition's far tier: its keys and job count, read once a script (the script keeps
-- the count up to date), and the leaf found for each id (until the tree changes).
local function far_of(due)
  local s = far_state_of[due]
  if s == nil then
    local base = string.sub(due, 1, #due - #":due")
    s = {base = base, due = due, meta = base .. ":farmeta", tree = base .. ":fartree",
         heads = base .. ":farheads", leaf_of = {}}
    local meta = redis.call("HMGET", s.meta, "count", "key", "n")
    s.count = tonumber(meta[1] or "0")
    if meta[2] then
      s.count = s.count - far_legacy(s, tonumber(meta[3] or "1"))
    end
    far_state_of[due] = s
  end
  return s
end

-- A script that reads `jobs` or `due` before it first looks at the far tier calls this
-- first: the jobs the first version left are near by then (far_legacy). (ack.lua does
-- not: its first look, far_get of one-shots' jobs, comes before it reads `jobs`, and it
-- reads nothing else a first-version far job could be in.)
local function far_open(due)
  far_of(due)
end

local function far_keys(s, low)
  return s.base .. ":farleaf:" .. low, s.base .. ":farwhen:" .. low
end

-- The low bound of the leaf that holds `id` or would; nil when the tree is empty.
local function far_leaf_of(s, id)
  local low = s.leaf_of[id]
  if low == nil then
    low = redis.call("ZREVRANGEBYLEX", s.tree, "[" .. id, "-", "LIMIT", 0, 1)[1] or false
    s.leaf_of[id] = low
  end
  return low or nil
end

local function far_count(s, delta)
  s.count = s.count + delta
  redis.call("HINCRBY", s.meta, "count", delta)
end

-- farheads holds the leaf's earliest due ms, or not the leaf once it is empty.
local function far_head_of(s, low)
  local _, when = far_keys(s, low)
  local head = redis.call("ZRANGE", when, 0, 0, "WITHSCORES")
  if head[1] then
    redis.call("ZADD", s.heads, head[2], low)
  else
    redis.call("ZREM", s.heads, low)
  end
end

-- ZADD's arguments for the ids in `list` (every `step`th entry from the first), each
-- scored 0.
local function far_zero(list, step)
  local entries = {}
  for i = 1, #list, step do
    entries[#entries + 1] = 0
    entries[#entries + 1] = list[i]
  end
  return entries
end

-- `ids` (each once) in bytewise order, sorted by Redis in a scratch sorted set (`name`,
-- "farscratch" by default), which is left holding them for the caller to count ranges in
-- and delete.
local function far_sorted(s, ids, name)
  local scratch = s.base .. ":" .. (name or "farscratch")
  redis.call("DEL", scratch) -- left by a script that failed half-way
  far_chunked("ZADD", scratch, far_zero(ids, 1))
  return redis.call("ZRANGE", scratch, 0, -1), scratch
end

-- The ids of a whole call (schedule_many.lua's), of which far_group is then given parts:
-- sorted once, when first needed, for all of them. far_batch_end deletes the sort.
local function far_batch(due, ids)
  far_of(due).batch = ids
end

local function far_batch_end(due)
  local s = far_of(due)
  if s.batch_scratch then
    redis.call("DEL", s.batch_scratch)
  end
  s.batch, s.batch_sorted, s.batch_scratch = nil, nil, nil
end

-- `ids` (each once) by leaf: {low bound, its ids in order} each, in order, with `after`
-- the next leaf's bound (nil: none, or not looked up) and `scratch` the sorted set the ids
-- were sorted in (nil: not sorted), which holds the share's range (and, in a batch, ids
-- of the batch that are not `ids`); the low bound "" with `new` set when the tree is
-- empty. Returns the groups, and the scratch set for the caller to delete (nil: none, or
-- the batch's).
local function far_group(s, ids)
  if #ids == 1 then
    local low = far_leaf_of(s, ids[1])
    return {{low or "", ids, new = low == nil}}
  end
  local sorted, scratch, wanted = nil, nil, nil
  if s.batch then -- ids are some of the batch's
    if not s.batch_sorted then
      s.batch_sorted, s.batch_scratch = far_sorted(s, s.batch)
    end
    sorted, scratch, wanted = s.batch_sorted, s.batch_scratch, {}
    for _, id in ipairs(ids) do
      wanted[id] = true
    end
  else
    sorted, scratch = far_sorted(s, ids)
  end
  local groups, i = {}, 1
  while i <= #sorted do
    if wanted and not wanted[sorted[i]] then
      i = i + 1
    else
      local low = far_leaf_of(s, sorted[i])
      local last, after = #sorted, nil -- the leaf's range of the sort: sorted[i..last]
      if low ~= nil then
        after = redis.call("ZRANGEBYLEX", s.tree, "(" .. low, "+", "LIMIT", 0, 1)[1]
        if after ~= nil then
          last = redis.call("ZLEXCOUNT", scratch, "-", "(" .. after)
        end
      end
      local share = {}
      for k = i, last do
        if not wanted or wanted[sorted[k]] then
          share[#share + 1] = sorted[k]
        end
      end
      groups[#groups + 1] = {low or "", share, new = low == nil, after = after,
                             scratch = scratch}
      i = last + 1
    end
  end
  if wanted then
    return groups, nil
  end
  return groups, scratch
end

-- The leaf `low` after jobs left it: its head follows; an empty one leaves the tree (the
-- first stays while others do); one under FAR_LEAF_MIN joins the one before when both
-- fit in FAR_PIECE (written there before it leaves the tree).
local function far_shrink(s, low)
  local leaf, when = far_keys(s, low)
  local size = redis.call("ZCARD", when)
  if size == 0 then
    redis.call("ZREM", s.heads, low)
    if low ~= "" then
      redis.call("ZREM", s.tree, low)
    end
    -- the first leaf goes last, once it is the only one and empty
    if redis.call("ZCARD", s.tree) == 1 and redis.call("EXISTS", far_keys(s, "")) == 0 then
      redis.call("DEL", s.tree)
    end
    s.leaf_of = {}
    return
  end
  if low ~= "" and size < FAR_LEAF_MIN then
    local before = redis.call("ZREVRANGEBYLEX", s.tree, "(" .. low, "-", "LIMIT", 0, 1)[1]
    local before_leaf, before_when = far_keys(s, before)
    if redis.call("ZCARD", before_when) + size <= FAR_PIECE then
      local dues = far_entries(when)
      redis.call("HSET", before_leaf, unpack(redis.call("HGETALL", leaf)))
      redis.call("ZADD", before_when, unpack(dues))
      redis.call("ZADD", s.heads, "LT", dues[1], before)
      redis.call("ZREM", s.tree, low)
      redis.call("ZREM", s.heads, low)
      redis.call("DEL", leaf, when)
      s.leaf_of = {}
      return
    end
  end
  far_head_of(s, low)
end

-- The leaf `low` with `share` (ids in order; by_id[id] = {id, record, due ms}) written in,
-- cut into even leaves of at most FAR_PIECE when they come to FAR_LEAF_MAX together. The
-- new leaves are written first and each is named by its first id; the jobs that moved
-- there leave `low` last. `group`: far_group's of the share, whose scratch set, when it
-- sorted, holds the share (Redis sorts the leaf's jobs in with it). Returns how many of
-- the ids were not there.
local function far_recut(s, group, by_id)
  local low, share = group[1], group[2]
  local leaf, when = far_keys(s, low)
  local held = redis.call("HGETALL", leaf)
  local entries = redis.call("ZRANGE", when, 0, -1, "WITHSCORES")
  local record_of, ms_of, old, ids = {}, {}, {}, {}
  for i = 1, #held, 2 do
    record_of[held[i]] = held[i + 1]
    old[held[i]] = true
    ids[#ids + 1] = held[i]
  end
  for i = 1, #entries, 2 do
    ms_of[entries[i]] = entries[i + 1]
  end
  local added = 0
  for _, id in ipairs(share) do
    if not old[id] then
      added = added + 1
      ids[#ids + 1] = id
    end
    record_of[id], ms_of[id] = by_id[id][2], by_id[id][3]
  end
  local sorted
  if group.scratch then -- sorted already: the leaf's jobs sorted in, for a while
    local absent, there = {}, {}
    local old_ids = {unpack(ids, 1, #held / 2)} -- fewer than FAR_LEAF_MAX
    if #old_ids > 0 then
      there = redis.call("ZMSCORE", group.scratch, unpack(old_ids))
    end
    for k, id in ipairs(old_ids) do
      if not there[k] then
        absent[#absent + 1] = id
      end
    end
    far_chunked("ZADD", group.scratch, far_zero(absent, 1))
    sorted = {}
    for _, id in ipairs(redis.call("ZRANGEBYLEX", group.scratch, "[" .. low,
                                   group.after and "(" .. group.after or "+")) do
      if old[id] or by_id[id] then -- not the rest of a batch
        sorted[#sorted + 1] = id
      end
    end
    far_chunked("ZREM", group.scratch, absent)
  else
    local merge
    sorted, merge = far_sorted(s, ids, "farmerge")
    redis.call("DEL", merge)
  end
  local pieces = 1 -- replacements that leave it under FAR_LEAF_MAX: no cut
  if #sorted >= FAR_LEAF_MAX then
    pieces = math.ceil(#sorted / FAR_PIECE)
  end
  local size = math.ceil(#sorted / pieces)
  -- One new job past the leaf's last (names in sequence, one at a time): the leaf keeps
  -- FAR_PIECE and the next takes the rest, and the jobs that follow, so leaves filled in
  -- sequence stay three quarters full, not half.
  if #share == 1 and added == 1 and sorted[#sorted] == share[1] then
    size = FAR_PIECE
  end
  local bounds, heads = {}, {}
  for c = size + 1, #sorted, size do
    local bound = sorted[c]
    local piece_leaf, piece_when = far_keys(s, bound)
    local fields, dues, earliest = {}, {}, nil
    for i = c, math.min(c + size - 1, #sorted) do
      local id = sorted[i]
      fields[#fields + 1] = id
      fields[#fields + 1] = record_of[id]
      dues[#dues + 1] = ms_of[id]
      dues[#dues + 1] = id
      if earliest == nil or tonumber(ms_of[id]) < earliest then
        earliest = tonumber(ms_of[id])
      end
    end
    redis.call("DEL", piece_leaf, piece_when) -- left by a cut that stopped half-way
    redis.call("HSET", piece_leaf, unpack(fields))
    redis.call("ZADD", piece_when, unpack(dues))
    bounds[#bounds + 1] = 0
    bounds[#bounds + 1] = bound
    heads[#heads + 1] = earliest
    heads[#heads + 1] = bound
  end
  if #bounds > 0 then
    redis.call("ZADD", s.tree, unpack(bounds))
    redis.call("ZADD", s.heads, unpack(heads))
    s.leaf_of = {}
  end
  local gone, fields, dues = {}, {}, {}
  for i = size + 1, #sorted do
    if old[sorted[i]] then
      gone[#gone + 1] = sorted[i]
    end
  end
  for i = 1, math.min(size, #sorted) do
    local id = sorted[i]
    if by_id[id] then
      fields[#fields + 1] = id
      fields[#fields + 1] = record_of[id]
      dues[#dues + 1] = ms_of[id]
      dues[#dues + 1] = id
    end
  end
  if #gone > 0 then
    redis.call("HDEL", leaf, unpack(gone))
    redis.call("ZREM", when, unpack(gone))
  end
  if #fields > 0 then
    redis.call("HSET", leaf, unpack(fields))
    redis.call("ZADD", when, unpack(dues))
  end
  far_head_of(s, low)
  return added
end

-- The far job's record, its due ms (a string) and its leaf; nil when it is not far.
local function far_get(due, id)
  local s = far_of(due)
  if s.count <= 0 then
    return nil
  end
  local low = far_leaf_of(s, id)
  if low == nil then
    return nil
  end
  local leaf, when = far_keys(s, low)
  local record = redis.call("HGET", leaf, id)
  if not record then
    return nil
  end
  return record, redis.call("ZSCORE", when, id), low
end

-- Take the far job `id` out of its leaf `low` (where far_get found it).
local function far_drop(s, low, id)
  local leaf, when = far_keys(s, low)
  redis.call("HDEL", leaf, id)
  redis.call("ZREM", when, id)
  far_count(s, -1)
  far_shrink(s, low)
end

-- Take the job out of the far tier: its record and due ms, or nil when it was not there.
local function far_take(due, id)
  local record, score, low = far_get(due, id)
  if not record then
    return nil
  end
  far_drop(far_of(due), low, id)
  return record, score
end

-- Bring a far job into the near tier (`jobs` and `due`), as it would be had it never
-- been far; true when it was far.
local function far_unfar(due, jobs, id)
  local record, score, low = far_get(due, id)
  if not record then
    return false
  end
  redis.call("HSET", jobs, id, record) -- first: a stop in far_drop leaves two copies
  if score then
    redis.call("ZADD", due, score, id)
  end
  far_drop(far_of(due), low, id)
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

-- The far records of `ids` (false where an id is not far), one HMGET a leaf: a bulk
-- schedule's look for the jobs it overwrites.
local function far_records(due, ids)
  local s = far_of(due)
  local out, at = {}, {} -- at: job id -> its positions in `ids`
  for i, id in ipairs(ids) do
    out[i] = false
    at[id] = at[id] or {}
    table.insert(at[id], i)
  end
  if s.count <= 0 or #ids == 0 then
    return out
  end
  local unique = {}
  for i, id in ipairs(ids) do
    if at[id][1] == i then
      unique[#unique + 1] = id
    end
  end
  local groups, scratch = far_group(s, unique)
  for _, group in ipairs(groups) do
    local share = group[2]
    for c = 1, #share, 2000 do -- Lua's unpack takes at most about 8,000 values
      local got = redis.call("HMGET", (far_keys(s, group[1])),
                             unpack(share, c, math.min(c + 1999, #share)))
      for k = 1, #got do
        for _, i in ipairs(at[share[c + k - 1]]) do
          out[i] = got[k]
        end
      end
    end
  end
  if scratch then
    redis.call("DEL", scratch)
  end
  return out
end

-- Put jobs in the far tier (each once; one already far is replaced in place): {id, record,
-- due ms} each, which the caller takes out of the near tier after (on Redis Cluster a stop
-- half-way leaves two copies, not none). A few commands a leaf they fall in, the count once.
local function far_put_many(due, jobs)
  if #jobs == 0 then
    return
  end
  local s = far_of(due)
  local by_id, ids = {}, {}
  for _, job in ipairs(jobs) do
    by_id[job[1]] = job
    ids[#ids + 1] = job[1]
  end
  local heads, added = {}, 0 -- heads: each leaf's earliest of these, for one ZADD LT
  local groups, scratch = far_group(s, ids)
  for _, group in ipairs(groups) do
    local low, share = group[1], group[2]
    if group.new then
      redis.call("ZADD", s.tree, 0, low)
      s.leaf_of = {}
    end
    local leaf, when = far_keys(s, low)
    if redis.call("HLEN", leaf) + #share >= FAR_LEAF_MAX then
      added = added + far_recut(s, group, by_id)
    else
      local fields, dues, earliest = {}, {}, nil
      for _, id in ipairs(share) do
        local job = by_id[id]
        fields[#fields + 1] = id
        fields[#fields + 1] = job[2]
        dues[#dues + 1] = job[3]
        dues[#dues + 1] = id
        if earliest == nil or tonumber(job[3]) < earliest then
          earliest = tonumber(job[3])
        end
      end
      local new = redis.call("HSET", leaf, unpack(fields))
      redis.call("ZADD", when, unpack(dues))
      added = added + new
      if new < #share then
        far_head_of(s, low) -- a job replaced: its due time may have moved later
      else
        heads[#heads + 1] = earliest
        heads[#heads + 1] = low
      end
    end
  end
  for c = 1, #heads, 2000 do -- Lua's unpack takes at most about 8,000 values
    redis.call("ZADD", s.heads, "LT", unpack(heads, c, math.min(c + 1999, #heads)))
  end
  if scratch then
    redis.call("DEL", scratch)
  end
  far_count(s, added)
end

local function far_put(due, id, record, ms)
  far_put_many(due, {{id, record, ms}})
end

-- The earliest due ms of the far tier (a string), or nil when it is empty.
local function far_head(due)
  local s = far_of(due)
  if s.count <= 0 then
    return nil
  end
  return redis.call("ZRANGE", s.heads, 0, 0, "WITHSCORES")[2]
end

-- Move the far jobs due by `upto` into the near tier, at most `most` of them, earliest
-- leaves first; how many moved.
local function far_promote(due, jobs, upto, most)
  local s = far_of(due)
  if s.count <= 0 then
    return 0
  end
  local moved = 0
  for _, low in ipairs(redis.call("ZRANGEBYSCORE", s.heads, "-inf", upto, "LIMIT", 0, most)) do
    if moved >= most then
      break
    end
    local leaf, when = far_keys(s, low)
    local entries = redis.call("ZRANGEBYSCORE", when, "-inf", upto, "WITHSCORES",
                               "LIMIT", 0, most - moved)
    if #entries > 0 then
      local ids, dues = {}, {}
      for i = 1, #entries, 2 do
        ids[#ids + 1] = entries[i]
        dues[#dues + 1] = entries[i + 1]
        dues[#dues + 1] = entries[i]
      end
      local records = redis.call("HMGET", leaf, unpack(ids))
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
      redis.call("HDEL", leaf, unpack(ids))
      redis.call("ZREM", when, unpack(ids))
      far_count(s, -#ids)
      moved = moved + #ids
    end
    far_shrink(s, low)
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
