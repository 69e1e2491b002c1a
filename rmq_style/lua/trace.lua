--[[
  trace: append message trace records to one queue's trace stream (docs/storage.md, "Message trace").
  One call per queue and round: the records of a settle round or a send cost one reply, not one each.

  Input:
    KEYS[1] trace    rmq:{T:i}:trace       stream of trace records
    ARGV[1] cap: the stream is trimmed with MAXLEN ~ cap at each record
    ARGV[2] max age ms: then trimmed with MINID ~ (server time - max age) once; 0: no age bound
    ARGV[3..] nine values per record: i e g h a s d o x

  Output:
    the number of records written
]]
--@include clock

local n = 0
for k = 3, #ARGV - 8, 9 do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'i', ARGV[k], 'e', ARGV[k + 1], 'g', ARGV[k + 2],
    'h', ARGV[k + 3], 'a', ARGV[k + 4], 's', ARGV[k + 5], 'd', ARGV[k + 6], 'o', ARGV[k + 7], 'x', ARGV[k + 8])
  n = n + 1
end
local age = tonumber(ARGV[2])
if age and age > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', math.max(rmq_now_ms() - age, 0))
end
return n
