--[[
  subscribe: record a group's subscription expression for a topic, refusing a
  member whose expression differs from the one live members of the group use.

  Input:
    KEYS[1] subs     rmq:group:{G}:subs            hash topic -> expression
    KEYS[2] members  rmq:group:{G}:members:T       zset member id -> last heartbeat
    ARGV[1] topic
    ARGV[2] expression
    ARGV[3] member id
    ARGV[4] member expiry in ms

  Output:
    'OK', or error 'SUBCONFLICT <expression of the live members>'
]]
--@include clock

local now = rmq_now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[4]))
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and current ~= ARGV[2] then
  local live = redis.call('ZRANGE', KEYS[2], 0, -1)
  for _, member in ipairs(live) do
    if member ~= ARGV[3] then
      return redis.error_reply('SUBCONFLICT ' .. current)
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[3])
return 'OK'
