-- Where a channel's history stands: its epoch, last offset, and Redis's
-- clock (ms, to tell the entries past their TTL). Run in one transaction
-- with the XRANGE that reads the entries, so both see the same stream;
-- the entries are read outside the script because turning thousands of
-- them into Lua tables and back costs more than reading them.
--
-- KEYS[1]  the stream (see publish.lua)
-- KEYS[2]  the stream's meta hash
-- ARGV[1]  how long the meta hash outlives this read (ms)
-- ARGV[2]  the epoch to start with if the channel has none (or lost it)
local epoch = current_epoch(ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
local last = tonumber(redis.call('HGET', KEYS[2], 'offset'))
local now = redis.call('TIME')
return {epoch, last, tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)}
