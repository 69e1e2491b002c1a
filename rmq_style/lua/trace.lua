--[[
  trace: append message trace records to one queue's trace stream (docs/storage.md, "Message trace").
  One call per queue and round: the records of a settle round or a send cost one reply, not one each.

  Input:
    KEYS[1] trace    rmq:{T:i}:trace       stream of trace records
    ARGV[1] cap: the stream is trimmed with MAXLEN ~ cap
    ARGV[2..] nine values per record: i e g h a s d o x

  Output:
    the number of records written
]]
local n = 0
for k = 2, #ARGV - 8, 9 do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'i', ARGV[k], 'e', ARGV[k + 1], 'g', ARGV[k + 2],
    'h', ARGV[k + 3], 'a', ARGV[k + 4], 's', ARGV[k + 5], 'd', ARGV[k + 6], 'o', ARGV[k + 7], 'x', ARGV[k + 8])
  n = n + 1
end
return n
