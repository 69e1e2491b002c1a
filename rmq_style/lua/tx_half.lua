--[[
  tx_half: store a half message of a producer group; no consumer sees it until a commit.

  Input:
    KEYS[1] half     rmq:{T:i}:half:G     hash msg id -> half record
    KEYS[2] checks   rmq:{T:i}:halfdue:G  zset msg id -> next check (server ms)
    KEYS[3] seq      rmq:{T:i}:seq        (exists iff the queue exists)
    ARGV[1] msg id
    ARGV[2] packed entry fields r b t k p c d
    ARGV[3] immunity ms: the first check comes this long after the store

  Output:
    {server ms of the store, 'new' | 'again'} ('again': a retried store; the first one stands)
    error 'NOTOPIC' when the queue does not exist (nothing written)
]]
--@include clock
--@include append
--@include half

if redis.call('EXISTS', KEYS[3]) == 0 then
  return redis.error_reply('NOTOPIC queue does not exist')
end
local now = rmq_now_ms()
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if stored then
  return {tonumber(rmq_unpack(stored)[4]), 'again'}
end
redis.call('HSET', KEYS[1], ARGV[1], rmq_pack({'h', 0, ARGV[3], now, '', now}) .. ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
return {now, 'new'}
