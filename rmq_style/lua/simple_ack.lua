--[[
  simple_ack: a simple consumer acknowledges a message it received, named by its receipt handle.
  Refused when the handle is stale: the message was received again since (a newer token), its
  invisible duration was changed (a newer token), or it is no longer in flight (acknowledged
  already, or dead-lettered). A lease that ended without anyone taking the message again is still
  the caller's: the ack is accepted (the work is done; a redelivery would only repeat it).

  Input:
    KEYS[1] stream   rmq:{T:i}:s, or rmq:{T:i}:rs:G for a retry stream entry
    KEYS[2] inv      rmq:{T:i}:inv:G
    KEYS[3] lease    rmq:{T:i}:lease:G
    KEYS[4] trace    rmq:{T:i}:trace     the message trace stream
    ARGV[1] group
    ARGV[2] lease name: 's:<entry id>' or 'r:<entry id>'
    ARGV[3] entry id
    ARGV[4] receipt token of the handle
    ARGV[5] '1' to delete the entry after the ack (retry stream entries), '0' to keep it
    ARGV[6] trace cap ('' : no trace record), ARGV[7] trace max age ms, ARGV[8..16] the record's nine
            values (i e g h a s d o x), written only when the ack is accepted

  Output:
    1; error STALEHANDLE <why> when the handle is stale (nothing written)
]]
--@include clock
--@include trace

local held = redis.call('HGET', KEYS[3], ARGV[2])
if held ~= ARGV[4] then
  if held then
    return redis.error_reply('STALEHANDLE the message was received again or its invisible duration changed: '
      .. 'use the newest receipt handle')
  end
  return redis.error_reply('STALEHANDLE the message is no longer in flight: acknowledged already or dead-lettered')
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
if ARGV[5] == '1' then
  redis.call('XDEL', KEYS[1], ARGV[3])
end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
if ARGV[6] and ARGV[6] ~= '' then
  rmq_trace_add(KEYS[4], ARGV[6], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14], ARGV[15],
    ARGV[16])
  rmq_trace_trim(KEYS[4], ARGV[7])
end
return 1
