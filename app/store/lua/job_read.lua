-- job_read.lua: jobs' records and due times, from whichever tier holds each (far.lua).
-- Writes nothing, but once: the far tier's first version's jobs, moved near (far_open).
-- uses: far
-- KEYS[1] due   ZSET  job id -> ms the job next needs a worker
-- KEYS[2] jobs  HASH  job id -> job record
-- ARGV[1] what to read of each job: "r" its record, "d" its due ms, "rd" both, "l" its
--         record's length (HSTRLEN), "ld" its length and due ms
-- ARGV[2..] job ids, all of this partition
-- Returns, per job in order, what ARGV[1] asks (false where it has none: no such job,
-- or a job out of the due index), one entry per letter.
far_open(KEYS[1]) -- before anything is read (far.lua: the first version's jobs)
local what = ARGV[1]
local want_length = string.find(what, "l", 1, true) ~= nil
local want_record = want_length or string.find(what, "r", 1, true) ~= nil
local want_due = string.find(what, "d", 1, true) ~= nil
local ids = {}
for i = 2, #ARGV do
  ids[#ids + 1] = ARGV[i]
end
local out = {}
if #ids == 0 then
  return out
end
local records, dues = {}, {}
for c = 1, #ids, 2000 do -- Lua's unpack takes at most about 8,000 values
  local chunk = {unpack(ids, c, math.min(c + 1999, #ids))}
  for k, record in ipairs(redis.call("HMGET", KEYS[2], unpack(chunk))) do
    records[c + k - 1] = record
  end
  if want_due then
    for k, due in ipairs(redis.call("ZMSCORE", KEYS[1], unpack(chunk))) do
      dues[c + k - 1] = due
    end
  end
end
for i, id in ipairs(ids) do
  local record, due = records[i], dues[i]
  if not record then
    local far_record, far_due = far_get(KEYS[1], id)
    if far_record then
      record, due = far_record, far_due
    end
  end
  if want_length then
    out[#out + 1] = record and #record or false
  elseif want_record then
    out[#out + 1] = record
  end
  if want_due then
    out[#out + 1] = due or false
  end
end
return out
