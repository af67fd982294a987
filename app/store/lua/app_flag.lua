-- app_flag.lua: a pause or resume of an app reaches a partition (app/store/pauses.py):
-- sets or clears the app's flag there, unless a later pause or resume of the app reached
-- it first.
-- KEYS[1] pausedapps HASH app id -> ms the app was paused
-- KEYS[2] pausegen   HASH app id -> the number of the last pause or resume here
-- ARGV[1] the app's id
-- ARGV[2] this pause's or resume's number (INCR of the app's count)
-- ARGV[3] "pause" or "resume"
-- ARGV[4] now, epoch ms (a pause's time)
-- Returns 1: this one holds the partition now (its walk goes on there); 0: a later one
-- does (this one leaves the partition to it).
local app, number = ARGV[1], tonumber(ARGV[2])
if tonumber(redis.call("HGET", KEYS[2], app) or "0") > number then
  return 0
end
redis.call("HSET", KEYS[2], app, ARGV[2])
if ARGV[3] == "pause" then
  redis.call("HSETNX", KEYS[1], app, ARGV[4])
else
  redis.call("HDEL", KEYS[1], app)
end
return 1
