-- recover: take the jobs of slots whose lease expired (their process died, hangs, or lost Redis)
-- out of the active hash onto the stalled list, where any worker decides their fate (settle.lua).
-- Any live worker may run this at any time; two at once move each job once.
--
-- KEYS: the queue's standard keys (see common.lua), and:
-- KEYS[2]  workers zset, slot -> lease expiry ms
-- KEYS[17] stalled list
-- ARGV[1]  job key prefix (forgejobs:{q}:job:)
-- ARGV[2]  concurrency-key prefix (forgejobs:{q}:ck:)
-- Returns {jobs moved to the stalled list now, jobs on the stalled list}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix = ARGV[1]

-- @include common

local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
local dead = {}
for _, slot in ipairs(expired) do dead[slot] = true end
if #expired > 0 then redis.call('ZREM', KEYS[2], unpack(expired)) end
local entries = redis.call('HGETALL', KEYS[1])
local moved = 0
for i = 1, #entries, 2 do
    local id, owner = entries[i], entries[i + 1]
    local slot = string.match(owner, '^(.*)|') or owner
    -- a slot with no lease entry at all is as dead as one whose lease ran out
    if dead[slot] or not redis.call('ZSCORE', KEYS[2], slot) then
        redis.call('HDEL', KEYS[1], id)
        redis.call('RPUSH', KEYS[17], id)
        local ck = redis.pcall('HGET', prefix .. id, 'ck')
        if type(ck) == 'string' and ck ~= '' then release_key(ARGV[2], ck, id) end
        moved = moved + 1
    end
end
if moved > 0 then redis.call('ZADD', KEYS[3], 0, '0') end
return {moved, redis.call('LLEN', KEYS[17])}
