-- fetch: record the outcome of the job this slot ran (if any), then take the next waiting job
-- (if asked): "finish and fetch next" in one round trip. A taken job moves from its wait list
-- into the active hash, owned by this slot, in the same step: it is never in no structure.
--
-- KEYS[1]  active hash, id -> "<slot>|<start ms>"   (forgejobs:{q}:active)
-- KEYS[2]  workers zset, slot -> lease expiry ms     (forgejobs:{q}:workers)
-- KEYS[3]  marker zset                               (forgejobs:{q}:marker)
-- KEYS[4]  delayed zset, id -> due ms                (forgejobs:{q}:delayed)
-- KEYS[5]  done zset, id -> expiry ms                (forgejobs:{q}:done)
-- KEYS[6]  failed zset, id -> expiry ms              (forgejobs:{q}:failed)
-- KEYS[7..16] wait lists, priority 1 first           (forgejobs:{q}:wait:p01 .. p10)
-- KEYS[17] event stream                              (forgejobs:events)
-- KEYS[18] metrics hash                              (forgejobs:{q}:metrics)   } optional: without them
-- KEYS[19] per-minute counts hash                    (forgejobs:{q}:minutes)   } no metric is written
-- KEYS[20] cancelled zset, id -> expiry ms           (forgejobs:{q}:cancelled) } and no cancel request
-- KEYS[21] cancel requests for running jobs, a set   (forgejobs:{q}:cancels)   } is honoured at take
-- KEYS[22] workflow outbox hash, id -> outcome       (forgejobs:{q}:wfout; optional, docs/decisions/0009)
-- ARGV[1]  job key prefix (forgejobs:{q}:job:); job hashes are built from it and share the tag
-- ARGV[2]  this slot's id
-- ARGV[3]  lease in ms
-- ARGV[4]  finish: "" (nothing to finish), "done", "failed", "retry", "requeue", "cancelled"
-- ARGV[5]  the finished job's id
-- ARGV[6]  its result JSON (done), error (failed), or next envelope (retry, requeue)
-- ARGV[7]  ms: result or failure TTL (done, failed), how long a cancelled job is kept (cancelled), delay (retry)
-- ARGV[8]  its priority (retry, requeue)
-- ARGV[9]  "1": take the next job
-- ARGV[10] the queue's global concurrency, "0" for none
-- ARGV[11] "1": the slot woke from idle: renew its lease entry, and put the marker back when a job
--          was taken so another slot or process follows (a busy slot's lease is renewed by its heartbeat)
-- ARGV[12] concurrency-key prefix (forgejobs:{q}:ck:); `<prefix>parked` is the set of keys with parked jobs
-- ARGV[13] the finished job's concurrency key, "" for none
-- ARGV[14] the caller's clock, ms since the epoch: used for finish and start times only. Lease expiry
--          and retry due times come from the server's clock (TIME), read only when needed.
-- ARGV[15] the event stream's approximate cap (XADD MAXLEN ~), "0" to write no events
-- ARGV[16] the queue's name (for the events)
-- ARGV[17] how many events report the finished job's outcome; then 7 values each: kind, job_id, name,
--          queue, attempt, at, data. They are written with the outcome (not when the lease was lost), and a
--          "started" event with each job taken: a killed worker loses no event of a recorded step.
-- then, after the events (m = 18 + 7 * ARGV[17]), for the metrics (all optional):
-- ARGV[m]    the finished job's name
-- ARGV[m+1]  its run time in ms, "" for none (nothing ran, e.g. refused by a rate limit)
-- ARGV[m+2]  counters to add 1 to, space-separated (succeeded, retried, dead_lettered:<reason>, ...)
-- ARGV[m+3]  per-minute kind: "c" (succeeded), "f" (a failed attempt) or ""
-- ARGV[m+4]  a workflow step's final outcome for its run, "" for none: kept in the outbox with the
--            outcome, so a worker killed before it reaches the run leaves it for a recovery pass
-- Returns {lost, id, envelope, priority, concurrency key, state}: lost is 1 when this slot no
-- longer held the finished job (its lease was recovered) and nothing was recorded; then nothing is
-- taken either (state "lost"): the slot must go on under a fresh identity. Otherwise state is "ok",
-- "empty", "limited" or "corrupt" (a record without a readable envelope: dead-letter it).
-- A waiting job whose cancel was asked for while it ran (`x` on its hash: how long to keep it, ms) is
-- recorded as cancelled when taken, with its event, instead of being run again.
local now = tonumber(ARGV[14])
if ARGV[11] == '1' or (ARGV[4] == 'retry' and tonumber(ARGV[7]) > 0) then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local prefix, slot = ARGV[1], ARGV[2]

-- @include common
-- @include metrics

local mkey, minutes = KEYS[18], KEYS[19]
local m = 18 + tonumber(ARGV[17]) * 7
local fname, run_ms, counters, minute_kind = ARGV[m] or '', ARGV[m + 1] or '', ARGV[m + 2] or '', ARGV[m + 3] or ''
local workflow = ARGV[m + 4] or ''

local function event(kind, id, name, queue, attempt, at, data)
    if ARGV[15] ~= '0' then
        redis.call('XADD', KEYS[17], 'MAXLEN', '~', ARGV[15], '*', 'kind', kind, 'job_id', id, 'name', name,
            'queue', queue, 'attempt', attempt, 'at', at, 'data', data)
    end
end

local lost = 0
local mode, fid = ARGV[4], ARGV[5]
if mode ~= '' then
    local owner = redis.call('HGET', KEYS[1], fid)
    if not owner or string.sub(owner, 1, #slot + 1) ~= slot .. '|' then
        lost = 1
    else
        redis.call('HDEL', KEYS[1], fid)
        local started = string.sub(owner, #slot + 2)
        if mode == 'cancelled' then
            hset(prefix .. fid, 's', 'cancelled', 'ft', now, 'st', started)
            redis.call('HDEL', prefix .. fid, 'x')
            if KEYS[20] then redis.call('ZADD', KEYS[20], now + tonumber(ARGV[7]), fid) end
            if KEYS[21] then redis.call('SREM', KEYS[21], fid) end
        else
            record(mode, fid, ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8]), started)
        end
        if ARGV[13] ~= '' then release_key(ARGV[12], ARGV[13], fid) end
        if workflow ~= '' and KEYS[22] then redis.call('HSET', KEYS[22], fid, workflow) end
        if mkey then
            metric_count(mkey, counters, fname)
            if run_ms ~= '' then metric_observe(mkey, 'run', fname, tonumber(run_ms)) end
            if minute_kind ~= '' then metric_minute(minutes, now, minute_kind) end
        end
        for i = 0, tonumber(ARGV[17]) - 1 do
            local b = 18 + i * 7
            event(ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5], ARGV[b + 6])
        end
        if ARGV[10] ~= '0' and ARGV[9] ~= '1' then redis.call('ZADD', KEYS[3], 0, '0') end
    end
end

if lost == 1 then return {lost, false, false, 0, false, 'lost'} end
if ARGV[9] ~= '1' then return {lost, false, false, 0, false, 'empty'} end
if ARGV[11] == '1' then redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), slot) end
local limit = tonumber(ARGV[10])
if limit > 0 and redis.call('HLEN', KEYS[1]) >= limit then
    return {lost, false, false, 0, false, 'limited'}
end
for _ = 1, 50 do
    local key, id = pop_waiting()
    if not id then return {lost, false, false, 0, false, 'empty'} end
    local priority = tonumber(string.sub(key, -2))
    local fields = redis.pcall('HMGET', prefix .. id, 'd', 'ck', 'cl', 'q', 'x')
    if fields.err or not fields[1] then
        redis.call('HSET', KEYS[1], id, slot .. '|' .. now)
        return {lost, id, false, priority, false, 'corrupt'}
    end
    local ck = fields[2]
    if ck == '' then ck = false end  -- no key
    if fields[5] and KEYS[20] then  -- its cancel was asked for while it ran, and it came back to wait
        local ok, envelope = pcall(cjson.decode, fields[1])
        local name = (ok and type(envelope) == 'table') and tostring(envelope['name']) or '?'
        hset(prefix .. id, 's', 'cancelled', 'ft', now)
        redis.call('HDEL', prefix .. id, 'x')
        redis.call('ZADD', KEYS[20], now + (tonumber(fields[5]) or 3600000), id)
        redis.call('SREM', KEYS[21], id)
        metric_count(mkey, 'cancelled', name)
        event('cancelled', id, name, ARGV[16], (ok and type(envelope) == 'table') and tostring(envelope['attempt']) or '1',
            tostring(now), '{}')
    elseif ck and redis.call('SCARD', ARGV[12] .. ck .. ':run') >= math.max(1, tonumber(fields[3]) or 1) then
        redis.call('RPUSH', ARGV[12] .. ck .. ':wait', id)  -- parked until a job of its key finishes
        redis.call('SADD', ARGV[12] .. 'parked', ck)  -- which keys have parked jobs (info, drain)
    else
        if ck then redis.call('SADD', ARGV[12] .. ck .. ':run', id) end
        redis.call('HSET', KEYS[1], id, slot .. '|' .. now)
        local ok, envelope = pcall(cjson.decode, fields[1])
        if ok and type(envelope) == 'table' then  -- an unreadable one is dead-lettered by the worker instead
            event('started', id, tostring(envelope['name']), ARGV[16],
                tostring(envelope['attempt']), tostring(now), '{}')
            -- the wait histogram's count is the started counter; a job stored without `q` counts as no wait
            if mkey then metric_observe(mkey, 'wait', tostring(envelope['name']), now - (tonumber(fields[4]) or now)) end
        end
        -- woken from idle: pass the marker on while jobs remain (EXISTS counts the non-empty lists)
        if ARGV[11] == '1' and redis.call('EXISTS', unpack(KEYS, 7, 16)) > 0 then
            redis.call('ZADD', KEYS[3], 0, '0')
        end
        return {lost, id, fields[1], priority, ck, 'ok'}
    end
end
return {lost, false, false, 0, false, 'empty'}
