-- Queue offset (field q) of a stream entry {id, {field, value, ...}}; nil without one, or when
-- it is not 1 to 15 decimal digits (an entry no producer of ours wrote: '1e3', '-1', '1.5' or
-- a number too large for a double to hand to ENTRIESREAD as an integer).
local function rmq_entry_q(entry)
  local fields = entry[2]
  for j = 1, #fields, 2 do
    if fields[j] == 'q' then
      local q = fields[j + 1]
      if #q <= 15 and string.match(q, '^%d+$') then
        return tonumber(q)
      end
      return nil
    end
  end
  return nil
end
