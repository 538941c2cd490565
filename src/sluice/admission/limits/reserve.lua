-- Check and reserve every bucket of one admission atomically (GCRA rate buckets + slot sets).
-- KEYS: rate bucket keys, then slot-set keys.
-- ARGV: ticket, slot_ttl_us, n_rate, then per rate bucket: limit, period_us, cost; then per slot
--       set: limit.
-- Returns: {allowed, retry_after_us, then per rate bucket: remaining, reset_us;
--           then per slot set: free}
-- Time is the Redis server's clock, so replicas with skewed clocks agree.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ticket = ARGV[1]
local slot_ttl = tonumber(ARGV[2])
local nrate = tonumber(ARGV[3])
local nslot = #KEYS - nrate
local allowed = 1
local retry = 0
local out = {}
local new_tats = {}
for i = 1, nrate do
  local a = 3 + (i - 1) * 3
  local limit = tonumber(ARGV[a + 1])
  local period = tonumber(ARGV[a + 2])
  local cost = tonumber(ARGV[a + 3])
  local interval = period / limit
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  local base = math.max(tat, now)
  local new = base + cost * interval
  local free
  local reset
  if new - now <= period or base <= now then
    new_tats[i] = new
    free = period - (new - now)
    reset = new - now
  else
    allowed = 0
    local wait
    if cost * interval > period then
      wait = base - now
    else
      wait = new - period - now
    end
    if wait > retry then retry = wait end
    free = period - (base - now)
    reset = base - now
  end
  local remaining = math.floor(free / interval + 1e-9)
  if remaining < 0 then remaining = 0 end
  out[#out + 1] = remaining
  out[#out + 1] = math.floor(reset)
end
local off = 3 + nrate * 3
for j = 1, nslot do
  local key = KEYS[nrate + j]
  local limit = tonumber(ARGV[off + j])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local free = limit - redis.call('ZCARD', key)
  if free <= 0 then
    allowed = 0
    -- Slots free when requests finish; their expiry is only a safety net: retry in 1 s.
    if 1000000 > retry then retry = 1000000 end
    free = 0
  end
  out[#out + 1] = free
end
if allowed == 1 then
  for i = 1, nrate do
    local ttl = math.ceil((new_tats[i] - now) / 1000) + 1000
    redis.call('SET', KEYS[i], string.format('%.0f', new_tats[i]), 'PX', ttl)
  end
  for j = 1, nslot do
    local key = KEYS[nrate + j]
    redis.call('ZADD', key, now + slot_ttl, ticket)
    redis.call('PEXPIRE', key, math.ceil(slot_ttl / 1000) + 1000)
  end
end
local result = {allowed, math.floor(retry)}
for k = 1, #out do result[#result + 1] = out[k] end
return result
