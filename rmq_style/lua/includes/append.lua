-- Write one message entry: the fields of docs/storage.md, always in this order.
-- Returns the entry id, or Redis' error as a table (pcall) for the caller to handle.
-- Positional arguments and one XADD call (no tables): this runs once per message.
local function rmq_xadd(stream, msg_id, seq, r, b, t, k, p, c, d)
  return redis.pcall('XADD', stream, '*',
    'i', msg_id, 'q', seq, 'r', r, 'b', b, 't', t, 'k', k, 'p', p, 'c', c, 'd', d)
end

-- Append one message to a queue stream: the queue offset increment and the XADD
-- are one step, so queue offsets are consecutive and never reused.
-- `fields` holds r, b, t, k, p, c, d values (the order of docs/storage.md).
-- Retention runs as in send.lua (rmq_trim, every 128 queue offsets).
local function rmq_append(stream, seq_key, trimmed, msg_id, fields, trim_mode, trim_value)
  local seq = redis.call('INCR', seq_key) - 1
  local id = rmq_xadd(stream, msg_id, seq,
    fields[1], fields[2], fields[3], fields[4], fields[5], fields[6], fields[7])
  if type(id) == 'table' then
    -- refused: scripts are not rolled back; give the offset back so the queue has no gap
    redis.call('DECR', seq_key)
    error(redis.error_reply(tostring(id.err)))
  end
  rmq_trim(stream, trim_mode, trim_value, seq + 1, trimmed)
  return id, seq
end

-- Unpack '<len>:<bytes>' fields packed by the client (rmq_style._message.pack_fields).
local function rmq_unpack(blob)
  local out, pos = {}, 1
  while pos <= #blob do
    local colon = string.find(blob, ':', pos, true)
    local len = tonumber(string.sub(blob, pos, colon - 1))
    out[#out + 1] = string.sub(blob, colon + 1, colon + len)
    pos = colon + len + 1
  end
  return out
end
