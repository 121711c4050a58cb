-- workflow: the atomic steps of one workflow run (forgejobs/workflows/store.py documents the fields and
-- mirrors this script for the fake queue). Every key is the run's, tagged {wf:<run>}: one Cluster slot.
--
-- KEYS[1]  the run hash                               (forgejobs:{wf:<run>}:run)
-- KEYS[2]  steps released but not yet enqueued, a set (forgejobs:{wf:<run>}:ready)
-- KEYS[3]  instances in the order they completed      (forgejobs:{wf:<run>}:order)
-- ARGV[1]  the operation; ARGV[2] now (ms); then:
--   create  n, n field/value pairs, then the steps ready at once -> 1 stored, 0 the run exists
--   expand  step, count          -> steps released (a fan-out over nothing finishes its step at once)
--   enqueued step                -> 1
--   finish  step, index, mode (done, failed, cancelled), output JSON, error
--           -> {verdict, released...}: "dup" (recorded before: nothing happens twice), "ok", "ignored"
--              (the run no longer runs), or the run's new status when this outcome ended it. A run past
--              its deadline (`dl`) is stopped as timed_out before the outcome is counted.
--   stop    status, reason       -> {"not running"}, {"stopping"} (instances still running: they report
--           first), {status} or {"compensating", "~0"}
local run, ready, order = KEYS[1], KEYS[2], KEYS[3]
local op, now = ARGV[1], ARGV[2]

local function step_done(step)
    redis.call('HSET', run, 'ss:' .. step, 'done')
    local left = redis.call('HINCRBY', run, 'sl', -1)
    local running = redis.call('HGET', run, 'st') == 'running'
    local released = {}
    for dep in string.gmatch(redis.call('HGET', run, 'deps:' .. step) or '', '%S+') do
        if redis.call('HINCRBY', run, 'p:' .. dep, -1) == 0 and running then
            redis.call('SADD', ready, dep)
            redis.call('HSET', run, 'ss:' .. dep, 'ready')
            released[#released + 1] = dep
        end
    end
    if left == 0 and running then redis.call('HSET', run, 'st', 'succeeded', 't1', now) end
    return released
end

-- Compensate the completed steps that have a compensation, newest first; or end as `why` if none has.
local function compensate()
    local why = redis.call('HGET', run, 'why')
    local done = redis.call('LRANGE', order, 0, -1)
    local comps = {}
    for j = #done, 1, -1 do
        local step = string.match(done[j], '^(.*):%d+$')
        if redis.call('HGET', run, 'cp:' .. step) == '1' then comps[#comps + 1] = done[j] end
    end
    if #comps == 0 then
        redis.call('HSET', run, 'st', why, 't1', now)
        return {why}
    end
    redis.call('HSET', run, 'st', 'compensating', 'nc', #comps)
    for k = 1, #comps do redis.call('HSET', run, 'c:' .. (k - 1), comps[k]) end
    redis.call('SADD', ready, '~0')
    return {'compensating', '~0'}
end

-- Instances started and not yet reported.
local function outstanding()
    local n = 0
    for step in string.gmatch(redis.call('HGET', run, 'steps') or '', '%S+') do
        n = n + math.max(0, tonumber(redis.call('HGET', run, 'l:' .. step) or '0'))
    end
    return n
end

-- End the run as `status`: nothing more is released; once the instances still running have reported
-- ("stopping" until then), the completed steps' compensations run.
local function stop(status, reason)
    redis.call('DEL', ready)
    redis.call('HSET', run, 'err', reason, 'why', status)
    if outstanding() == 0 then return compensate() end
    redis.call('HSET', run, 'st', 'stopping')
    return {'stopping'}
end

if op == 'create' then
    if redis.call('EXISTS', run) == 1 then return 0 end
    local n = tonumber(ARGV[3])
    redis.call('HSET', run, unpack(ARGV, 4, 3 + 2 * n))
    if #ARGV > 3 + 2 * n then redis.call('SADD', ready, unpack(ARGV, 4 + 2 * n)) end
    return 1
elseif op == 'expand' then
    local step, count = ARGV[3], tonumber(ARGV[4])
    if redis.call('HSETNX', run, 'n:' .. step, count) == 0 then return {} end
    redis.call('HSET', run, 'l:' .. step, count, 'ss:' .. step, 'running')
    if count == 0 and string.sub(step, 1, 1) ~= '~' then return step_done(step) end
    return {}
elseif op == 'enqueued' then
    redis.call('SREM', ready, ARGV[3])
    return 1
elseif op == 'finish' then
    local step, index, mode, output, err = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
    if redis.call('EXISTS', run) == 0 then return {'ignored'} end
    if redis.call('HSETNX', run, 'd:' .. step .. ':' .. index, mode) == 0 then return {'dup'} end
    if output ~= '' then redis.call('HSET', run, 'o:' .. step .. ':' .. index, output) end
    if err ~= '' then redis.call('HSET', run, 'e:' .. step .. ':' .. index, err) end
    local status = redis.call('HGET', run, 'st')
    if string.sub(step, 1, 1) == '~' then  -- a compensation: start the next, or end the run
        local k = tonumber(string.sub(step, 2))
        redis.call('HSET', run, 'ss:' .. step, 'done')
        if k + 1 < tonumber(redis.call('HGET', run, 'nc') or '0') then
            redis.call('SADD', ready, '~' .. (k + 1))
            return {'ok', '~' .. (k + 1)}
        end
        local final = redis.call('HGET', run, 'why') or 'failed'
        redis.call('HSET', run, 'st', final, 't1', now)
        return {final}
    end
    if status ~= 'running' and status ~= 'stopping' then return {'ignored'} end
    local stopped = false
    local deadline = tonumber(redis.call('HGET', run, 'dl') or '0') or 0
    if status == 'running' and deadline > 0 and tonumber(now) > deadline then  -- past its timeout: stop first
        local seconds = (deadline - tonumber(redis.call('HGET', run, 't0'))) / 1000
        stop('timed_out', "the workflow's timeout (" .. string.format('%g', seconds) .. 's) passed')
        status, stopped = redis.call('HGET', run, 'st'), true
    end
    if mode == 'done' then redis.call('RPUSH', order, step .. ':' .. index) end
    local left = redis.call('HINCRBY', run, 'l:' .. step, -1)
    if status == 'stopping' then
        if outstanding() == 0 then return compensate() end
        if stopped then return {'stopping'} end
        return {'ignored'}
    end
    if mode ~= 'done' and redis.call('HGET', run, 'f:' .. step) ~= 'continue' then
        return stop('failed', 'step ' .. step .. '[' .. index .. '] ' .. mode .. ': ' .. err)
    end
    local released = {}
    if left == 0 then released = step_done(step) end
    local after = redis.call('HGET', run, 'st')
    local verdict = 'ok'
    if after ~= 'running' then verdict = after end
    table.insert(released, 1, verdict)
    return released
elseif op == 'stop' then
    if redis.call('HGET', run, 'st') ~= 'running' then return {'not running'} end
    return stop(ARGV[3], ARGV[4])
end
return redis.error_reply('workflow.lua: unknown operation ' .. tostring(op))
