-- remove: delete one job that has not started: waiting on its priority's list, parked behind its
-- concurrency key, or delayed (the dashboard's "delete"). A running, stalled or finished job is left.
--
-- KEYS: the queue's standard keys (see common.lua); uses [1] active, [4] delayed, [7..16] wait lists; and
-- KEYS[17] the job's hash, KEYS[18] the job's log list
-- ARGV[1]  concurrency-key prefix (forgejobs:{q}:ck:)
-- ARGV[2]  the job's id
-- Returns {outcome, status}: outcome "removed" (hash and log deleted), "running", "finished" (not on a
-- wait list nor delayed: finished, stalled or taken meanwhile; status says which), "unknown".
local id = ARGV[2]
local fields = redis.pcall('HMGET', KEYS[17], 's', 'p', 'ck')
if type(fields) ~= 'table' or fields.err or not fields[1] then return {'unknown', false} end
if redis.call('HEXISTS', KEYS[1], id) == 1 then return {'running', fields[1]} end
local removed = redis.call('ZREM', KEYS[4], id)
if removed == 0 then
    local p = tonumber(fields[2]) or 5
    if p >= 1 and p <= 10 then removed = redis.call('LREM', KEYS[6 + p], 0, id) end
end
if removed == 0 and fields[3] and fields[3] ~= '' then
    local parked = ARGV[1] .. fields[3] .. ':wait'
    removed = redis.call('LREM', parked, 0, id)
    if removed > 0 and redis.call('LLEN', parked) == 0 then redis.call('SREM', ARGV[1] .. 'parked', fields[3]) end
end
if removed == 0 then return {'finished', fields[1]} end
redis.call('DEL', KEYS[17], KEYS[18])
return {'removed', fields[1]}
