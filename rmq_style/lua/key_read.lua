--[[
  key_read: the lease holder of a key-ordered queue takes the next entries, in
  this order: first the group's entries of the queue still pending above the
  caller's cursor (left by a previous owner, or read by the caller in a reply it
  lost), claimed to itself; then the group's retry stream of the queue
  (replayed dead letters: its pending entries above the retry cursor, then new
  ones); then new entries of the queue. Unlike orderly_read it never returns
  entries at or below a cursor: the caller keeps many of them in hand at once.
  Fenced: refused when the caller does not hold the lease.

  Input:
    KEYS[1] stream   rmq:{T:i}:s
    KEYS[2] lock     rmq:{T:i}:lock:G     string "member/token"
    KEYS[3] retry    rmq:{T:i}:rs:G       the group's retry stream of the queue
    KEYS[4] kheld    rmq:{T:i}:kheld:G    hash entry id -> failed attempts ('r' + id for the retry stream)
    ARGV[1] group
    ARGV[2] member (consumer name)
    ARGV[3] the caller's lock value
    ARGV[4] count: most entries to return
    ARGV[5] cursor: the highest entry id of the queue the caller has in hand or handled ('0-0' at first)
    ARGV[6] retry cursor: the same for the retry stream

  Output:
    {source, entries, attempts, last}: source 'pending' (claimed from the group's
    pending entries of the queue), 'retry' (entries of the retry stream) or 'new';
    entries: a list of (id, flat field list) in offset order (a claimed entry
    trimmed meanwhile is nil or left out); attempts: flat list of (id, failed
    attempts) of claimed entries that failed before; last: when no new entry was
    there, the id of the stream's last entry ('' if empty); top: the last pending
    entry id claimed (or found trimmed: then acknowledged), '' for new entries.
    Error FENCED when the caller does not hold the lease.
]]
--@include lease

local fenced = rmq_check_lease(KEYS[2], ARGV[3])
if fenced then
  return fenced
end

-- the smallest entry id above `id` (ms-seq)
local function above(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if not ms then
    return '0-0'
  end
  return ms .. '-' .. string.format('%.0f', tonumber(seq) + 1)
end

local top = ''  -- the last pending entry id looked at: the caller's new cursor

-- the group's pending entries of `stream` above `cursor`, claimed to the caller; nil when none
local function claim(stream, cursor, prefix)
  local pending = redis.call('XPENDING', stream, ARGV[1], above(cursor), '+', ARGV[4])
  if #pending == 0 then
    return nil, nil
  end
  local ids, fields = {}, {}
  for i, row in ipairs(pending) do
    ids[i] = row[1]
    fields[i] = prefix .. row[1]
  end
  local entries = redis.call('XCLAIM', stream, ARGV[1], ARGV[2], 0, unpack(ids))
  if #entries == #ids then  -- entries trimmed while pending come back as nil here: done with them
    for i, row in ipairs(entries) do
      if not row or not row[2] then
        redis.call('XACK', stream, ARGV[1], ids[i])
      end
    end
  end
  top = ids[#ids]
  local counts = redis.pcall('HMGET', KEYS[4], unpack(fields))
  local attempts = {}
  if counts.err then  -- kheld is not a hash (written by someone else): no attempts recorded
    counts = {}
  end
  for i, n in ipairs(counts) do
    if n then
      attempts[#attempts + 1] = ids[i]
      attempts[#attempts + 1] = n
    end
  end
  return entries, attempts
end

local function read_new(stream)
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[4], 'STREAMS', stream, '>')
  if r and r[1] then
    return r[1][2]
  end
  return {}
end

local source = 'pending'
local entries, attempts = claim(KEYS[1], ARGV[5], '')
if not entries and redis.call('XLEN', KEYS[3]) > 0 then
  source = 'retry'
  redis.pcall('XGROUP', 'CREATE', KEYS[3], ARGV[1], '0')  -- BUSYGROUP when it exists
  entries, attempts = claim(KEYS[3], ARGV[6], 'r')
  if not entries then
    entries, attempts = read_new(KEYS[3]), {}
    if #entries == 0 then
      entries = nil
    end
  end
end
local last = ''
if not entries then
  source, entries, attempts = 'new', read_new(KEYS[1]), {}
  if #entries == 0 then
    local tail = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
    if #tail > 0 then
      last = tail[1][1]
    end
  end
end
return {source, entries, attempts, last, top}
