-- reindex.lua: one step of putting data stored before the per-app indexes existed (or
-- before the job index was a B-tree) into them (once per partition:
-- store.Store.ensure_indexed).
-- uses: names_index
-- KEYS[1] jobs     HASH  job id -> job record
-- KEYS[2] nametop  ZSET  the per-app job index (names_index.lua)
-- KEYS[3] deadidx  ZSET  dead-letter id -> ms it was dead-lettered
-- KEYS[4] deadlex  ZSET  "{app}/{ms, 13 digits}/{dead-letter id}": the per-app index
-- ARGV[1] "jobs": walk the jobs hash with HSCAN from cursor ARGV[2];
--         "dead": walk deadidx by rank from ARGV[2]
-- ARGV[2] where this step starts
-- ARGV[3] how many entries one step looks at (a bound on the time Redis is held)
-- Only what is stored at this step is indexed, and the records are never read or
-- returned. Returns where the next step starts: "0" when the walk is done.
redis.replicate_commands() -- Redis 6: HSCAN is not deterministic, so replicate effects
local step = tonumber(ARGV[3])
if ARGV[1] == "jobs" then
  local scanned = redis.call("HSCAN", KEYS[1], ARGV[2], "COUNT", step)
  local fields = scanned[2]
  for i = 1, #fields, 2 do
    if not string.find(fields[i], "\31", 1, true) then -- a replay is not listed
      names_add(KEYS[2], fields[i])
    end
  end
  return scanned[1]
end
local start = tonumber(ARGV[2])
local letters = redis.call("ZRANGE", KEYS[3], start, start + step - 1, "WITHSCORES")
for i = 1, #letters, 2 do
  local id = letters[i]
  redis.call("ZADD", KEYS[4], 0, string.match(id, "^[^/]*") .. "/"
    .. string.format("%013d", tonumber(letters[i + 1])) .. "/" .. id)
end
if #letters < 2 * step then
  return "0"
end
return tostring(start + step)
