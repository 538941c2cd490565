-- Settle one admission: move token buckets by the unused (or extra) estimate, free its slots.
-- KEYS: token bucket keys, then slot-set keys.  ARGV: ticket, n_rate, then per token bucket:
-- delta_us (negative gives capacity back).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ticket = ARGV[1]
local nrate = tonumber(ARGV[2])
for i = 1, nrate do
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat then
    local new = tat + tonumber(ARGV[2 + i])
    if new > now then
      redis.call('SET', KEYS[i], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1000)
    else
      redis.call('DEL', KEYS[i])
    end
  end
end
for j = nrate + 1, #KEYS do
  redis.call('ZREM', KEYS[j], ticket)
end
return 1
