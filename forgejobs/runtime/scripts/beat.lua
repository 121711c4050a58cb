-- beat: renew the leases of a process's live slots on one queue, timed by the server's clock, and say
-- which running jobs someone asked to cancel (the worker tells their handlers through ctx.cancelled).
--
-- KEYS[1]  workers zset, slot -> lease expiry ms   (forgejobs:{q}:workers)
-- KEYS[2]  cancel requests, a set of job ids        (forgejobs:{q}:cancels; optional)
-- KEYS[3]  active hash, id -> "<slot>|<start ms>"   (forgejobs:{q}:active; with KEYS[2])
-- ARGV[1]  lease in ms
-- ARGV[2..] slot ids
-- Returns {the number of slots that had no lease entry (recovered meanwhile, or new), ids to cancel...}.
-- A request whose job no longer runs is dropped here (fetch.lua honours it if the job comes back to wait).
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local added = 0
for i = 2, #ARGV do
    added = added + redis.call('ZADD', KEYS[1], expiry, ARGV[i])
end
local reply = {added}
if KEYS[2] then
    for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
        if redis.call('HEXISTS', KEYS[3], id) == 1 then
            reply[#reply + 1] = id
        else
            redis.call('SREM', KEYS[2], id)
        end
    end
end
return reply
