--[[
  idem_done: the listener calls of these marks succeeded: each becomes "consumed" for the
  retention, whoever holds it now (the work is done; a later copy is a duplicate).

  Input:
    KEYS[1] marks    rmq:{T:idem:G}:   the marks' common prefix (idem_claim.lua)
    ARGV[1] retention in ms
    ARGV[2..] the dedup keys

  Output:
    the number of marks written
]]

local prefix, retention = KEYS[1], ARGV[1]
for i = 2, #ARGV do
  redis.call('SET', prefix .. ARGV[i], 'consumed', 'PX', retention)
end
return #ARGV - 1
