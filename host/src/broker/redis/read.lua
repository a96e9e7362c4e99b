-- Read a channel's history: where its stream stands and some of its
-- entries, in one consistent view.
--
-- KEYS[1]  the stream (see publish.lua)
-- KEYS[2]  the stream's meta hash
-- ARGV[1]  what to read:
--            "now"    nothing but the position
--            "since"  every entry after ARGV[6] (offset) of epoch ARGV[5]
--            "last"   the newest entry
--            "page"   the ARGV[6] (limit) newest entries below offset
--                     ARGV[5] ("" for the newest), newest first
-- ARGV[2]  how old an entry may be (ms): older ones are never returned
-- ARGV[3]  how long the meta hash outlives this read (ms)
-- ARGV[4]  the epoch to start with if the channel has none (or lost it)
--
-- Returns {epoch, last offset, status, offset, data, offset, data, ...};
-- status is "ok", "too-old" or "epoch-changed" (for "since").
local epoch = current_epoch(ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local last = tonumber(redis.call('HGET', KEYS[2], 'offset'))
local now = redis.call('TIME')
local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[2])
local out = {epoch, last, 'ok'}

local function keep(entries)
  for _, entry in ipairs(entries) do
    local fields, at, data = entry[2], 0, ''
    for i = 1, #fields, 2 do
      if fields[i] == 't' then
        at = tonumber(fields[i + 1])
      elseif fields[i] == 'd' then
        data = fields[i + 1]
      end
    end
    if at >= oldest then
      out[#out + 1] = tonumber(string.match(entry[1], '^(%d+)'))
      out[#out + 1] = data
    end
  end
end

local mode = ARGV[1]
if mode == 'since' then
  local from = tonumber(ARGV[6])
  if ARGV[5] ~= epoch or from > last then
    out[3] = 'epoch-changed'
  elseif from < last then
    keep(redis.call('XRANGE', KEYS[1], (from + 1) .. '-0', '+'))
    if out[4] ~= from + 1 then
      out = {epoch, last, 'too-old'}
    end
  end
elseif mode == 'last' then
  keep(redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1))
elseif mode == 'page' then
  local newest = '+'
  if ARGV[5] ~= '' then
    newest = '(' .. ARGV[5] .. '-0'
  end
  keep(redis.call('XREVRANGE', KEYS[1], newest, '-', 'COUNT', ARGV[6]))
end
return out
