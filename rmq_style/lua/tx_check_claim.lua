--[[
  tx_check_claim: lease the due half messages of one queue for checking; discard the exhausted ones.

  Input:
    KEYS[1] half     rmq:{T:i}:half:G
    KEYS[2] checks   rmq:{T:i}:halfdue:G
    KEYS[3] dead     rmq:{T:i}:txdead:G
    ARGV[1] at most this many half messages
    ARGV[2] lease ms: no other check of the message starts before it ends
    ARGV[3] check max: a due half message checked this many times already is discarded
    ARGV[4] lease token prefix (unique per claim call)
  A value of KEYS[1] that is not a pending record of docs/storage.md is discarded at once, with
  property bad_half saying why and the raw value as its body.

  Output:
    {discarded, forgotten, msg id 1, token 1, checks 1, stored ms 1, packed r b t k p c d 1, ...}
    (checks counts this check; forgotten: resolutions past their memory removed first, at most 1000)
]]
--@include clock
--@include append
--@include half

local now = rmq_now_ms()
local out = {0, rmq_half_forget(KEYS[1], KEYS[2], now, 1000)}
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, msg_id in ipairs(due) do
  local packed = redis.call('HGET', KEYS[1], msg_id)
  if not packed then
    redis.call('ZREM', KEYS[2], msg_id)
  elseif not rmq_half_resolved(packed) then
    local rec, why = rmq_half_pending(packed)
    if not rec then
      -- not a record this store wrote (hostile or corrupted): discarded at once, readable, with
      -- the reason in property bad_half and the raw value as the body (docs/storage.md)
      local props = '{"bad_half":"' .. why .. '"}'
      redis.call('HSET', KEYS[3], msg_id, rmq_pack({'d', 0, 0, 0, '', now, '', '', '', '', props, 'b', packed}))
      redis.call('HDEL', KEYS[1], msg_id)
      redis.call('ZREM', KEYS[2], msg_id)
      out[1] = out[1] + 1
    elseif tonumber(rec[2]) >= tonumber(ARGV[3]) then
      rec[1], rec[5], rec[6] = 'd', '', now
      redis.call('HSET', KEYS[3], msg_id, rmq_pack(rec))
      redis.call('HDEL', KEYS[1], msg_id)
      redis.call('ZREM', KEYS[2], msg_id)
      out[1] = out[1] + 1
    else
      local checks = tonumber(rec[2]) + 1
      local token = ARGV[4] .. ':' .. checks
      rec[2], rec[5], rec[6] = checks, token, now
      redis.call('HSET', KEYS[1], msg_id, rmq_pack(rec))
      redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), msg_id)
      out[#out + 1] = msg_id
      out[#out + 1] = token
      out[#out + 1] = checks
      out[#out + 1] = tonumber(rec[4])
      out[#out + 1] = rmq_pack({rec[7], rec[8], rec[9], rec[10], rec[11], rec[12], rec[13]})
    end
  end
end
return out
