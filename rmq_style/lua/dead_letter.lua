--[[
  dead_letter: acknowledge a delivered message and append it, with the reason,
  to the group's dead-letter stream of its queue (one step).

  Input:
    KEYS[1] source   rmq:{T:i}:s or rmq:{T:i}:rs:G   stream the entry was read from
    KEYS[2] dlq      rmq:{T:i}:dlq:G
    ARGV[1] group
    ARGV[2] entry id
    ARGV[3] '1' to delete the entry after the ack (retry stream entries), '0' to keep it
    ARGV[4] msg id
    ARGV[5] packed fields q r b t k p c d o (o = offset in the topic's queue)
    ARGV[6] topic
    ARGV[7] queue id
    ARGV[8] reason

  Output:
    the dead-letter entry id, or 0 when the entry was not pending (nothing written)
]]
--@include clock
--@include append
--@include dead_letter_entry

return rmq_dead_letter(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
