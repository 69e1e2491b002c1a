--[[
  prune_consumers: delete the stream consumers of a group left by members that are gone.
  A consumer is deleted when it is not a live member, owns no pending entry and was
  idle for at least the member expiry. The check and XGROUP DELCONSUMER run in one
  script: DELCONSUMER drops the consumer's pending entries, so nothing may be delivered
  to it in between.

  Input:
    KEYS[1] stream   rmq:{T:i}:s or rmq:{T:i}:rs:G
    ARGV[1] group
    ARGV[2] min idle in ms (the member expiry)
    ARGV[3...] live member ids: their consumers are kept

  Output:
    the number of consumers deleted (0 when the stream or the group does not exist)
]]

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local info = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if type(info) == 'table' and info.err then
  local err = tostring(info.err)  -- fakeredis hands the error text over as userdata
  if string.sub(err, 1, 7) == 'NOGROUP' then
    return 0
  end
  return redis.error_reply(err)
end

local live = {}
for i = 3, #ARGV do
  live[ARGV[i]] = true
end
local min_idle = tonumber(ARGV[2])

local function owns_pending(name)
  -- the pending entries list itself: fakeredis' per-consumer counter may drift from it
  return #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, name) > 0
end

local deleted = 0
for _, row in ipairs(info) do
  -- flat [name, n, pending, n, idle, n, ...]; Redis 7.2 adds inactive
  local f = {}
  for j = 1, #row, 2 do
    f[row[j]] = row[j + 1]
  end
  local name = f['name']
  if not live[name] and tonumber(f['idle']) >= min_idle and not owns_pending(name) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    deleted = deleted + 1
  end
end
return deleted
