--[[
  idem_claim: claim the dedup marks of a group's messages before their listener calls
  (docs/idempotence.md). All marks of one call share a slot: the topic's and group's.

  Input:
    KEYS[1] marks    rmq:{T:idem:G}:   the marks' common prefix; a mark is this prefix followed
                     by its dedup key (string "consuming:<owner>" or "consumed")
    ARGV[1] the caller's owner value "consuming:<owner>"
    ARGV[2] lease in ms (how long the claim lasts unless renewed)
    ARGV[3] longest remaining lease a live "consuming" mark may have, in ms (longer or none: junk)
    ARGV[4..] the dedup keys, one per message

  Output:
    a string, one letter per dedup key:
      r  claimed: run the listener
      d  "consumed": a duplicate, acked without a call
      p  "consuming:..." (another call, or the same key earlier in this list): try again later
      j  a junk mark (another type, an unknown value, a "consuming" mark that would never lapse):
         replaced by our claim, run the listener
]]

local prefix, owner, lease = KEYS[1], ARGV[1], ARGV[2]
local out = {}
for i = 4, #ARGV do
  local mark = prefix .. ARGV[i]
  if redis.call('SET', mark, owner, 'NX', 'PX', lease) then
    out[#out + 1] = 'r'
  else
    local value = false
    if redis.call('TYPE', mark)['ok'] == 'string' then
      value = redis.call('GET', mark)
    end
    local verdict = 'j'
    if value == 'consumed' then
      verdict = 'd'
    elseif value and string.sub(value, 1, 10) == 'consuming:' then
      local left = redis.call('PTTL', mark)
      if left > 0 and left <= tonumber(ARGV[3]) then
        verdict = 'p'
      end
    end
    if verdict == 'j' then
      redis.call('SET', mark, owner, 'PX', lease)
    end
    out[#out + 1] = verdict
  end
end
return table.concat(out)
