-- purge.lua: delete dead letters for good, with their index entries.
-- KEYS[1] dead     HASH  dead-letter id -> dead-letter record
-- KEYS[2] deadidx  ZSET  dead-letter id -> ms it was dead-lettered
-- KEYS[3] deadlex  ZSET  "{app}/{ms, 13 digits}/{dead-letter id}": the per-app index
-- ARGV[1..n] dead-letter ids, all of one partition
-- Returns how many of them existed.
local n = 0
for i = 1, #ARGV do
  n = n + redis.call("HDEL", KEYS[1], ARGV[i])
  local ms = redis.call("ZSCORE", KEYS[2], ARGV[i])
  if ms then
    -- app/store/keys.py dead_member: the app is the letter id's text before '/'.
    redis.call("ZREM", KEYS[3], string.match(ARGV[i], "^[^/]*") .. "/"
      .. string.format("%013d", tonumber(ms)) .. "/" .. ARGV[i])
    redis.call("ZREM", KEYS[2], ARGV[i])
  end
end
return n
