--[[
  orderly_settle: the lease holder acknowledges handled entries and, when a
  message failed, records the queue as held by it (owner, blocked offset,
  attempts so far, since, reason), so anyone can see it and a new owner goes on
  counting. Fenced: refused when the caller does not hold the lease.

  Input:
    KEYS[1] stream   rmq:{T:i}:s, or the group's retry stream rmq:{T:i}:rs:G for its entries
    KEYS[2] lock     rmq:{T:i}:lock:G     string "member/token"
    KEYS[3] held     rmq:{T:i}:held:G     hash owner offset attempts since reason
    ARGV[1] group
    ARGV[2] the caller's lock value
    ARGV[3] offset of the blocked message, or '' (nothing failed: only acknowledge)
    ARGV[4] failed attempts of the blocked message so far
    ARGV[5] owner (member id)
    ARGV[6] reason of the last failure
    ARGV[7] '1' when KEYS[1] is the retry stream (acknowledged entries are deleted), '0' otherwise
    ARGV[8...] entry ids to acknowledge

  Output:
    number of entries acknowledged; error FENCED when the caller does not hold the lease
]]
--@include clock
--@include lease

local fenced = rmq_check_lease(KEYS[2], ARGV[2])
if fenced then
  return fenced
end
local n = rmq_ack_from(KEYS[1], KEYS[3], ARGV[1], 8, ARGV[7])
if ARGV[3] ~= '' then
  local since = redis.call('HGET', KEYS[3], 'since')
  if redis.call('HGET', KEYS[3], 'offset') ~= ARGV[3] or not since then
    since = rmq_now_ms()
  end
  redis.call('HSET', KEYS[3], 'owner', ARGV[5], 'offset', ARGV[3], 'attempts', ARGV[4],
    'since', since, 'reason', ARGV[6])
end
return n
