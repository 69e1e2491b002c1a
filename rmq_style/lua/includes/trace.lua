-- Message trace records (docs/storage.md, "Message trace"); the script includes clock too.
-- rmq_trace_add(key, cap, i, e, g, h, a, s, d, o, x): one record, the stream capped MAXLEN ~ cap
local function rmq_trace_add(key, cap, i, e, g, h, a, s, d, o, x)
  redis.call('XADD', key, 'MAXLEN', '~', cap, '*', 'i', i, 'e', e, 'g', g, 'h', h, 'a', a, 's', s, 'd', d,
    'o', o, 'x', x)
end

-- rmq_trace_trim(key, age): records older than age ms (server time) trimmed, MINID ~; 0 or none: no bound
local function rmq_trace_trim(key, age)
  age = tonumber(age)
  if age and age > 0 then
    redis.call('XTRIM', key, 'MINID', '~', math.max(rmq_now_ms() - age, 0))
  end
end
