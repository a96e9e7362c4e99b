-- Start a new epoch for a channel whose history lost publications that a
-- host delivered (a failover to a replica that had not received them yet):
-- the old epoch's offsets would be given again to other publications, so
-- positions in it mean nothing any more. Only if the channel is still in
-- that epoch: every host that notices asks, and the first one's new epoch
-- stands.
--
-- KEYS[1]  the stream (see publish.lua)
-- KEYS[2]  the stream's meta hash
-- ARGV[1]  the epoch whose history lost publications
-- ARGV[2]  the new epoch
-- ARGV[3]  how long the meta hash is kept (ms)
--
-- Returns the channel's epoch.
if redis.call('HGET', KEYS[2], 'epoch') == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
local epoch = current_epoch(ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return epoch
