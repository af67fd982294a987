-- apps_cas.lua: change app registrations only where they are still as they were read,
-- so that one renewed meanwhile by its API process is left alone.
-- KEYS[1] apps  HASH  app id -> app registration (JSON)
-- ARGV    triples: app id, the registration as read, the new one ("": remove it)
-- Returns the app ids whose registrations were changed.
local changed = {}
for i = 1, #ARGV, 3 do
  if redis.call("HGET", KEYS[1], ARGV[i]) == ARGV[i + 1] then
    if ARGV[i + 2] == "" then
      redis.call("HDEL", KEYS[1], ARGV[i])
    else
      redis.call("HSET", KEYS[1], ARGV[i], ARGV[i + 2])
    end
    changed[#changed + 1] = ARGV[i]
  end
end
return changed
