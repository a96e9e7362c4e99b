-- Apply a batch all or none (after the prelude in sweep.lua).
-- ARGV[3], ARGV[4]: the plugin's quota (keys, bytes); ARGV[5]: the
-- operations as JSON, each ["check", key, expected|null],
-- ["set", key, value, "ttl_ms"|null], ["delete", key],
-- ["incr", key, "delta"] or ["expire", key, "ttl_ms"|null] (numbers as
-- text: Lua's are doubles). Returns {"ok", keys, bytes, result...},
-- {"conflict", index, keys, bytes} or {"error", kind, detail}; on anything
-- but "ok" nothing has changed.
local max_keys, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[4])
local ops = cjson.decode(ARGV[5])

-- Each key's value before the batch, to undo it and to count the change.
local touched, order = {}, {}
local function touch(key)
  if touched[key] == nil then
    local vkey = vbase .. key
    local value = redis.call('GET', vkey)
    if not value and redis.call('HEXISTS', sizes, key) == 1 then
      forget(key)
    end
    local ttl = value and redis.call('PTTL', vkey) or -2
    -- A value written by a build without the index (before 0.2) is not
    -- counted yet: count it as new when it is written.
    local counted = value and redis.call('ZSCORE', index, key) and value
    touched[key] = { value = value, ttl = ttl, counted = counted }
    order[#order + 1] = key
  end
end

local function undo()
  for _, key in ipairs(order) do
    local before, vkey = touched[key], vbase .. key
    if not before.value then
      redis.call('DEL', vkey)
    elseif before.ttl > 0 then
      redis.call('SET', vkey, before.value, 'PX', before.ttl)
    else
      redis.call('SET', vkey, before.value)
    end
  end
end

local results = {}
for i, op in ipairs(ops) do
  local kind, key = op[1], op[2]
  local vkey = vbase .. key
  touch(key)
  if kind == 'check' then
    local expected = op[3]
    if expected == cjson.null then expected = false end
    if redis.call('GET', vkey) ~= expected then
      undo()
      return { 'conflict', i - 1, redis.call('HGET', usage, 'keys') or '0',
        redis.call('HGET', usage, 'bytes') or '0' }
    end
    results[i] = ''
  elseif kind == 'set' then
    if op[4] == cjson.null then
      redis.call('SET', vkey, op[3])
    else
      redis.call('SET', vkey, op[3], 'PX', op[4])
    end
    results[i] = ''
  elseif kind == 'delete' then
    results[i] = tostring(redis.call('DEL', vkey))
  elseif kind == 'incr' then
    local reply = redis.pcall('INCRBY', vkey, op[3])
    if type(reply) == 'table' and reply.err then
      undo()
      if string.find(reply.err, 'overflow') then
        return { 'error', 'overflow', key }
      end
      return { 'error', 'not-an-integer', key }
    end
    results[i] = redis.call('GET', vkey)
  elseif kind == 'expire' then
    local exists = redis.call('EXISTS', vkey)
    if op[3] == cjson.null then
      redis.call('PERSIST', vkey)
    else
      redis.call('PEXPIRE', vkey, op[3])
    end
    results[i] = tostring(exists)
  end
end

-- Count the change, refuse it over the quota, then index it.
local dkeys, dbytes, after = 0, 0, {}
for _, key in ipairs(order) do
  local before = touched[key].counted
  local value = redis.call('GET', vbase .. key)
  after[key] = value
  dkeys = dkeys + (value and 1 or 0) - (before and 1 or 0)
  dbytes = dbytes + (value and #key + #value or 0) - (before and #key + #before or 0)
end
local keys = tonumber(redis.call('HGET', usage, 'keys') or '0') + dkeys
local bytes = tonumber(redis.call('HGET', usage, 'bytes') or '0') + dbytes
if dkeys > 0 and keys > max_keys then
  undo()
  return { 'error', 'keys-quota', ARGV[3] }
end
if dbytes > 0 and bytes > max_bytes then
  undo()
  return { 'error', 'bytes-quota', ARGV[4] }
end
for _, key in ipairs(order) do
  local value, vkey = after[key], vbase .. key
  local ttl = value and redis.call('PTTL', vkey) or -2
  if value then
    redis.call('ZADD', index, 0, key)
  else
    redis.call('ZREM', index, key)
  end
  if ttl > 0 then
    redis.call('ZADD', expiry, now + ttl, key)
    redis.call('HSET', sizes, key, #key + #value)
  else
    redis.call('ZREM', expiry, key)
    redis.call('HDEL', sizes, key)
  end
end
if dkeys ~= 0 then redis.call('HINCRBY', usage, 'keys', dkeys) end
if dbytes ~= 0 then redis.call('HINCRBY', usage, 'bytes', dbytes) end
return { 'ok', tostring(keys), tostring(bytes), unpack(results) }
