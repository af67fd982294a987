-- names_read.lua: read the per-app job index of a partition (writes nothing).
-- uses: names_index
-- KEYS[1] nametop  ZSET  the index's leaves by their low bounds (names_index.lua)
-- ARGV[1] "range": the ids within ARGV[2] and ARGV[3], at most ARGV[4] of them, in
--         bytewise order; "count": how many jobs the app ARGV[2] holds
-- ARGV[2] low bound, as ZRANGEBYLEX takes it ("[x", "(x" or "-"); or the app id
-- ARGV[3] high bound ("[x", "(x" or "+")
-- ARGV[4] most ids to return (1 at least)
if ARGV[1] == "count" then
  return names_count(KEYS[1], ARGV[2])
end
return names_range(KEYS[1], ARGV[2], ARGV[3], math.max(1, tonumber(ARGV[4])))
