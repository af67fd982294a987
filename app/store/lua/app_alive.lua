-- app_alive.lua: mark an app live for its API process, unless a live API process with
-- another binding (a digest of its tokens) holds the mark.
-- KEYS[1] alive  STRING  the binding of the app's live API processes ("1": no token)
-- ARGV[1] this process's binding
-- ARGV[2] milliseconds the mark lives without renewal; "0": for good
-- Returns "" when marked (or renewed), else the binding that holds the mark.
local held = redis.call("GET", KEYS[1])
if held and held ~= ARGV[1] then
  return held
end
if ARGV[2] == "0" then
  redis.call("SET", KEYS[1], ARGV[1])
else
  redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
end
return ""
