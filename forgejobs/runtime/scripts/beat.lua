-- beat: renew the leases of a process's live slots on one queue, timed by the server's clock.
--
-- KEYS[1]  workers zset, slot -> lease expiry ms   (forgejobs:{q}:workers)
-- ARGV[1]  lease in ms
-- ARGV[2..] slot ids
-- Returns the number of slots that had no lease entry (recovered meanwhile, or new).
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local added = 0
for i = 2, #ARGV do
    added = added + redis.call('ZADD', KEYS[1], expiry, ARGV[i])
end
return added
