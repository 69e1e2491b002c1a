--[[
  commit_offset: set a consumer group's position in one queue (the stream's consumer
  group, shared with push consumers), with an exact entries-read count from the q field.

  Input:
    KEYS[1] stream   rmq:{T:i}:s
    KEYS[2] seq      rmq:{T:i}:seq
    ARGV[1] group
    ARGV[2] position: an entry id; the group has consumed every entry up to it
    ARGV[3] 'set' (create or move the group, ack its pending entries up to the
            position) or 'init' (create the group only if it has no position yet)

  Output:
    {position in effect, entries read}
    error 'OFFSETRANGE <last id>' when the position lies after the last entry
]]
--@include entry
--@include trim

local function after(a, b)
  local am, as = rmq_id_parts(a)
  local bm, bs = rmq_id_parts(b)
  return am > bm or (am == bm and as > bs)
end

local stream, group, pos = KEYS[1], ARGV[1], ARGV[2]
local exists = redis.call('EXISTS', stream) == 1
local last = '0-0'
if exists then
  local info = redis.call('XINFO', 'STREAM', stream)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
  if ARGV[3] == 'init' then
    local groups = redis.call('XINFO', 'GROUPS', stream)
    for _, g in ipairs(groups) do
      local name, delivered, read
      for i = 1, #g, 2 do
        if g[i] == 'name' then name = g[i + 1]
        elseif g[i] == 'last-delivered-id' then delivered = g[i + 1]
        elseif g[i] == 'entries-read' then read = g[i + 1]
        end
      end
      if name == group then
        return {delivered, read or -1}
      end
    end
  end
end
if after(pos, last) then
  return redis.error_reply('OFFSETRANGE ' .. last)
end

-- entries read = queue offset of the last entry at or before the position, plus one
local read = nil
local before = redis.call('XREVRANGE', stream, pos, '-', 'COUNT', 1)
if #before > 0 then
  local q = rmq_entry_q(before[1])
  if q then read = q + 1 end
else
  local nxt = redis.call('XRANGE', stream, '(' .. pos, '+', 'COUNT', 1)
  if #nxt > 0 then
    read = rmq_entry_q(nxt[1])
  else
    read = tonumber(redis.call('GET', KEYS[2]) or '0')
  end
end

local ok = redis.pcall('XGROUP', 'CREATE', stream, group, pos, 'MKSTREAM', 'ENTRIESREAD', read or 0)
if type(ok) == 'table' and ok.err then
  local err = tostring(ok.err)  -- fakeredis hands a userdata
  if not string.find(err, 'BUSYGROUP', 1, true) then
    return redis.error_reply(err)
  end
  redis.call('XGROUP', 'SETID', stream, group, pos, 'ENTRIESREAD', read or 0)
end
if ARGV[3] == 'set' then
  -- bounded: a huge pending list is acked over several commits
  for _ = 1, 10 do
    local pending = redis.call('XPENDING', stream, group, '-', pos, 100)
    if #pending == 0 then break end
    local ids = {}
    for i, p in ipairs(pending) do ids[i] = p[1] end
    redis.call('XACK', stream, group, unpack(ids))
  end
end
return {pos, read or -1}
