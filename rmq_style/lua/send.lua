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
-- one INCRBY reserves the queue offsets of the whole batch (consecutive, in order)
local n = tonumber(ARGV[3])
local first = redis.call('INCRBY', KEYS[2], n) - n
local mode, value = ARGV[1], ARGV[2]
local out = {}
for k = 0, n - 1 do
  local base = 4 + 8 * k
  local seq = first + k
  out[2 * k + 1] = rmq_xadd(KEYS[1], mode, value, ARGV[base], seq, ARGV[base + 1], ARGV[base + 2],
    ARGV[base + 3], ARGV[base + 4], ARGV[base + 5], ARGV[base + 6], ARGV[base + 7])
  out[2 * k + 2] = seq
  rmq_trim(KEYS[1], mode, value, seq + 1)
end
return out
