--[[
  simple_change: a simple consumer changes the invisible duration of a message it received, from
  now (RocketMQ 5's changeInvisibleDuration). The handle's token is replaced by a new one: the old
  handle is stale from then on. Refused when the handle is stale (as in simple_ack) or the lease
  ended already (the message may be handed to another consumer: receive it again).

  Input:
    KEYS[1] inv      rmq:{T:i}:inv:G
    KEYS[2] lease    rmq:{T:i}:lease:G
    ARGV[1] lease name: 's:<entry id>' or 'r:<entry id>'
    ARGV[2] receipt token of the handle
    ARGV[3] new receipt token
    ARGV[4] new invisible duration in ms, from now

  Output:
    the new visible-again time (server ms); error STALEHANDLE <why> (nothing written)
]]
--@include clock

local held = redis.call('HGET', KEYS[2], ARGV[1])
if held ~= ARGV[2] then
  if held then
    return redis.error_reply('STALEHANDLE the message was received again or its invisible duration changed: '
      .. 'use the newest receipt handle')
  end
  return redis.error_reply('STALEHANDLE the message is no longer in flight: acknowledged already or dead-lettered')
end
local now = rmq_now_ms()
local until_ms = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if not until_ms or until_ms <= now then
  return redis.error_reply('STALEHANDLE the invisible duration ended before the change: '
    .. 'the message may be delivered again; receive it again')
end
local new_until = now + tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], new_until, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return new_until
