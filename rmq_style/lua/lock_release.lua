--[[
  lock_release: give the orderly lease of (group, queue) back (compare and delete).

  Input:
    KEYS[1] lock     rmq:{T:i}:lock:G   string "member/token" of the owner
    ARGV[1] the caller's lock value

  Output:
    1 when released, 0 when the caller did not hold it
]]

if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
