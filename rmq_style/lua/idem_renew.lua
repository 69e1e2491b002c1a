--[[
  idem_renew: extend the lease of the "consuming" marks the caller still holds (calls queued or
  running longer than a lease).

  Input:
    KEYS[1] marks    rmq:{T:idem:G}:   the marks' common prefix (idem_claim.lua)
    ARGV[1] the caller's owner value "consuming:<owner>"
    ARGV[2] lease in ms
    ARGV[3..] the dedup keys

  Output:
    a string, one letter per dedup key: k kept (extended), l lost (not ours any more)
]]

local out = {}
for i = 3, #ARGV do
  local mark = KEYS[1] .. ARGV[i]
  if redis.call('TYPE', mark)['ok'] == 'string' and redis.call('GET', mark) == ARGV[1] then
    redis.call('PEXPIRE', mark, ARGV[2])
    out[#out + 1] = 'k'
  else
    out[#out + 1] = 'l'
  end
end
return table.concat(out)
