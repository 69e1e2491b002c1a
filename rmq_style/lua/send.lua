--[[
  send: append messages to one queue.

  Input:
    KEYS[1] stream   rmq:{T:i}:s
    KEYS[2] seq      rmq:{T:i}:seq (exists iff the queue exists)
    KEYS[3] trimmed  rmq:{T:i}:trimmed   entries trimmed before a group read them (maxlen)
    ARGV[1] trim mode: '' | 'maxlen' | 'minid'
    ARGV[2] trim value: max entries (maxlen) or max age in ms (minid)
    ARGV[3] n, the number of messages
    ARGV[4 + 8k .. 11 + 8k] message k: msg id, r, b, t, k, p, c, d

  Output:
    {queue_offset_1, id_1, ..., id_n}: the queue offsets are consecutive, the
    first one comes first, then the entry ids in message order
    error 'NOTOPIC' when the queue does not exist (nothing written)
    Redis' error when an XADD is refused (e.g. NOPERM): the queue offset counter is
    given back, so the offsets stay consecutive (nothing written unless the refusal
    came in the middle of a batch)
]]
--@include clock
--@include entry
--@include trim

if redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.error_reply('NOTOPIC queue does not exist')
end
-- one INCRBY reserves the queue offsets of the whole batch (consecutive, in order)
local n = tonumber(ARGV[3])
local first = redis.call('INCRBY', KEYS[2], n) - n
local stream, mode, value = KEYS[1], ARGV[1], ARGV[2]
local out = {first}
-- The entry fields of docs/storage.md, always in this order. The XADD is written
-- out here (not rmq_xadd of append.lua): this loop is the hot path of every producer.
for k = 0, n - 1 do
  local a = 8 * k
  local id = redis.pcall('XADD', stream, '*', 'i', ARGV[a + 4], 'q', first + k,
    'r', ARGV[a + 5], 'b', ARGV[a + 6], 't', ARGV[a + 7], 'k', ARGV[a + 8], 'p', ARGV[a + 9],
    'c', ARGV[a + 10], 'd', ARGV[a + 11])
  if type(id) == 'table' then
    -- refused (an ACL without XADD, ...): a script is not rolled back, so give the
    -- unused queue offsets back, or the queue would have a gap
    redis.call('DECRBY', KEYS[2], n - k)
    return redis.error_reply(tostring(id.err))  -- fakeredis hands the text over as userdata
  end
  out[k + 2] = id
end
-- retention runs when the queue offset crosses a multiple of 128 (rmq_trim)
local crossed = (first + n) - (first + n) % 128
if crossed > first then
  rmq_trim(stream, mode, value, crossed, KEYS[3])
end
return out
