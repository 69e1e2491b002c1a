--[[
  adopt_entries: a member takes over the entries pending at the consumer of a member
  that is gone. Only entries idle for at least the min idle are taken. XPENDING and
  XCLAIM run in one script: nothing is claimed that was not listed.

  Input:
    KEYS[1] stream   rmq:{T:i}:s or rmq:{T:i}:rs:G
    ARGV[1] group
    ARGV[2] the consumer name of the member that is gone
    ARGV[3] the consumer name of the member taking the entries over
    ARGV[4] min idle in ms
    ARGV[5] at most this many entries

  Output:
    {listed ids, claimed ids}; a listed id not claimed was trimmed while pending
    (XCLAIM drops those from the pending entries list)
]]

local rows = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[4], '-', '+', ARGV[5], ARGV[2])
local ids = {}
for i, row in ipairs(rows) do
  ids[i] = row[1]
end
if #ids == 0 then
  return {ids, {}}
end
-- one id per XCLAIM: called with several from a script, Redis 7 dropped only one trimmed id
-- per call (test_trim_accounting, dead member)
local claimed = {}
for _, id in ipairs(ids) do
  local got = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], ARGV[4], id, 'JUSTID')
  if #got > 0 then
    claimed[#claimed + 1] = got[1]
  end
end
return {ids, claimed}
