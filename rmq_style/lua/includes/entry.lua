-- Queue offset (field q) of a stream entry {id, {field, value, ...}}; nil without one.
local function rmq_entry_q(entry)
  local fields = entry[2]
  for j = 1, #fields, 2 do
    if fields[j] == 'q' then
      return tonumber(fields[j + 1])
    end
  end
  return nil
end
