--[[
  subscribe: record a group's subscription of a topic (expression and listener kind),
  refusing a member whose expression or kind differs from the one live members of
  the group use. The record follows the live members: once none is left, the next
  member to subscribe may change it.

  Input:
    KEYS[1] subs     rmq:group:{G}:subs            hash topic -> expression
    KEYS[2] members  rmq:group:{G}:members:T       zset member id -> last heartbeat
    KEYS[3] kinds    rmq:group:{G}:kinds           hash topic -> listener kind
    ARGV[1] topic
    ARGV[2] expression
    ARGV[3] member id
    ARGV[4] member expiry in ms
    ARGV[5] listener kind: 'concurrent' | 'orderly' | 'key' | 'lite_pull' | 'broadcasting'

  Output:
    'OK', or error 'SUBCONFLICT <kind of the live members> <their expression>'
]]
--@include clock

local now = rmq_now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[4]))
local current = redis.call('HGET', KEYS[1], ARGV[1])
local kind = redis.call('HGET', KEYS[3], ARGV[1])
if (current and current ~= ARGV[2]) or (kind and kind ~= ARGV[5]) then
  local live = redis.call('ZRANGE', KEYS[2], 0, -1)
  for _, member in ipairs(live) do
    if member ~= ARGV[3] then
      return redis.error_reply('SUBCONFLICT ' .. (kind or ARGV[5]) .. ' ' .. (current or ARGV[2]))
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[5])
redis.call('ZADD', KEYS[2], now, ARGV[3])
return 'OK'
