--[[
  lock_renew: extend the orderly lease of (group, queue) if the caller still holds it
  (compare and extend).

  Input:
    KEYS[1] lock     rmq:{T:i}:lock:G   string "member/token" of the owner
    ARGV[1] the caller's lock value
    ARGV[2] lease in ms

  Output:
    1 when extended, 0 when the caller does not hold the lease (any more)
]]

if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
