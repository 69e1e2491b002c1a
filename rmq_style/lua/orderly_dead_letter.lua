--[[
  orderly_dead_letter: the lease holder gives up on a message that held its
  queue: acknowledges the entries handled before it, moves it to the group's
  dead-letter stream with the reason (the dead_letter transition) and clears the
  held record, so the queue moves on. Fenced: refused when the caller does not
  hold the lease.

  Input:
    KEYS[1] stream   rmq:{T:i}:s, or the group's retry stream rmq:{T:i}:rs:G for its entries
    KEYS[2] dlq      rmq:{T:i}:dlq:G
    KEYS[3] lock     rmq:{T:i}:lock:G     string "member/token"
    KEYS[4] held     rmq:{T:i}:held:G
    ARGV[1] group
    ARGV[2] entry id of the dead message
    ARGV[3] msg id
    ARGV[4] packed fields q r b t k p c d o
    ARGV[5] topic
    ARGV[6] queue id
    ARGV[7] reason
    ARGV[8] the caller's lock value
    ARGV[9] '1' when KEYS[1] is the retry stream (its entries are deleted once acknowledged), '0' otherwise
    ARGV[10...] entry ids handled before it, acknowledged first

  Output:
    the dead-letter entry id, or 0 when the entry was not pending (nothing written);
    error FENCED when the caller does not hold the lease
]]
--@include clock
--@include append
--@include dead_letter_entry
--@include lease

local fenced = rmq_check_lease(KEYS[3], ARGV[8])
if fenced then
  return fenced
end
rmq_ack_from(KEYS[1], KEYS[4], ARGV[1], 10, ARGV[9])
local id = rmq_dead_letter(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[9], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
local blocked = redis.call('HGET', KEYS[4], 'offset')
if blocked == ARGV[2] then
  redis.call('DEL', KEYS[4])
end
return id
