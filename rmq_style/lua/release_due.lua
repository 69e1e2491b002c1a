--[[
  release_due: move the due delayed messages of one queue into its stream.

  Input:
    KEYS[1] delay    rmq:{T:i}:delay
    KEYS[2] delayed  rmq:{T:i}:delayed
    KEYS[3] stream   rmq:{T:i}:s
    KEYS[4] seq      rmq:{T:i}:seq
    KEYS[5] trimmed  rmq:{T:i}:trimmed   entries trimmed before a group read them (maxlen)
    ARGV[1] at most this many messages
    ARGV[2] trim mode, ARGV[3] trim value (as in send)
    ARGV[4] 'all': release every held message, due or not (optional; tests fast-forward delays)

  Output:
    {moved, next due ms or -1 when nothing else is held, server now ms}
]]
--@include clock
--@include entry
--@include trim
--@include append
--@include release

local moved, nxt, now = rmq_release(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3],
  ARGV[4] == 'all')
return {moved, nxt, now}
