--[[
  bcast_retry: a message delivered to a broadcasting member failed; hold it for that
  member's own retry at due time (the member's records on the queue's slot).

  Input:
    KEYS[1] source   rmq:{T:i}:s or rmq:{T:i}:brs:G:M  stream the entry was read from
    KEYS[2] retry    rmq:{T:i}:bretry:G:M     zset msg id -> due ms (server clock)
    KEYS[3] body     rmq:{T:i}:bretrymsg:G:M  hash msg id -> packed q r b t k p c d o
    ARGV[1] entry id
    ARGV[2] '1' for an entry of the member's retry stream (deleted after), '0' for the queue's
    ARGV[3] msg id
    ARGV[4] delay in ms
    ARGV[5] packed fields q r b t k p c d o (r already incremented, o = origin offset)

  Output:
    due time in ms, or 0 when the retry stream entry is gone (settled already: nothing written)
]]
--@include clock

-- a queue entry has no pending list for a member: its position moves past it only once this
-- reply came back, so writing the record again (a restart re-read it) only replaces it
if ARGV[2] == '1' and #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then
  return 0
end
local due = rmq_now_ms() + tonumber(ARGV[4])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[5])  -- the body before the due time: no due id without one
redis.call('ZADD', KEYS[2], due, ARGV[3])
if ARGV[2] == '1' then
  redis.call('XDEL', KEYS[1], ARGV[1])  -- the writes first: a failed one leaves the entry in place
end
return due
