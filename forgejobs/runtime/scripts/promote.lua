-- promote: move delayed jobs and retries that are due onto their wait lists.
--
-- KEYS: the queue's standard keys (see common.lua); uses [3] marker, [4] delayed, [7..16] wait lists.
-- ARGV[1]  job key prefix (forgejobs:{q}:job:)
-- ARGV[2]  at most this many jobs in one call
-- A promoted job's `q` (when it became ready, for the wait-time metric) is its due time.
-- Returns {moved, due ms of the next delayed job or false}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix = ARGV[1]

-- @include common

local pairs_ = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local due = {}
for i = 1, #pairs_, 2 do
    local id, at = pairs_[i], pairs_[i + 1]
    due[#due + 1] = id
    local kind = redis.call('TYPE', prefix .. id)['ok']
    if kind == 'hash' then
        redis.call('HSET', prefix .. id, 's', 'queued', 'q', at)
        redis.call('RPUSH', KEYS[6 + priority_of(id)], id)
    elseif kind ~= 'none' then  -- not a job record: left as it is, for fetch to dead-letter with its bytes
        redis.call('RPUSH', KEYS[11], id)
    end  -- none: deleted meanwhile, nothing to run
end
if #due > 0 then
    redis.call('ZREM', KEYS[4], unpack(due))
    redis.call('ZADD', KEYS[3], 0, '0')
end
local nxt = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
return {#due, nxt[2] or false}
