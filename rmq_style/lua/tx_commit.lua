--[[
  tx_commit: make a half message visible in its queue (queue offset taken now), once.

  Input:
    KEYS[1] half     rmq:{T:i}:half:G
    KEYS[2] checks   rmq:{T:i}:halfdue:G
    KEYS[3] dead     rmq:{T:i}:txdead:G   hash msg id -> discarded half record
    KEYS[4] stream   rmq:{T:i}:s
    KEYS[5] seq      rmq:{T:i}:seq
    KEYS[6] trimmed  rmq:{T:i}:trimmed
    ARGV[1] msg id
    ARGV[2] source: 'client' (the producer) | 'check' (a check answered) | 'admin' (an operator)
    ARGV[3] ms to remember the resolution (an answer repeated within it is idempotent)
    ARGV[4] trim mode, ARGV[5] trim value (as in send)
    ARGV[6] the ending instance's id: a lease of its own (a check it defers) does not count

  Output:
    {entry id, queue offset, 'new' | 'again'} ('again': committed before, same entry)
    error 'TXNONE' no such half message (never stored, or resolved and forgotten)
    error 'TXROLLEDBACK' rolled back before
    error 'TXDISCARDED' discarded after its last check (an operator resumes or resolves it)
    error 'TXCHECKED' the client's answer after a check began: the check-back decides
    error 'NOTOPIC' the queue is gone
]]
--@include clock
--@include entry
--@include trim
--@include append
--@include half

local msg_id, source = ARGV[1], ARGV[2]
local packed, from_dead, refused = rmq_half_find(KEYS[1], KEYS[3], msg_id, source)
if refused then
  return refused
end
local rec = rmq_unpack(packed)
if rec[1] == 'c' then
  return {rec[7], tonumber(rec[8]), 'again'}
elseif rec[1] == 'r' then
  return redis.error_reply('TXROLLEDBACK rolled back before')
end
if source == 'client' and rmq_half_checked(rec, ARGV[6]) then
  return redis.error_reply('TXCHECKED checked already: the check-back decides')
end
if redis.call('EXISTS', KEYS[5]) == 0 then
  return redis.error_reply('NOTOPIC queue does not exist')
end
local fields = {rec[7], rec[8], rec[9], rec[10], rec[11], rec[12], rec[13]}
local entry_id, q = rmq_append(KEYS[4], KEYS[5], KEYS[6], msg_id, fields, ARGV[4], ARGV[5])
if from_dead then
  redis.call('HDEL', KEYS[3], msg_id)
end
rmq_half_resolve(KEYS[1], KEYS[2], msg_id, rec, 'c', source, rmq_now_ms(), ARGV[3], entry_id, q)
return {entry_id, q, 'new'}
