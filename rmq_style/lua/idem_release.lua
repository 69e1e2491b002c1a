--[[
  idem_release: the listener calls of these marks failed (or never ran): each mark the caller
  still holds is deleted, so the retry runs again. A mark claimed by another owner since
  (our lease lapsed) or already "consumed" is left alone.

  Input:
    KEYS[1] marks    rmq:{T:idem:G}:   the marks' common prefix (idem_claim.lua)
    ARGV[1] the caller's owner value "consuming:<owner>"
    ARGV[2..] the dedup keys

  Output:
    the number of marks deleted
]]

local deleted = 0
for i = 2, #ARGV do
  local mark = KEYS[1] .. ARGV[i]
  if redis.call('TYPE', mark)['ok'] == 'string' and redis.call('GET', mark) == ARGV[1] then
    redis.call('DEL', mark)
    deleted = deleted + 1
  end
end
return deleted
