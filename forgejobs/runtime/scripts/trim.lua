-- trim: retention for one finished set (done or failed) of one queue: delete the jobs past their TTL,
-- beyond the newest `count`, or finished longer than `age` ago. At most ARGV[5] jobs per call.
--
-- KEYS[1]  done or failed zset, id -> expiry ms
-- ARGV[1]  job key prefix (forgejobs:{q}:job:)
-- ARGV[2]  keep at most this many, "" for no count limit
-- ARGV[3]  keep none finished more than this many ms ago, "" for no age limit
-- ARGV[4]  log key prefix (forgejobs:log:); a deleted job's log goes with it
-- ARGV[5]  at most this many deletions in one call
-- Returns the number of jobs deleted.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local budget = tonumber(ARGV[5])
local doomed, seen = {}, {}
local function doom(id)
    if not seen[id] and #doomed < budget then
        seen[id] = true
        doomed[#doomed + 1] = id
    end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, budget)) do doom(id) end
if ARGV[2] ~= '' then
    local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[2])
    if excess > 0 then
        for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, math.min(excess, budget) - 1)) do doom(id) end
    end
end
if ARGV[3] ~= '' then
    local oldest = now - tonumber(ARGV[3])
    for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, budget - 1)) do
        local ft = tonumber(redis.pcall('HGET', ARGV[1] .. id, 'ft'))
        if ft and ft < oldest then doom(id) end
    end
end
if #doomed == 0 then return 0 end
redis.call('ZREM', KEYS[1], unpack(doomed))
for _, id in ipairs(doomed) do
    redis.call('DEL', ARGV[1] .. id, ARGV[4] .. id)
end
return #doomed
