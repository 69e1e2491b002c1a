--[[
  schedule: hold delayed messages of one queue until they are due.

  Input:
    KEYS[1] delay    rmq:{T:i}:delay    zset msg id -> due ms (server clock)
    KEYS[2] delayed  rmq:{T:i}:delayed  hash msg id -> packed fields
    KEYS[3] seq      rmq:{T:i}:seq      (exists iff the queue exists)
    ARGV[1] delay in ms, relative to the server clock (0 with an absolute time)
    ARGV[2] absolute due time in epoch ms (0 with a relative delay)
    ARGV[3] n, the number of messages
    ARGV[4 + 2k], ARGV[5 + 2k] message k: msg id, packed fields (r b t k p c d)

  Output:
    due time in ms (server clock)
    error 'NOTOPIC' when the queue does not exist (nothing written)
]]
--@include clock

if redis.call('EXISTS', KEYS[3]) == 0 then
  return redis.error_reply('NOTOPIC queue does not exist')
end
local due = tonumber(ARGV[2])
if due == 0 then
  due = rmq_now_ms() + tonumber(ARGV[1])
end
for k = 0, tonumber(ARGV[3]) - 1 do
  redis.call('ZADD', KEYS[1], due, ARGV[4 + 2 * k])
  redis.call('HSET', KEYS[2], ARGV[4 + 2 * k], ARGV[5 + 2 * k])
end
return due
