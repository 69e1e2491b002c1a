--[[
  send: append messages to one queue.

  Input:
    KEYS[1] stream   rmq:{T:i}:s
    KEYS[2] seq      rmq:{T:i}:seq (exists iff the queue exists)
    ARGV[1] trim mode: '' | 'maxlen' | 'minid'
    ARGV[2] trim value: max entries (maxlen) or max age in ms (minid)
    ARGV[3] n, the number of messages
    ARGV[4 + 8k .. 11 + 8k] message k: msg id, r, b, t, k, p, c, d

  Output:
    {id_1, queue_offset_1, ..., id_n, queue_offset_n}
    error 'NOTOPIC' when the queue does not exist (nothing written)
]]
--@include clock
--@include trim
--@include append

if redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.error_reply('NOTOPIC queue does not exist')
end
local out = {}
local n = tonumber(ARGV[3])
for k = 0, n - 1 do
  local base = 4 + 8 * k
  local fields = {}
  for f = 1, 7 do
    fields[f] = ARGV[base + f]
  end
  local id, seq = rmq_append(KEYS[1], KEYS[2], ARGV[base], fields, ARGV[1], ARGV[2])
  out[#out + 1] = id
  out[#out + 1] = seq
end
return out
