-- Move the due delayed messages of one queue into its stream (needs clock, trim, append).
-- Returns moved, next due ms (-1 when nothing else is held), server now ms.
-- everything: release the held messages whatever their due time (a test fast-forwarding delays).
local function rmq_release(delay, delayed, stream, seq_key, trimmed, limit, trim_mode, trim_value, everything)
  local now = rmq_now_ms()
  local moved = 0
  if redis.call('EXISTS', seq_key) == 1 then
    local upto = now
    if everything then
      upto = '+inf'
    end
    local due = redis.call('ZRANGEBYSCORE', delay, '-inf', upto, 'LIMIT', 0, tonumber(limit))
    for _, msg_id in ipairs(due) do
      local packed = redis.call('HGET', delayed, msg_id)
      if packed then
        rmq_append(stream, seq_key, trimmed, msg_id, rmq_unpack(packed), trim_mode, trim_value)
        moved = moved + 1
      end
      redis.call('ZREM', delay, msg_id)
      redis.call('HDEL', delayed, msg_id)
    end
  end
  local nxt = redis.call('ZRANGE', delay, 0, 0, 'WITHSCORES')
  if #nxt == 0 then
    return moved, -1, now
  end
  return moved, tonumber(nxt[2]), now
end
