-- Acknowledge a delivered entry and append it, with the reason, to the group's
-- dead-letter stream: returns the dead-letter entry id, or 0 when the entry was
-- not pending (handled elsewhere: nothing written). `packed` holds q r b t k p c d o.
local function rmq_dead_letter(source, dlq, group, entry_id, delete, msg_id, packed, topic, queue, reason)
  -- the write first, the ack last: a failed XADD leaves the entry pending, never lost
  if #redis.call('XPENDING', source, group, entry_id, entry_id, 1) == 0 then
    return 0
  end
  local f = rmq_unpack(packed)
  local id = redis.call('XADD', dlq, '*',
    'i', msg_id, 'q', f[1], 'r', f[2], 'b', f[3], 't', f[4], 'k', f[5], 'p', f[6], 'c', f[7], 'd', f[8],
    'topic', topic, 'queue', queue, 'offset', f[9], 'group', group, 'reason', reason,
    'dead_at', rmq_now_ms())
  redis.call('XACK', source, group, entry_id)
  if delete == '1' then
    redis.call('XDEL', source, entry_id)
  end
  return id
end
