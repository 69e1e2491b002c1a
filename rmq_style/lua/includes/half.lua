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

-- A count written by this store: decimal digits only (Lua's tonumber also takes '0x10', ' 1', '1e3').
local function rmq_half_count(s)
  if not s or #s > 16 or not string.match(s, '^%d+$') then
    return nil
  end
  return tonumber(s)
end

-- rmq_unpack that refuses a malformed blob (nil): a record read from Redis may be hostile.
local function rmq_half_unpack(blob)
  local out, pos = {}, 1
  while pos <= #blob do
    local colon = string.find(blob, ':', pos, true)
    if not colon then
      return nil
    end
    local len = rmq_half_count(string.sub(blob, pos, colon - 1))
    if not len or colon + len > #blob then
      return nil
    end
    out[#out + 1] = string.sub(blob, colon + 1, colon + len)
    pos = colon + len + 1
  end
  return out
end

-- A pending record (13 fields, state 'h', counts in fields 2 to 4), or nil and why it is not.
local function rmq_half_pending(packed)
  local rec = rmq_half_unpack(packed)
  if not rec then
    return nil, 'not a packed record'
  end
  if #rec ~= 13 or rec[1] ~= 'h' then
    return nil, 'not a pending record of 13 fields'
  end
  for i = 2, 4 do
    local n = rmq_half_count(rec[i])
    if not n or n >= 9007199254740992 then
      return nil, 'field ' .. i .. ' is not a count'
    end
  end
  return rec
end

-- The record of msg_id for a commit or rollback: from the half store, or (operators only)
-- from the discarded list. Returns packed, from_dead; or nil, nil, an error reply.
local function rmq_half_find(half, dead, msg_id, source)
  local packed = redis.call('HGET', half, msg_id)
  if packed then
    return packed, false
  end
  packed = redis.call('HGET', dead, msg_id)
  if not packed then
    return nil, nil, redis.error_reply('TXNONE no such half message')
  end
  if source ~= 'admin' then
    return nil, nil, redis.error_reply('TXDISCARDED discarded after its last check')
  end
  return packed, true
end

-- Whether a check took a pending record over from its producer: a check began (not one
-- of the producer's own instance, which defers while the local transaction runs).
local function rmq_half_checked(rec, member)
  local own = member ~= '' and string.sub(rec[5], 1, #member + 1) == member .. '/'
  local checks = tonumber(rec[2])
  if own then
    checks = checks - 1
  end
  return checks > 0 or (rec[5] ~= '' and not own)
end

-- Whether a packed record is a resolution ('c' or 'r'): read from its first field only.
local function rmq_half_resolved(packed)
  local head = string.sub(packed, 1, 3)
  return head == '1:c' or head == '1:r'
end

-- Forget at most `limit` resolutions past their memory among the first due members of `due`;
-- returns how many. Pending members (due for a check) are left to tx_check_claim.
local function rmq_half_forget(half, due, now, limit)
  local forgotten = 0
  for _, msg_id in ipairs(redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, limit)) do
    local packed = redis.call('HGET', half, msg_id)
    if not packed or rmq_half_resolved(packed) then
      redis.call('HDEL', half, msg_id)
      redis.call('ZREM', due, msg_id)
      forgotten = forgotten + 1
    end
  end
  return forgotten
end

-- The record of a resolved half message, kept `forget_ms` for idempotent answers. Each
-- resolution forgets up to two older ones, so resolutions never pile up, checked or not.
local function rmq_half_resolve(half, due, msg_id, rec, state, source, now, forget_ms, entry_id, q)
  redis.call('HSET', half, msg_id,
    rmq_pack({state, rec[2], rec[3], rec[4], source, now, entry_id or '', q or ''}))
  redis.call('ZADD', due, now + tonumber(forget_ms), msg_id)
  rmq_half_forget(half, due, now, 2)
end
