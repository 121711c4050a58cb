-- cancel: cancel one job. A waiting, parked, delayed or stalled job is taken off its structure and
-- recorded as cancelled at once; a running one is marked (`x` on its hash) and put on the cancel
-- requests, which its worker's heartbeat reads (beat.lua): the handler sees ctx.cancelled and the job
-- ends as cancelled. A finished job is left as it is.
--
-- KEYS: the queue's standard keys (see common.lua), and:
-- KEYS[17] stalled list, KEYS[18] event stream, KEYS[19] metrics hash, KEYS[20] cancelled zset,
-- KEYS[21] cancel requests set
-- ARGV[1]  job key prefix (forgejobs:{q}:job:)
-- ARGV[2]  concurrency-key prefix (forgejobs:{q}:ck:)
-- ARGV[3]  the job's id
-- ARGV[4]  how long to keep the cancelled job's record, ms
-- ARGV[5]  the caller's clock, ms since the epoch (the finish time and the event's time)
-- ARGV[6]  the event stream's approximate cap, "0" to write no event
-- ARGV[7]  the queue's name (for the event)
-- Returns {outcome, name, status}: outcome "cancelled" (done now), "requested" (it runs: its worker
-- will stop it), "already" (a cancel was asked for before), "finished" (status says how), "unknown".
local now = tonumber(ARGV[5])
local prefix, id, keep = ARGV[1], ARGV[3], ARGV[4]

-- @include common
-- @include metrics

local jk = prefix .. id
local fields = redis.pcall('HMGET', jk, 'd', 's', 'p', 'ck', 'x')
if type(fields) ~= 'table' or fields.err or (not fields[1] and not fields[2]) then
    return {'unknown', false, false}
end
local ok, envelope = pcall(cjson.decode, fields[1] or '')
if not ok or type(envelope) ~= 'table' then envelope = {} end
local name = tostring(envelope['name'] or '?')
local attempt = tostring(envelope['attempt'] or '1')
if redis.call('HEXISTS', KEYS[1], id) == 1 then
    if fields[5] then return {'already', name, fields[2] or false} end
    redis.call('HSET', jk, 'x', keep)
    redis.call('SADD', KEYS[21], id)
    return {'requested', name, fields[2] or false}
end
local removed = redis.call('ZREM', KEYS[4], id)
if removed == 0 then
    local p = tonumber(fields[3]) or 5
    if p >= 1 and p <= 10 then removed = redis.call('LREM', KEYS[6 + p], 0, id) end
end
if removed == 0 and fields[4] and fields[4] ~= '' then
    removed = redis.call('LREM', ARGV[2] .. fields[4] .. ':wait', 0, id)
end
if removed == 0 then removed = redis.call('LREM', KEYS[17], 0, id) end
if removed == 0 then
    for i = 7, 16 do
        removed = removed + redis.call('LREM', KEYS[i], 0, id)
    end
end
if removed == 0 then return {'finished', name, fields[2] or false} end
hset(jk, 's', 'cancelled', 'ft', now)
redis.call('HDEL', jk, 'x')
redis.call('ZADD', KEYS[20], now + tonumber(keep), id)
metric_count(KEYS[19], 'cancelled', name)
if ARGV[6] ~= '0' then
    redis.call('XADD', KEYS[18], 'MAXLEN', '~', ARGV[6], '*', 'kind', 'cancelled', 'job_id', id, 'name', name,
        'queue', ARGV[7], 'attempt', attempt, 'at', tostring(now), 'data', '{}')
end
return {'cancelled', name, 'cancelled'}
