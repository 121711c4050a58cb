-- enqueue: store jobs of one queue, one job type and one priority, waiting now or delayed, with
-- their "enqueued" events. A job is its hash plus its list or delayed entry, written together.
--
-- KEYS[1]  wait list of the priority        (forgejobs:{q}:wait:pNN)
-- KEYS[2]  delayed zset, id -> due ms       (forgejobs:{q}:delayed)
-- KEYS[3]  marker zset                      (forgejobs:{q}:marker)
-- KEYS[4]  event stream                     (forgejobs:events)
-- KEYS[5..4+n] one job hash per job        (forgejobs:{q}:job:<id>)
-- KEYS[5+n] the queue's metrics hash        (forgejobs:{q}:metrics; optional: no metrics without it)
-- ARGV[1]  priority (1..10)
-- ARGV[2]  due time in ms since the epoch, "" to start now
-- ARGV[3]  "1": the caller chose the ids; an id whose hash exists is not stored again (and is returned);
--          "2": a retry after a lost reply; an id whose hash exists was stored by the first try: skip it
-- ARGV[4]  per-key concurrency limit, "" for none
-- ARGV[5]  job name (for the events)
-- ARGV[6]  queue name (for the events)
-- ARGV[7]  event time, ms since the epoch (the producer's clock); also when a job to start now became ready
-- ARGV[8]  event data JSON
-- ARGV[9]  the stream's approximate cap (XADD MAXLEN ~), "0" to write no events
-- then three per job: id, envelope JSON, concurrency key ("" for none)
-- Each job hash gets `q`: when it is ready to start (its due time, or ARGV[7]), for the wait-time metric.
-- Returns the ids that were not stored because they exist.
local existing = {}
local ready = {}
local delayed = {}
local due = ARGV[2]
local status = 'queued'
local ready_at = ARGV[7]
if due ~= '' then
    status = 'scheduled'
    ready_at = due
end
local jobs = (#ARGV - 9) / 3
local mkey = KEYS[5 + jobs]
local stored, duplicates = 0, 0
local function event(kind, id, data)
    if ARGV[9] ~= '0' then
        redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[9], '*', 'kind', kind, 'job_id', id, 'name', ARGV[5],
            'queue', ARGV[6], 'attempt', '1', 'at', ARGV[7], 'data', data)
    end
end
for i = 5, 4 + jobs do
    local base = 10 + (i - 5) * 3
    local id, envelope, ck = ARGV[base], ARGV[base + 1], ARGV[base + 2]
    if ARGV[3] ~= '' and redis.call('EXISTS', KEYS[i]) == 1 then
        if ARGV[3] == '1' then
            existing[#existing + 1] = id
            duplicates = duplicates + 1
            event('deduplicated', id, ARGV[8])
        end
    else
        if ck ~= '' then
            redis.call('HSET', KEYS[i], 'd', envelope, 'p', ARGV[1], 's', status, 'q', ready_at, 'ck', ck, 'cl', ARGV[4])
        else
            redis.call('HSET', KEYS[i], 'd', envelope, 'p', ARGV[1], 's', status, 'q', ready_at)
        end
        stored = stored + 1
        if due ~= '' then
            delayed[#delayed + 1] = due
            delayed[#delayed + 1] = id
        else
            ready[#ready + 1] = id
        end
        event('enqueued', id, ARGV[8])
    end
end
if #ready > 0 then
    -- A list that already held jobs had its marker set when it stopped being empty; slots that
    -- take jobs pass the marker on, and busy slots take the next job as they finish.
    if redis.call('RPUSH', KEYS[1], unpack(ready)) == #ready then
        redis.call('ZADD', KEYS[3], 0, '0')
    end
end
if #delayed > 0 then
    redis.call('ZADD', KEYS[2], unpack(delayed))
    redis.call('ZADD', KEYS[3], 'LT', due, 'd')
end
if mkey then
    if stored > 0 then redis.call('HINCRBY', mkey, 'enqueued|' .. ARGV[5], stored) end
    if duplicates > 0 then redis.call('HINCRBY', mkey, 'deduplicated|' .. ARGV[5], duplicates) end
end
return existing
