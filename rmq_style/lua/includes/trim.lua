-- Retention of one queue stream.
--   mode 'maxlen': hard cap of `value` entries (approximate); the loss is the user's choice.
--   mode 'minid' : remove entries older than `value` ms only if every group of the
--                  stream has acknowledged them (no pending entry, delivered past them).
-- The minid pass reads XINFO GROUPS, so it runs once every 128 writes.
local function rmq_id_parts(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end

local function rmq_trim(stream, mode, value, seq)
  if mode ~= 'minid' or seq % 128 ~= 0 then
    return
  end
  local min_ms, min_seq = rmq_now_ms() - tonumber(value), 0
  local groups = redis.call('XINFO', 'GROUPS', stream)
  for _, g in ipairs(groups) do
    local name, last_delivered
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last_delivered = g[i + 1] end
    end
    local pending = redis.call('XPENDING', stream, name)
    local ms, sq
    if tonumber(pending[1]) > 0 then
      ms, sq = rmq_id_parts(pending[2])
    else
      ms, sq = rmq_id_parts(last_delivered)
      sq = sq + 1
    end
    if ms < min_ms or (ms == min_ms and sq < min_seq) then
      min_ms, min_seq = ms, sq
    end
  end
  if min_ms > 0 then
    redis.call('XTRIM', stream, 'MINID', '~', string.format('%d-%d', min_ms, min_seq))
  end
end
