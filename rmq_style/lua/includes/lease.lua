-- Fencing: every orderly write first checks that the caller still holds the
-- queue's lease (the lock key holds "member/token" of the current owner).
local function rmq_check_lease(lock, value)
  if redis.call('GET', lock) ~= value then
    return redis.error_reply('FENCED the lease of this queue is held by someone else')
  end
  return nil
end

-- Acknowledge ARGV[first..] on `stream` (and delete them with `delete` == '1': retry stream
-- entries are copies); clear the held record when the held entry is among them.
local function rmq_ack_from(stream, held, group, first, delete)
  if #ARGV < first then
    return 0
  end
  local ids = {}
  for i = first, #ARGV do
    ids[#ids + 1] = ARGV[i]
  end
  local n = redis.call('XACK', stream, group, unpack(ids))
  if delete == '1' then
    redis.call('XDEL', stream, unpack(ids))
  end
  local blocked = redis.call('HGET', held, 'offset')
  if blocked then
    for _, id in ipairs(ids) do
      if id == blocked then
        redis.call('DEL', held)
        break
      end
    end
  end
  return n
end
