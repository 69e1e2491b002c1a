--[[
  orderly_read: the lease holder of a queue acknowledges what it handled and
  takes the next entries, in offset order: first every entry still pending in
  the group (left by a previous owner, or by itself), claimed to itself, then
  new ones. Fenced: refused when the caller does not hold the lease.

  Input:
    KEYS[1] stream   rmq:{T:i}:s
    KEYS[2] lock     rmq:{T:i}:lock:G     string "member/token"
    KEYS[3] held     rmq:{T:i}:held:G     hash owner offset attempts since reason
    ARGV[1] group
    ARGV[2] member (consumer name)
    ARGV[3] the caller's lock value
    ARGV[4] count: most entries to return
    ARGV[5...] entry ids handled since the last call, acknowledged first

  Output:
    {source, entries, held offset, held attempts, last}: source 'pending' (claimed
    from the group's pending entries) or 'new'; entries: a list of (id, flat field list)
    in offset order; held offset/attempts of the queue's blocked message ('' if none);
    last: when no new entry was there, the id of the stream's last entry ('' if empty)
    Error FENCED when the caller does not hold the lease.
]]
--@include lease

local fenced = rmq_check_lease(KEYS[2], ARGV[3])
if fenced then
  return fenced
end
rmq_ack_from(KEYS[1], KEYS[3], ARGV[1], 5)
local held = redis.call('HMGET', KEYS[3], 'offset', 'attempts')
local source, entries = 'pending', {}
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', ARGV[4])
if #pending > 0 then
  local ids = {}
  for i, row in ipairs(pending) do
    ids[i] = row[1]
  end
  entries = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(ids))
else
  source = 'new'
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[4], 'STREAMS', KEYS[1], '>')
  if r and r[1] then
    entries = r[1][2]
  end
end
local last = ''
if source == 'new' and #entries == 0 then
  local tail = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if #tail > 0 then
    last = tail[1][1]
  end
end
return {source, entries, held[1] or '', held[2] or '', last}
