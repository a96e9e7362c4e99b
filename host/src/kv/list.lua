-- One page of a prefix listing (after the prelude in sweep.lua).
-- ARGV[3], ARGV[4]: ZRANGEBYLEX bounds; ARGV[5]: the most entries;
-- ARGV[6]: the most bytes (at least one entry is given).
-- Returns {cursor or "", key, value, key, value, ...}.
local low, high = ARGV[3], ARGV[4]
local limit, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6])
local out, count, bytes, last = {}, 0, 0, nil
for _ = 1, 10 do
  local keys = redis.call('ZRANGEBYLEX', index, low, high, 'LIMIT', 0, limit + 1)
  for _, key in ipairs(keys) do
    local value = redis.call('GET', vbase .. key)
    if value then
      if count >= limit or bytes >= max_bytes then
        return { last, unpack(out) }
      end
      count = count + 1
      bytes = bytes + #key + #value
      out[#out + 1] = key
      out[#out + 1] = value
    end
    last = key
  end
  if #keys <= limit then
    return { '', unpack(out) }
  end
  low = '(' .. last
end
-- Many expired keys in a row: give what there is and go on from there.
return { last, unpack(out) }
