-- A channel's epoch, from its meta hash (KEYS[2]); when the hash is gone
-- (flushed, evicted, expired), a new epoch (`candidate`) starts at offset
-- 0, and the stream (KEYS[1]) goes with the old one: its entries must not
-- be served under the new epoch.
local function current_epoch(candidate)
  local epoch = redis.call('HGET', KEYS[2], 'epoch')
  if not epoch then
    epoch = candidate
    redis.call('HSET', KEYS[2], 'epoch', epoch, 'offset', 0)
    redis.call('DEL', KEYS[1])
  end
  return epoch
end
