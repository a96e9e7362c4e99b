-- Shared prelude of the KV scripts (see redis.rs). ARGV[1] is the prefix
-- of the plugin's value keys, ARGV[2] the prefix of its bookkeeping keys.
local vbase, mbase = ARGV[1], ARGV[2]
local index, expiry = mbase .. 'keys', mbase .. 'expiry'
local sizes, usage = mbase .. 'sizes', mbase .. 'usage'
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

-- A key Redis expired by itself: drop it from the index and the usage
-- (its size was recorded in `sizes` when it was given an expiry).
local function forget(key)
  local size = redis.call('HGET', sizes, key)
  if size then
    redis.call('HINCRBY', usage, 'keys', -1)
    redis.call('HINCRBY', usage, 'bytes', -tonumber(size))
    redis.call('HDEL', sizes, key)
  end
  redis.call('ZREM', expiry, key)
  redis.call('ZREM', index, key)
end

for _, key in ipairs(redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, 100)) do
  if redis.call('EXISTS', vbase .. key) == 0 then
    forget(key)
  end
end
