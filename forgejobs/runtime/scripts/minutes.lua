-- minutes: drop the per-minute counts of one queue older than the window (run with retention).
--
-- KEYS[1]  per-minute counts hash, "<minute>|<kind>" -> count   (forgejobs:{q}:minutes)
-- ARGV[1]  keep this many minutes, the current one included
-- Returns the number of fields deleted.
local t = redis.call('TIME')
local oldest = math.floor(tonumber(t[1]) / 60) - tonumber(ARGV[1]) + 1
local doomed = {}
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    local minute = tonumber(string.match(field, '^(%d+)|'))
    if not minute or minute < oldest then doomed[#doomed + 1] = field end
end
for i = 1, #doomed, 500 do
    redis.call('HDEL', KEYS[1], unpack(doomed, i, math.min(i + 499, #doomed)))
end
return #doomed
