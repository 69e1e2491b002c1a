--[[
  simple_receive: a simple consumer takes up to n messages of one queue for an invisible duration
  (RocketMQ 5's receive / POP). In this order: the queue's due delayed messages are released;
  entries whose invisible duration ended are taken again (their delivery count + 1), or
  dead-lettered when they had their max attempts; then new entries of the group's retry stream
  (replayed dead letters, push retries), then new entries of the queue. Every entry handed out is
  leased: `inv` holds its visible-again time, `lease` its receipt token.

  Input:
    KEYS[1] stream   rmq:{T:i}:s
    KEYS[2] retries  rmq:{T:i}:rs:G      the group's retry stream
    KEYS[3] inv      rmq:{T:i}:inv:G     lease ('s:<id>' or 'r:<id>') -> visible again at (server ms)
    KEYS[4] lease    rmq:{T:i}:lease:G   lease -> receipt token
    KEYS[5] dlq      rmq:{T:i}:dlq:G
    KEYS[6] delay    rmq:{T:i}:delay
    KEYS[7] delayed  rmq:{T:i}:delayed
    KEYS[8] seq      rmq:{T:i}:seq
    KEYS[9] trimmed  rmq:{T:i}:trimmed
    KEYS[10] trace   rmq:{T:i}:trace     the message trace stream
    ARGV[1] group
    ARGV[2] consumer name in the stream groups (every simple consumer uses the same one)
    ARGV[3] invisible duration in ms
    ARGV[4] at most this many messages
    ARGV[5] max attempts (deliveries): an entry delivered that often is dead-lettered, not taken again
    ARGV[6] token prefix (16 hex digits, new for each call); a message's token adds 2 hex digits
    ARGV[7] topic, ARGV[8] queue id (for the dead letters)
    ARGV[9] trim mode, ARGV[10] trim value (as in send)
    ARGV[11] message trace: '0' off, '1' the messages carrying the trace flag, '2' all;
    ARGV[12] trace cap, ARGV[13] trace max age ms, ARGV[14] the consumer's host in its records
    (a `sub` record per dead letter, and per lease that ended before an ack: outcome 'expired')

  Output:
    {now ms, next visible-again ms or -1, next delayed due ms or -1, last id of the queue stream,
     last id of the retry stream, dead-lettered count, 1 when the group is missing on the queue else 0,
     {source 's'|'r', entry id, fields, delivery attempt, token, visible again at}...}
    Error NOTOPIC when the queue does not exist.
]]
--@include clock
--@include entry
--@include trim
--@include append
--@include release
--@include trace

if redis.call('EXISTS', KEYS[8]) == 0 then
  return redis.error_reply('NOTOPIC queue does not exist')
end
local _, next_due, now = rmq_release(KEYS[6], KEYS[7], KEYS[1], KEYS[8], KEYS[9], 1000, ARGV[9], ARGV[10], false)
local group, consumer = ARGV[1], ARGV[2]
local invisible, want, max_attempts = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local out, dead = {}, 0

local function field(fields, name)
  for j = 1, #fields - 1, 2 do
    if fields[j] == name then
      return fields[j + 1]
    end
  end
  return ''
end

-- reconsume times r of an entry (a push retry's count); anything but 1 to 15 digits reads as 0
local function reconsumed(fields)
  local r = field(fields, 'r')
  if #r <= 15 and string.match(r, '^%d+$') then
    return tonumber(r)
  end
  return 0
end

local trace_mode, traced = ARGV[11], 0

-- a `sub` record of a traced entry (the delivery with reconsume times `attempt`), when tracing is on
local function trace(fields, attempt, outcome, detail)
  if trace_mode == '0' or not trace_mode then
    return
  end
  if trace_mode ~= '2' and not string.find(field(fields, 'p'), '"TRACE_ON":"1"', 1, true) then
    return
  end
  rmq_trace_add(KEYS[10], ARGV[12], field(fields, 'i'), 'sub', group, ARGV[14], attempt, now, 0, outcome, detail)
  traced = traced + 1
end

local function forget(member)
  redis.call('ZREM', KEYS[3], member)
  redis.call('HDEL', KEYS[4], member)
end

local function dead_letter(src, stream, id, fields, delivered)
  local offset = id
  if src == 'r' then
    offset = field(fields, 'o')
  end
  local r = reconsumed(fields)
  local reason = string.format(
    'simple consumer: not acknowledged after %d delivery attempts (max attempts %d)', r + delivered, max_attempts)
  redis.call('XADD', KEYS[5], '*',
    'i', field(fields, 'i'), 'q', field(fields, 'q'), 'r', tostring(math.max(r + delivered - 1, 0)),
    'b', field(fields, 'b'), 't', field(fields, 't'), 'k', field(fields, 'k'), 'p', field(fields, 'p'),
    'c', field(fields, 'c'), 'd', field(fields, 'd'),
    'topic', ARGV[7], 'queue', ARGV[8], 'offset', offset, 'group', group, 'reason', reason, 'dead_at', now)
  redis.call('XACK', stream, group, id)
  if src == 'r' then
    redis.call('XDEL', stream, id)
  end
  dead = dead + 1
  trace(fields, math.max(r + delivered - 1, 0), 'dead', '{"reason":"' .. reason .. '"}')
end

-- hand out one entry (delivered before: `delivered` times) under a new lease
local function take(src, id, fields, delivered)
  local member = src .. ':' .. id
  local token = ARGV[6] .. string.format('%02x', #out)
  local until_ms = now + invisible
  redis.call('ZADD', KEYS[3], until_ms, member)
  redis.call('HSET', KEYS[4], member, token)
  out[#out + 1] = {src, id, fields, reconsumed(fields) + delivered + 1, token, until_ms}
end

-- 1. leases that ended: the entry is ours again (or dead, or gone)
local ended = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, want)
for _, member in ipairs(ended) do
  local src, id = string.match(member, '^([sr]):(%d+%-%d+)$')
  local stream = KEYS[1]
  if src == 'r' then
    stream = KEYS[2]
  end
  -- pcall: a lease written by anything else may name an id Redis refuses
  local rows = src and redis.pcall('XPENDING', stream, group, id, id, 1, consumer)
  if type(rows) ~= 'table' or rows.err or #rows == 0 then
    forget(member)  -- not ours any more: acknowledged, or the group was reset
  else
    local delivered = tonumber(rows[1][4])
    local entry = redis.call('XRANGE', stream, id, id)
    if #entry == 0 then
      redis.call('XACK', stream, group, id)  -- trimmed or deleted while in flight
      forget(member)
    elseif reconsumed(entry[1][2]) + delivered >= max_attempts then
      dead_letter(src, stream, id, entry[1][2], delivered)
      forget(member)
    else
      redis.call('XCLAIM', stream, group, consumer, 0, id, 'RETRYCOUNT', delivered + 1, 'JUSTID')
      -- the delivery whose lease ended unacknowledged (its receiver failed or was too slow)
      trace(entry[1][2], reconsumed(entry[1][2]) + delivered - 1, 'expired', '')
      take(src, id, entry[1][2], delivered)
    end
  end
end

-- 2. new entries: the group's retry stream first (a replayed dead letter), then the queue
local function read_new(src, stream)
  local room = want - #out
  if room <= 0 then
    return
  end
  local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', room, 'STREAMS', stream, '>')
  if not reply then
    return
  end
  for _, entry in ipairs(reply[1][2]) do
    local fields = entry[2]
    if reconsumed(fields) >= max_attempts then
      dead_letter(src, stream, entry[1], fields, 0)
    else
      take(src, entry[1], fields, 0)
    end
  end
end

if redis.call('EXISTS', KEYS[2]) == 1 then
  if not pcall(read_new, 'r', KEYS[2]) then
    redis.pcall('XGROUP', 'CREATE', KEYS[2], group, '0')  -- a retry stream without the group: from its start
    read_new('r', KEYS[2])
  end
end
-- without the group on the queue (deleted, or a server restarted empty) the caller creates it
local no_group = 0
if not pcall(read_new, 's', KEYS[1]) then
  no_group = 1
end

local function last_id(stream)
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #last == 0 then
    return '0-0'
  end
  return last[1][1]
end

if traced > 0 then
  rmq_trace_trim(KEYS[10], ARGV[13])
end

local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
local next_visible = -1
if #first > 0 then
  next_visible = tonumber(first[2])
end
local reply = {now, next_visible, next_due, last_id(KEYS[1]), last_id(KEYS[2]), dead, no_group}
for _, m in ipairs(out) do
  reply[#reply + 1] = m
end
return reply
