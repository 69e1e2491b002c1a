--[[
  pull_prepare: before a pull reads a queue, release its due delayed messages and
  report the queue's bounds (so the reader can tell a trimmed offset from a valid one).

  Input:
    KEYS[1] delay    rmq:{T:i}:delay
    KEYS[2] delayed  rmq:{T:i}:delayed
    KEYS[3] stream   rmq:{T:i}:s
    KEYS[4] seq      rmq:{T:i}:seq (exists iff the queue exists)
    KEYS[5] trimmed  rmq:{T:i}:trimmed   entries trimmed before a group read them (maxlen)
    ARGV[1] release at most this many delayed messages
    ARGV[2] trim mode, ARGV[3] trim value (as in send)

  Output:
    {next due ms or -1, server now ms, first retained id or '', last generated id,
     entries added, length}
    error 'NOTOPIC' when the queue does not exist
]]
--@include clock
--@include entry
--@include trim
--@include append
--@include release

if redis.call('EXISTS', KEYS[4]) == 0 then
  return redis.error_reply('NOTOPIC queue does not exist')
end
local _, nxt, now = rmq_release(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3])
if redis.call('EXISTS', KEYS[3]) == 0 then
  return {nxt, now, '', '0-0', 0, 0}
end
local info = redis.call('XINFO', 'STREAM', KEYS[3])
local first, last, added, length = '', '0-0', 0, 0
for i = 1, #info, 2 do
  local name = info[i]
  if name == 'recorded-first-entry-id' then first = info[i + 1]
  elseif name == 'last-generated-id' then last = info[i + 1]
  elseif name == 'entries-added' then added = info[i + 1]
  elseif name == 'length' then length = info[i + 1]
  end
end
if length == 0 then
  first = ''
end
return {nxt, now, first, last, added, length}
