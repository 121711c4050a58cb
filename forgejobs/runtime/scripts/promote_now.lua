-- promote_now: start one delayed job now instead of at its due time (the dashboard's "promote"): it goes
-- to the back of its priority's wait list, as promote.lua moves it when due, with `q` (ready since) now.
--
-- KEYS: the queue's standard keys (see common.lua); uses [3] marker, [4] delayed, [7..16] wait lists; and
-- KEYS[17] the job's hash
-- ARGV[1]  the job's id
-- Returns 1 when moved, 0 when the job is not delayed (started, finished or deleted meanwhile, or unknown).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
if redis.call('ZSCORE', KEYS[4], id) == false then return 0 end
redis.call('ZREM', KEYS[4], id)
if redis.call('TYPE', KEYS[17])['ok'] ~= 'hash' then
    if redis.call('EXISTS', KEYS[17]) == 0 then return 0 end  -- deleted meanwhile: nothing to run
    redis.call('RPUSH', KEYS[11], id)  -- not a job record: fetch dead-letters it with its bytes
else
    local p = tonumber(redis.call('HGET', KEYS[17], 'p')) or 5
    if p < 1 or p > 10 then p = 5 end
    redis.call('HSET', KEYS[17], 's', 'queued', 'q', now)
    redis.call('RPUSH', KEYS[6 + p], id)
end
redis.call('ZADD', KEYS[3], 0, '0')
return 1
