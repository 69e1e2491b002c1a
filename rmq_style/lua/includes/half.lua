-- Half (transactional) message records of docs/storage.md, "Transactional messages".
-- Pending: 'h', checks, immunity ms, stored ms, lease token, changed ms, r b t k p c d.
-- Resolved: 'c' | 'r', checks, immunity ms, stored ms, source, resolved ms, entry id, q.
-- Needs the append include (rmq_unpack).
local function rmq_pack(values)
  local parts = {}
  for i, v in ipairs(values) do
    local s = tostring(v)
    parts[i] = #s .. ':' .. s
  end
  return table.concat(parts)
end

-- The record of a resolved half message, kept until `forget_at` for idempotent answers.
local function rmq_half_resolve(half, due, msg_id, rec, state, source, now, forget_ms, entry_id, q)
  redis.call('HSET', half, msg_id,
    rmq_pack({state, rec[2], rec[3], rec[4], source, now, entry_id or '', q or ''}))
  redis.call('ZADD', due, now + tonumber(forget_ms), msg_id)
end
