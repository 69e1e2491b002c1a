--[[
  release_due: move the due delayed messages of one queue into its stream.

  Input:
    KEYS[1] delay    rmq:{T:i}:delay
    KEYS[2] delayed  rmq:{T:i}:delayed
    KEYS[3] stream   rmq:{T:i}:s
    KEYS[4] seq      rmq:{T:i}:seq
    ARGV[1] at most this many messages
    ARGV[2] trim mode, ARGV[3] trim value (as in send)

  Output:
    {moved, next due ms or -1 when nothing else is held}
]]
--@include clock
--@include trim
--@include append

local now = rmq_now_ms()
local moved = 0
if redis.call('EXISTS', KEYS[4]) == 1 then
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
  for _, msg_id in ipairs(due) do
    local packed = redis.call('HGET', KEYS[2], msg_id)
    if packed then
      rmq_append(KEYS[3], KEYS[4], msg_id, rmq_unpack(packed), ARGV[2], ARGV[3])
      moved = moved + 1
    end
    redis.call('ZREM', KEYS[1], msg_id)
    redis.call('HDEL', KEYS[2], msg_id)
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt == 0 then
  return {moved, -1}
end
return {moved, tonumber(nxt[2])}
