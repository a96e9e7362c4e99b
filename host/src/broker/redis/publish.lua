-- Number a publication of a channel with history, keep it in the channel's
-- stream and publish it to every host, atomically (so that every host
-- receives a channel's publications in offset order).
--
-- KEYS[1]  the stream: entries "<offset>-0" with fields t (ms) and d (data)
-- KEYS[2]  the stream's meta hash: epoch, offset (the last one given)
-- ARGV[1]  the pub/sub channel
-- ARGV[2]  the data (JSON text, or "" for none)
-- ARGV[3]  entries kept (history-size)
-- ARGV[4]  how long the stream outlives its last publication (ms)
-- ARGV[5]  how long the meta hash does (ms)
-- ARGV[6]  the epoch to start with if the channel has none (or lost it)
-- ARGV[7]  PUBLISH, or SPUBLISH on a cluster (the channel is in KEYS' slot)
-- ARGV[8]  the sending host's id, ARGV[9] the publication's number: the
--          meta hash keeps the last number per host (field `s:<host id>`),
--          and a publication sent again (a command retried after a lost
--          answer) is not numbered twice
--
-- Publishes "#<offset>:<epoch>\n<data>" and returns the offset.
local epoch = current_epoch(ARGV[6])
local sender, number = 's:' .. ARGV[8], tonumber(ARGV[9])
if number <= tonumber(redis.call('HGET', KEYS[2], sender) or '0') then
  return tonumber(redis.call('HGET', KEYS[2], 'offset'))
end
redis.call('HSET', KEYS[2], sender, number)
local offset = redis.call('HINCRBY', KEYS[2], 'offset', 1)
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], offset .. '-0', 't', ms, 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call(ARGV[7], ARGV[1], '#' .. offset .. ':' .. epoch .. '\n' .. ARGV[2])
return offset
