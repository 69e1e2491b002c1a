--[[
  orderly_read: the lease holder of a queue acknowledges what it handled and
  takes the next entries, in this order: first every entry of the queue still
  pending in the group (left by a previous owner, or by itself), claimed to
  itself; then the group's retry stream of the queue (replayed dead letters:
  its pending entries claimed, then new ones); then new entries of the queue.
  Fenced: refused when the caller does not hold the lease.

  Input:
    KEYS[1] stream   rmq:{T:i}:s
    KEYS[2] lock     rmq:{T:i}:lock:G     string "member/token"
    KEYS[3] held     rmq:{T:i}:held:G     hash owner offset attempts since reason
    KEYS[4] retry    rmq:{T:i}:rs:G       the group's retry stream of the queue
    ARGV[1] group
    ARGV[2] member (consumer name)
    ARGV[3] the caller's lock value
    ARGV[4] count: most entries to return
    ARGV[5] '1' when the entry ids below are of the retry stream (then deleted too), '0' otherwise
    ARGV[6...] entry ids handled since the last call, acknowledged first

  Output:
    {source, entries, held offset, held attempts, last}: source 'pending' (claimed
    from the group's pending entries of the queue), 'retry' (entries of the retry
    stream) or 'new'; entries: a list of (id, flat field list) in offset order;
    held offset/attempts of the queue's blocked message ('' if none);
    last: when no new entry was there, the id of the stream's last entry ('' if empty)
    Error FENCED when the caller does not hold the lease.
]]
--@include lease

local fenced = rmq_check_lease(KEYS[2], ARGV[3])
if fenced then
  return fenced
end
if ARGV[5] == '1' then
  rmq_ack_from(KEYS[4], KEYS[3], ARGV[1], 6, '1')
else
  rmq_ack_from(KEYS[1], KEYS[3], ARGV[1], 6, '0')
end
local held = redis.call('HMGET', KEYS[3], 'offset', 'attempts')

-- the group's pending entries of `stream`, claimed to the caller; nil when there are none
local function claim(stream)
  local pending = redis.call('XPENDING', stream, ARGV[1], '-', '+', ARGV[4])
  if #pending == 0 then
    return nil
  end
  local ids = {}
  for i, row in ipairs(pending) do
    ids[i] = row[1]
  end
  return redis.call('XCLAIM', stream, ARGV[1], ARGV[2], 0, unpack(ids))
end

local function read_new(stream)
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[4], 'STREAMS', stream, '>')
  if r and r[1] then
    return r[1][2]
  end
  return {}
end

local source, entries = 'pending', claim(KEYS[1])
if not entries and redis.call('XLEN', KEYS[4]) > 0 then
  source = 'retry'
  redis.pcall('XGROUP', 'CREATE', KEYS[4], ARGV[1], '0')  -- BUSYGROUP when it exists
  entries = claim(KEYS[4]) or read_new(KEYS[4])
  if #entries == 0 then
    entries = nil
  end
end
if not entries then
  source = 'new'
  entries = read_new(KEYS[1])
end
local last = ''
if source == 'new' and #entries == 0 then
  local tail = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if #tail > 0 then
    last = tail[1][1]
  end
end
return {source, entries, held[1] or '', held[2] or '', last}
