-- Retention of one queue stream, run when the queue offset crosses a multiple of 128.
--   mode 'maxlen': cap of `value` entries (approximate); the loss is the user's choice,
--                  and it is counted: entries trimmed before a group was delivered
--                  them are added to that group's field of the queue's `trimmed` hash.
--   mode 'minid' : remove entries older than `value` ms only if every group of the
--                  stream has acknowledged them (no pending entry, delivered past them).
-- Both passes read XINFO GROUPS, hence once every 128 writes and not per entry.
-- Needs the clock and entry includes.
local function rmq_id_parts(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end

-- name and last-delivered id of each group of the stream
local function rmq_groups(stream)
  local out = {}
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local name, last_delivered
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last_delivered = g[i + 1] end
    end
    out[#out + 1] = {name, last_delivered}
  end
  return out
end

local function rmq_trim_maxlen(stream, value, trimmed)
  if redis.call('XLEN', stream) <= tonumber(value) then
    return
  end
  -- per group: the queue offset of the first entry not yet delivered to it
  local waiting = {}
  for _, g in ipairs(rmq_groups(stream)) do
    local nxt = redis.call('XRANGE', stream, '(' .. g[2], '+', 'COUNT', 1)
    if #nxt > 0 then
      waiting[#waiting + 1] = {g[1], rmq_entry_q(nxt[1])}
    end
  end
  redis.call('XTRIM', stream, 'MAXLEN', '~', value)
  if #waiting == 0 then
    return
  end
  local first = rmq_entry_q(redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1])
  for _, w in ipairs(waiting) do
    if w[2] and first and first > w[2] then
      redis.call('HINCRBY', trimmed, w[1], first - w[2])
    end
  end
end

local function rmq_trim_minid(stream, value)
  local min_ms, min_seq = rmq_now_ms() - tonumber(value), 0
  for _, g in ipairs(rmq_groups(stream)) do
    local pending = redis.call('XPENDING', stream, g[1])
    local ms, sq
    if tonumber(pending[1]) > 0 then
      ms, sq = rmq_id_parts(pending[2])
    else
      ms, sq = rmq_id_parts(g[2])
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

local function rmq_trim(stream, mode, value, seq, trimmed)
  if seq % 128 ~= 0 then
    return
  end
  if mode == 'maxlen' then
    rmq_trim_maxlen(stream, value, trimmed)
  elseif mode == 'minid' then
    rmq_trim_minid(stream, value)
  end
end
