--[[
  tx_resume: give a discarded half message back to the check-back, with its check count at 0.

  Input:
    KEYS[1] half     rmq:{T:i}:half:G
    KEYS[2] checks   rmq:{T:i}:halfdue:G
    KEYS[3] dead     rmq:{T:i}:txdead:G
    ARGV[1] msg id

  Output:
    1
    error 'TXNONE' when no discarded half message has this id
]]
--@include clock
--@include append
--@include half

local packed = redis.call('HGET', KEYS[3], ARGV[1])
if not packed then
  return redis.error_reply('TXNONE no discarded half message with this id')
end
local rec = rmq_unpack(packed)
local now = rmq_now_ms()
rec[1], rec[2], rec[5], rec[6] = 'h', 0, '', now
redis.call('HSET', KEYS[1], ARGV[1], rmq_pack(rec))
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
