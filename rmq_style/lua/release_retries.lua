--[[
  release_retries: move the group's due retries of one queue into its retry stream.

  Input:
    KEYS[1] retry    rmq:{T:i}:retry:G     zset msg id -> due ms (server clock)
    KEYS[2] body     rmq:{T:i}:retrymsg:G  hash msg id -> packed q r b t k p c d o
    KEYS[3] stream   rmq:{T:i}:rs:G        the group reads it like the queue
    ARGV[1] at most this many messages

  Output:
    {moved, ms until the next retry is due or -1 when none is held}
]]
--@include clock
--@include append

local now = rmq_now_ms()
local moved = 0
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, msg_id in ipairs(due) do
  local packed = redis.call('HGET', KEYS[2], msg_id)
  if packed then
    local f = rmq_unpack(packed)
    redis.call('XADD', KEYS[3], '*', 'i', msg_id, 'q', f[1], 'r', f[2], 'b', f[3], 't', f[4], 'k', f[5],
      'p', f[6], 'c', f[7], 'd', f[8], 'o', f[9])
    moved = moved + 1
  end
  redis.call('ZREM', KEYS[1], msg_id)
  redis.call('HDEL', KEYS[2], msg_id)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt == 0 then
  return {moved, -1}
end
return {moved, math.max(tonumber(nxt[2]) - now, 0)}
