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
--@include trace

local n = 0
for k = 3, #ARGV - 8, 9 do
  rmq_trace_add(KEYS[1], ARGV[1], ARGV[k], ARGV[k + 1], ARGV[k + 2], ARGV[k + 3], ARGV[k + 4], ARGV[k + 5],
    ARGV[k + 6], ARGV[k + 7], ARGV[k + 8])
  n = n + 1
end
rmq_trace_trim(KEYS[1], ARGV[2])
return n
