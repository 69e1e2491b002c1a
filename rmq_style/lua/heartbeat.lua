--[[
  heartbeat: a member of a group says it is alive for one topic; expired members are dropped.

  Input:
    KEYS[1] members  rmq:group:{G}:members:T   zset member id -> last heartbeat (server ms)
    ARGV[1] member id
    ARGV[2] member expiry in ms (a member silent for longer is gone)
    ARGV[3] '1' to join/renew, '0' to leave

  Output:
    the live member ids, sorted
]]
--@include clock

local now = rmq_now_ms()
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return redis.call('ZRANGE', KEYS[1], 0, -1)
