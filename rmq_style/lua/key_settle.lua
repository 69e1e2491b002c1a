--[[
  key_settle: the lease holder of a key-ordered queue acknowledges entries
  handled (in any order: the group's pending entries are what is not finished)
  and records the failed attempts of a message that holds its key, so a new
  owner goes on counting. Fenced: refused when the caller does not hold the lease.

  Input:
    KEYS[1] stream   rmq:{T:i}:s
    KEYS[2] lock     rmq:{T:i}:lock:G     string "member/token"
    KEYS[3] retry    rmq:{T:i}:rs:G       its entries are deleted once acknowledged
    KEYS[4] kheld    rmq:{T:i}:kheld:G    hash entry id -> failed attempts ('r' + id for the retry stream)
    ARGV[1] group
    ARGV[2] the caller's lock value
    ARGV[3] field of a message holding its key ('' for none): its entry id, 'r' + id for the retry stream
    ARGV[4] its failed attempts so far
    ARGV[5] n: how many of the ids below are of the queue's stream
    ARGV[6 .. 5+n] entry ids of the stream to acknowledge
    ARGV[6+n ...] entry ids of the retry stream to acknowledge (and delete)

  Output:
    number of entries acknowledged; error FENCED when the caller does not hold the lease
]]
--@include lease

local fenced = rmq_check_lease(KEYS[2], ARGV[2])
if fenced then
  return fenced
end
local n = tonumber(ARGV[5])
local acked = 0
local ids, fields, retry = {}, {}, {}
for i = 6, 5 + n do
  ids[#ids + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i]
end
for i = 6 + n, #ARGV do
  retry[#retry + 1] = ARGV[i]
  fields[#fields + 1] = 'r' .. ARGV[i]
end
if #ids > 0 then
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
end
if #retry > 0 then
  acked = acked + redis.call('XACK', KEYS[3], ARGV[1], unpack(retry))
  redis.call('XDEL', KEYS[3], unpack(retry))
end
-- kheld is only a count of attempts: when it is not a hash (written by someone else), do without
if #fields > 0 then
  redis.pcall('HDEL', KEYS[4], unpack(fields))
end
if ARGV[3] ~= '' then
  redis.pcall('HSET', KEYS[4], ARGV[3], ARGV[4])
end
return acked
