-- Append one message to a queue stream: the queue offset increment and the XADD
-- are one step, so queue offsets are consecutive and never reused.
-- `fields` holds r, b, t, k, p, c, d values (the order of docs/storage.md).
local function rmq_append(stream, seq_key, msg_id, fields, trim_mode, trim_value)
  local seq = redis.call('INCR', seq_key) - 1
  local args = {stream}
  if trim_mode == 'maxlen' then
    args[#args + 1] = 'MAXLEN'
    args[#args + 1] = '~'
    args[#args + 1] = trim_value
  end
  local names = {'r', 'b', 't', 'k', 'p', 'c', 'd'}
  args[#args + 1] = '*'
  args[#args + 1] = 'i'
  args[#args + 1] = msg_id
  args[#args + 1] = 'q'
  args[#args + 1] = seq
  for i = 1, 7 do
    args[#args + 1] = names[i]
    args[#args + 1] = fields[i]
  end
  local id = redis.call('XADD', unpack(args))
  rmq_trim(stream, trim_mode, trim_value, seq + 1)
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
