--[[
  dlq_replay: hand one dead letter back to its group: append it to the group's retry
  stream of its queue with reconsume times 0 and the same msg id, and remove it from
  the dead-letter queue (one step: replayed once, never lost).

  Input:
    KEYS[1] dlq      rmq:{T:i}:dlq:G
    KEYS[2] retry    rmq:{T:i}:rs:G   the group reads it like the queue (an orderly group's
                                      lease holder: before the queue's next new entry)
    ARGV[1] the dead letter's entry id

  Output:
    the new entry id in the retry stream, or 0 when no such dead letter exists
]]

local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then
  return 0
end
local fields = found[1][2]
local f = {}
for i = 1, #fields, 2 do
  f[fields[i]] = fields[i + 1]
end
local id = redis.call('XADD', KEYS[2], '*', 'i', f['i'], 'q', f['q'], 'r', '0', 'b', f['b'], 't', f['t'],
  'k', f['k'], 'p', f['p'], 'c', f['c'], 'd', f['d'], 'o', f['offset'])
redis.call('XDEL', KEYS[1], ARGV[1])
return id
