--[[
  dead_letter: acknowledge a delivered message and append it, with the reason,
  to the group's dead-letter stream of its queue (one step).

  Input:
    KEYS[1] source   rmq:{T:i}:s or rmq:{T:i}:rs:G   stream the entry was read from
    KEYS[2] dlq      rmq:{T:i}:dlq:G
    ARGV[1] group
    ARGV[2] entry id
    ARGV[3] '1' to delete the entry after the ack (retry stream entries), '0' to keep it
    ARGV[4] msg id
    ARGV[5] packed fields q r b t k p c d o (o = offset in the topic's queue)
    ARGV[6] topic
    ARGV[7] queue id
    ARGV[8] reason

  Output:
    the dead-letter entry id, or 0 when the entry was not pending (nothing written)
]]
--@include clock
--@include append

if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
local f = rmq_unpack(ARGV[5])
local id = redis.call('XADD', KEYS[2], '*',
  'i', ARGV[4], 'q', f[1], 'r', f[2], 'b', f[3], 't', f[4], 'k', f[5], 'p', f[6], 'c', f[7], 'd', f[8],
  'topic', ARGV[6], 'queue', ARGV[7], 'offset', f[9], 'group', ARGV[1], 'reason', ARGV[8],
  'dead_at', rmq_now_ms())
if ARGV[3] == '1' then
  redis.call('XDEL', KEYS[1], ARGV[2])
end
return id
