--[[
  create_group: create a consumer group on a queue stream at its starting position,
  with ENTRIESREAD so the group's lag is exact; an existing group keeps its position.

  Input:
    KEYS[1] stream   rmq:{T:i}:s
    KEYS[2] seq      rmq:{T:i}:seq   messages ever written to the queue
    ARGV[1] group
    ARGV[2] where: 'first' | 'last' | 'timestamp' (ARGV[3] = epoch ms) | 'after' (ARGV[3] = entry id)
    ARGV[3] epoch ms or entry id ('' otherwise)

  Output:
    1 when created, 0 when the group existed (BUSYGROUP: position kept)
]]

--@include entry

local where = ARGV[2]
local start, read = '$', nil
if where ~= 'last' then
  local first
  if where == 'first' then
    first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
    start = '0'
  elseif where == 'timestamp' then
    local ms = tonumber(ARGV[3])
    first = redis.call('XRANGE', KEYS[1], string.format('%d', ms), '+', 'COUNT', 1)
    if ms > 0 then
      start = string.format('%d', ms - 1) .. '-18446744073709551615'
    else
      start = '0'
    end
  else
    first = redis.call('XRANGE', KEYS[1], '(' .. ARGV[3], '+', 'COUNT', 1)
    start = ARGV[3]
  end
  if #first > 0 then
    read = rmq_entry_q(first[1]) or 0  -- the number of entries before the first one
  elseif where == 'after' then
    read = redis.call('GET', KEYS[2]) or '0'
  else
    start = '$'
  end
end
local args = {'CREATE', KEYS[1], ARGV[1], start, 'MKSTREAM'}
if read then
  args[#args + 1] = 'ENTRIESREAD'
  args[#args + 1] = read
end
local ok = redis.pcall('XGROUP', unpack(args))
if type(ok) == 'table' and ok.err then
  local err = tostring(ok.err)  -- fakeredis hands the error text over as userdata
  if string.sub(err, 1, 9) == 'BUSYGROUP' then
    return 0
  end
  return redis.error_reply(err)
end
return 1
