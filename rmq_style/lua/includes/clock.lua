-- Redis server time in ms: the only clock that decides when something is due.
local function rmq_now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
