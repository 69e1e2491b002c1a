--[[
  retry: a delivered message failed; acknowledge it and hold it for the group's
  retry at due time (one step: a crash gives a duplicate, never a loss).

  Input:
    KEYS[1] source   rmq:{T:i}:s or rmq:{T:i}:rs:G   stream the entry was read from
    KEYS[2] retry    rmq:{T:i}:retry:G     zset msg id -> due ms (server clock)
    KEYS[3] body     rmq:{T:i}:retrymsg:G  hash msg id -> packed q r b t k p c d o
    ARGV[1] group
    ARGV[2] entry id
    ARGV[3] '1' to delete the entry after the ack (retry stream entries), '0' to keep it
    ARGV[4] msg id
    ARGV[5] delay in ms
    ARGV[6] packed fields q r b t k p c d o (r already incremented, o = origin offset)

  Output:
    due time in ms, or 0 when the entry was not pending (handled elsewhere: nothing written)
]]
--@include clock

-- the writes first, the ack last: a write that fails (a key of the wrong type, written by
-- someone else) aborts the script with the entry still pending, never acknowledged and lost
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1) == 0 then
  return 0
end
local due = rmq_now_ms() + tonumber(ARGV[5])
redis.call('HSET', KEYS[3], ARGV[4], ARGV[6])  -- the body before the due time: no due id without one
redis.call('ZADD', KEYS[2], due, ARGV[4])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == '1' then
  redis.call('XDEL', KEYS[1], ARGV[2])
end
return due
