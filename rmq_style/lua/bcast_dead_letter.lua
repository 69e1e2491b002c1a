--[[
  bcast_dead_letter: a broadcasting member gives up on a message; append it, with the
  reason and the member's instance name, to the group's dead-letter stream of its queue.

  Input:
    KEYS[1] source   rmq:{T:i}:s or rmq:{T:i}:brs:G:M  stream the entry was read from
    KEYS[2] dlq      rmq:{T:i}:dlq:G
    ARGV[1] group
    ARGV[2] entry id
    ARGV[3] '1' for an entry of the member's retry stream (deleted after), '0' for the queue's
    ARGV[4] msg id
    ARGV[5] packed fields q r b t k p c d o (o = offset in the topic's queue)
    ARGV[6] topic
    ARGV[7] queue id
    ARGV[8] reason
    ARGV[9] the member's instance name

  Output:
    the dead-letter entry id, or 0 when the retry stream entry is gone (nothing written)
]]
--@include clock
--@include append

if ARGV[3] == '1' and #redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2]) == 0 then
  return 0
end
local f = rmq_unpack(ARGV[5])
local id = redis.call('XADD', KEYS[2], '*',
  'i', ARGV[4], 'q', f[1], 'r', f[2], 'b', f[3], 't', f[4], 'k', f[5], 'p', f[6], 'c', f[7], 'd', f[8],
  'topic', ARGV[6], 'queue', ARGV[7], 'offset', f[9], 'group', ARGV[1], 'reason', ARGV[8],
  'dead_at', rmq_now_ms(), 'member', ARGV[9])
if ARGV[3] == '1' then
  redis.call('XDEL', KEYS[1], ARGV[2])  -- the write first: a failed XADD leaves the entry in place
end
return id
