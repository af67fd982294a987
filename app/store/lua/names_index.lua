-- names_index.lua: a library, not a script. A script whose header holds the line
-- "-- uses: names_index" runs with it in front (app/store/scripts.py).
--
-- The per-app job index of a partition: job ids (not replays), in bytewise order, so one
-- app's jobs (or one name prefix's) are one range. It is a B-tree of small sorted sets,
-- each small enough for Redis's compact encoding (a listpack: about 26 B an id, where one
-- sorted set of every id, a skiplist, took 119):
--   {base}:nametop          ZSET scored 0: each leaf's low bound ("" for the first leaf)
--   {base}:nameleaf:{low}   ZSET scored 0: the ids from its low bound to the next leaf's
--   {base}:appjobs          HASH app id -> how many of its jobs the index holds
-- Scripts pass the top's key; the others are named from it and share its hash tag, so
-- they are in its slot (Redis Cluster). The leaves' bounds are compared by Redis only:
-- Lua's string order follows the server's locale, Redis's is bytewise.

-- zset-max-listpack-entries (128): a leaf that reaches it splits in two at once, as one
-- past it becomes a skiplist and stays one (Redis does not convert back when it shrinks).
-- An id longer than zset-max-listpack-value (64 bytes) makes its leaf a skiplist too.
local NAMES_LEAF_MAX = 128
local NAMES_LEAF_MIN = 32 -- a leaf below it joins the one before, when both then fit

-- The partition's part of the top's key: the other keys of the index are named from it.
local function names_base(top)
  return string.sub(top, 1, #top - #":nametop")
end

local function names_keys(top)
  local base = names_base(top)
  return base .. ":nameleaf:", base .. ":appjobs"
end

-- The index as versions before the B-tree kept it (`names`: one sorted set of every id),
-- until ensure_indexed has moved it into the tree and deleted it: until then it is kept
-- up to date beside the tree and read instead of it, as it is whole and the tree is not
-- yet (false once it is gone). Looked up once a script (none of them deletes it).
local names_legacy_of = {}
local function names_legacy(top)
  if names_legacy_of[top] == nil then
    local legacy = names_base(top) .. ":names"
    names_legacy_of[top] = redis.call("EXISTS", legacy) == 1 and legacy
  end
  return names_legacy_of[top]
end

-- ZADD of ids[from] to ids[to] (all of them by default), each scored 0, in commands of
-- at most 2,000 (Lua's unpack takes at most about 8,000 values); how many were new.
local function names_zadd(key, ids, from, to)
  local added = 0
  from, to = from or 1, to or #ids
  for c = from, to, 2000 do
    local args = {}
    for i = c, math.min(c + 1999, to) do
      args[#args + 1] = 0
      args[#args + 1] = ids[i]
    end
    added = added + redis.call("ZADD", key, unpack(args))
  end
  return added
end

-- The partition's scratch sorted set holding `ids` (each once), for Redis to sort them in
-- bytewise order; the caller empties or deletes it before its script ends.
local function names_scratch(top, ids)
  local scratch = names_base(top) .. ":namescratch"
  redis.call("DEL", scratch) -- left by a script that failed half-way
  names_zadd(scratch, ids)
  return scratch
end

-- The low bound of the leaf that holds `id` or would; nil when the index is empty.
local function names_leaf_of(top, id)
  return redis.call("ZREVRANGEBYLEX", top, "[" .. id, "-", "LIMIT", 0, 1)[1]
end

local function names_app_of(id)
  return string.match(id, "^[^/]*")
end

-- How many jobs the app `app` holds in the index.
local function names_count(top, app)
  local legacy = names_legacy(top)
  if legacy then
    return redis.call("ZLEXCOUNT", legacy, "[" .. app .. "/", "(" .. app .. "/\255")
  end
  local _, counts = names_keys(top)
  return tonumber(redis.call("HGET", counts, app) or "0")
end

-- ZADD's or ZREM's `command` of `ids` on the legacy index, while there is one.
local function names_on_legacy(top, command, ids)
  local legacy = names_legacy(top)
  if legacy then
    if command == "ZADD" then
      names_zadd(legacy, ids)
    else
      for c = 1, #ids, 2000 do -- Lua's unpack takes at most about 8,000 values
        redis.call("ZREM", legacy, unpack(ids, c, math.min(c + 1999, #ids)))
      end
    end
  end
end

-- A leaf's key written again, when it is a skiplist that need not be (a long id that made
-- it one has gone, or a leaf that reached NAMES_LEAF_MAX as one splits): a new key is a
-- listpack when its ids allow, where an old one stays a skiplist once it is one.
local function names_rewrite(key)
  if redis.call("OBJECT", "ENCODING", key) == "skiplist" then
    local members = redis.call("ZRANGE", key, 0, -1)
    redis.call("DEL", key)
    names_zadd(key, members)
  end
end

-- The leaf `low` after additions: one that reached NAMES_LEAF_MAX splits in two halves;
-- one past it (a batch's share) is written again as even leaves of at most half as many,
-- as a new key is a listpack again where one past the bound, a skiplist, stays one. The
-- first keeps its bound, each other is named by its first id.
local function names_split(top, low)
  local leaves = names_keys(top)
  local size = redis.call("ZCARD", leaves .. low)
  if size < NAMES_LEAF_MAX then
    return
  end
  local half = NAMES_LEAF_MAX / 2
  if size == NAMES_LEAF_MAX and redis.call("OBJECT", "ENCODING", leaves .. low) ~= "skiplist" then
    -- still a listpack: its upper half moves, the rest stays
    local upper = redis.call("ZRANGE", leaves .. low, half, -1)
    names_zadd(leaves .. upper[1], upper)
    redis.call("ZREMRANGEBYRANK", leaves .. low, half, -1)
    redis.call("ZADD", top, 0, upper[1])
    return
  end
  local all = redis.call("ZRANGE", leaves .. low, 0, -1)
  redis.call("DEL", leaves .. low)
  local bounds = {}
  local piece = math.ceil(#all / math.ceil(#all / half)) -- even pieces, at most `half`
  for c = 1, #all, piece do
    local bound = low
    if c > 1 then
      bound = all[c]
      bounds[#bounds + 1] = bound
    end
    names_zadd(leaves .. bound, all, c, math.min(c + piece - 1, #all))
  end
  names_zadd(top, bounds)
end

-- Adds `id`; 1 when it was not there, else 0.
local function names_add(top, id)
  local leaves, counts = names_keys(top)
  local low = names_leaf_of(top, id)
  if low == nil then
    low = ""
    redis.call("ZADD", top, 0, low)
  end
  names_on_legacy(top, "ZADD", {id})
  if redis.call("ZADD", leaves .. low, 0, id) == 0 then
    return 0
  end
  redis.call("HINCRBY", counts, names_app_of(id), 1)
  names_split(top, low)
  return 1
end

-- Adds `ids`, all of one app; returns how many were not there. Redis sorts them (in a
-- scratch sorted set of this partition, gone before the script ends), so each leaf they
-- go to takes its share in one command: a few commands a leaf, none an id.
local function names_add_many(top, ids)
  if #ids == 0 then
    return 0
  end
  local leaves, counts = names_keys(top)
  names_on_legacy(top, "ZADD", ids)
  local scratch = names_scratch(top, ids)
  if redis.call("EXISTS", top) == 0 then
    redis.call("ZADD", top, 0, "")
  end
  local added = 0
  while true do
    local first = redis.call("ZRANGE", scratch, 0, 0)[1]
    if first == nil then
      break
    end
    local low = names_leaf_of(top, first)
    local after = redis.call("ZRANGEBYLEX", top, "(" .. low, "+", "LIMIT", 0, 1)[1]
    local below = after and "(" .. after or "+" -- the ids that go to this leaf
    local share = redis.call("ZRANGEBYLEX", scratch, "-", below)
    redis.call("ZREMRANGEBYLEX", scratch, "-", below)
    added = added + names_zadd(leaves .. low, share)
    names_split(top, low)
  end
  if added > 0 then
    redis.call("HINCRBY", counts, names_app_of(ids[1]), added)
  end
  return added
end

-- The leaf `low` after removals: dropped when empty (the first leaf stays while others
-- do), joined to the one before when under NAMES_LEAF_MIN and both fit in one; written
-- again when `long`, an id longer than a listpack's may have left it. True when it went.
local function names_settle(top, low, long)
  local leaves = names_keys(top)
  if long then
    names_rewrite(leaves .. low)
  end
  local size = redis.call("ZCARD", leaves .. low)
  if low == "" then
    if size == 0 and redis.call("ZCARD", top) == 1 then
      redis.call("DEL", top)
    end
  elseif size == 0 then
    redis.call("ZREM", top, low)
    return true
  elseif size < NAMES_LEAF_MIN then
    local before = redis.call("ZREVRANGEBYLEX", top, "(" .. low, "-", "LIMIT", 0, 1)[1]
    if redis.call("ZCARD", leaves .. before) + size <= NAMES_LEAF_MAX - NAMES_LEAF_MIN then
      names_zadd(leaves .. before, redis.call("ZRANGE", leaves .. low, 0, -1))
      redis.call("DEL", leaves .. low)
      redis.call("ZREM", top, low)
      return true
    end
  end
  return false
end

-- Removes each of `ids` that is there; returns how many were. Redis sorts them (in the
-- scratch sorted set, gone before the script ends, which also takes each id once), and
-- each leaf they fall in takes its share in a few commands, however many and in whatever
-- order they come: its bounds looked up, its share counted (ZLEXCOUNT), found (ZMSCORE)
-- and removed (ZREM). Each leaf is settled once, after.
local function names_remove(top, ids)
  local leaves, counts = names_keys(top)
  local tally, touched, removed = {}, {}, 0 -- tally: app id -> ids removed
  names_on_legacy(top, "ZREM", ids)
  if #ids == 0 then
    return 0
  end
  local scratch = names_scratch(top, ids)
  local sorted = redis.call("ZRANGE", scratch, 0, -1)
  local i = 1
  while i <= #sorted do
    local low = names_leaf_of(top, sorted[i])
    if low == nil then
      break -- an empty index
    end
    local after = redis.call("ZRANGEBYLEX", top, "(" .. sorted[i], "+", "LIMIT", 0, 1)[1]
    local last = #sorted -- the leaf's share: sorted[i..last]
    if after ~= nil then
      last = redis.call("ZLEXCOUNT", scratch, "-", "(" .. after)
    end
    for c = i, last, 2000 do -- Lua's unpack takes at most about 8,000 values
      local share = {unpack(sorted, c, math.min(c + 1999, last))}
      local there = redis.call("ZMSCORE", leaves .. low, unpack(share))
      local hits = {}
      for k, id in ipairs(share) do
        if there[k] then
          hits[#hits + 1] = id
          touched[low] = touched[low] or #id > 64 -- zset-max-listpack-value
          local app = names_app_of(id)
          tally[app] = (tally[app] or 0) + 1
        end
      end
      if #hits > 0 then
        removed = removed + redis.call("ZREM", leaves .. low, unpack(hits))
      end
    end
    i = last + 1
  end
  redis.call("DEL", scratch)
  for app, n in pairs(tally) do -- one command an app
    if redis.call("HINCRBY", counts, app, -n) <= 0 then
      redis.call("HDEL", counts, app)
    end
  end
  local dropped = false -- a leaf went: the first may now be the only one
  for leaf, long in pairs(touched) do
    if leaf ~= "" then
      dropped = names_settle(top, leaf, long) or dropped
    end
  end
  if touched[""] ~= nil or dropped then -- last: the index goes once its only leaf is empty
    names_settle(top, "", touched[""])
  end
  return removed
end

-- At most `count` ids within the ZRANGEBYLEX bounds `low` and `high` ("[x", "(x", "-",
-- "+"), in order: the leaf that holds `low`, then the next ones up to `high`. Every leaf
-- but the first holds an id, so this reads at most count + 2 leaves.
local function names_range(top, low, high, count)
  local legacy = names_legacy(top)
  if legacy then
    return redis.call("ZRANGEBYLEX", legacy, low, high, "LIMIT", 0, count)
  end
  local leaves = names_keys(top)
  local out = {}
  local at
  if low == "-" then
    at = redis.call("ZRANGE", top, 0, 0)[1]
  else
    at = names_leaf_of(top, string.sub(low, 2))
  end
  while at ~= nil and #out < count do
    local found = redis.call("ZRANGEBYLEX", leaves .. at, low, high, "LIMIT", 0, count - #out)
    for _, id in ipairs(found) do
      out[#out + 1] = id
    end
    if #out < count then
      at = redis.call("ZRANGEBYLEX", top, "(" .. at, high, "LIMIT", 0, 1)[1]
    end
  end
  return out
end
