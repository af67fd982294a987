-- names_page.lua: read ids from the per-app job index of a partition (writes nothing).
-- uses: names_index
-- KEYS[1] nametop  ZSET  the index's leaves by their low bounds (names_index.lua)
-- ARGV[1] low bound, as ZRANGEBYLEX takes it ("[x", "(x" or "-")
-- ARGV[2] high bound ("[x", "(x" or "+")
-- ARGV[3] most ids to return (1 at least)
-- Returns the ids in the bounds, in bytewise order, at most ARGV[3] of them.
return names_range(KEYS[1], ARGV[1], ARGV[2], math.max(1, tonumber(ARGV[3])))
