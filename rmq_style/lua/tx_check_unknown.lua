--[[
  tx_check_unknown: end a check lease without a decision; the next check comes later.

  Input:
    KEYS[1] half     rmq:{T:i}:half:G
    KEYS[2] checks   rmq:{T:i}:halfdue:G
    ARGV[1] msg id
    ARGV[2] lease token of the claim
    ARGV[3] ms until the next check
    ARGV[4] 'unknown' (the check counts) | 'defer' (the local transaction still runs: it does not)

  Output:
    1, or 0 when the lease is no longer this token's (expired and taken, or resolved): nothing changed
]]
--@include clock
--@include append
--@include half

local packed = redis.call('HGET', KEYS[1], ARGV[1])
if not packed then
  return 0
end
local rec = rmq_unpack(packed)
if rec[1] ~= 'h' or rec[5] ~= ARGV[2] then
  return 0
end
local now = rmq_now_ms()
if ARGV[4] == 'defer' then
  rec[2] = tonumber(rec[2]) - 1
end
rec[5], rec[6] = '', now
redis.call('HSET', KEYS[1], ARGV[1], rmq_pack(rec))
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
return 1
