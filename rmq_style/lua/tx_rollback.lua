--[[
  tx_rollback: drop a half message; it is never visible.

  Input:
    KEYS[1] half     rmq:{T:i}:half:G
    KEYS[2] checks   rmq:{T:i}:halfdue:G
    KEYS[3] dead     rmq:{T:i}:txdead:G
    ARGV[1] msg id
    ARGV[2] source: 'client' | 'check' | 'admin' (as in tx_commit)
    ARGV[3] ms to remember the resolution
    ARGV[4] the ending instance's id (as in tx_commit)

  Output:
    'new' | 'again' ('again': rolled back before)
    errors 'TXNONE', 'TXDISCARDED', 'TXCHECKED' as in tx_commit; 'TXCOMMITTED' committed before
]]
--@include clock
--@include append
--@include half

local msg_id, source = ARGV[1], ARGV[2]
local packed, from_dead, refused = rmq_half_find(KEYS[1], KEYS[3], msg_id, source)
if refused then
  return refused
end
local rec = rmq_unpack(packed)
if rec[1] == 'r' then
  return 'again'
elseif rec[1] == 'c' then
  return redis.error_reply('TXCOMMITTED committed before')
end
if source == 'client' and rmq_half_checked(rec, ARGV[4]) then
  return redis.error_reply('TXCHECKED checked already: the check-back decides')
end
if from_dead then
  redis.call('HDEL', KEYS[3], msg_id)
end
rmq_half_resolve(KEYS[1], KEYS[2], msg_id, rec, 'r', source, rmq_now_ms(), ARGV[3])
return 'new'
