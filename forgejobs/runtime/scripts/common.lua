-- Shared pieces, pasted where a script says "-- @include common". They expect the script to have
-- set `now` (ms, from the server's clock) and `prefix` (the queue's job key prefix), and to take
-- the per-queue keys in the standard order: KEYS[1] active, [3] marker, [4] delayed, [5] done,
-- [6] failed, [7..16] wait lists p01..p10.

-- HSET that survives a key of the wrong type (a hostile or corrupt record): the key is replaced.
local function hset(key, ...)
    local r = redis.pcall('HSET', key, ...)
    if type(r) == 'table' and r.err then
        redis.call('DEL', key)
        redis.call('HSET', key, ...)
    end
end

-- The first id of the highest-priority non-empty wait list: its list's key and the id.
local function pop_waiting()
    local got = redis.pcall('LMPOP', 10, KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12], KEYS[13],
        KEYS[14], KEYS[15], KEYS[16], 'LEFT')
    if type(got) == 'table' and got.err == nil then
        return got[1], got[2][1]
    end
    if type(got) == 'table' then  -- Redis before 7.0 has no LMPOP: one LPOP per priority
        for i = 7, 16 do
            local id = redis.call('LPOP', KEYS[i])
            if id then return KEYS[i], id end
        end
    end
    return nil, nil
end

local function priority_of(id)
    local p = redis.pcall('HGET', prefix .. id, 'p')
    p = tonumber(type(p) == 'string' and p or nil) or 5
    if p < 1 or p > 10 then p = 5 end
    return p
end

-- A job with a concurrency key stopped running: free its place and let one parked job of that key
-- go back to the front of its wait list.
local function release_key(ck_prefix, ck, id)
    redis.call('SREM', ck_prefix .. ck .. ':run', id)
    local parked = redis.call('LPOP', ck_prefix .. ck .. ':wait')
    if parked then
        redis.call('LPUSH', KEYS[6 + priority_of(parked)], parked)
        redis.call('ZADD', KEYS[3], 0, '0')
        if redis.call('LLEN', ck_prefix .. ck .. ':wait') == 0 then redis.call('SREM', ck_prefix .. 'parked', ck) end
    end
end

-- Record what happened to a job that is no longer running (it is already out of the active hash).
-- mode: "done" (payload: result JSON, ms: result TTL), "failed" (payload: error, ms: failure TTL),
-- "retry" (payload: next envelope, ms: delay), "requeue" (payload: envelope; to the front, now).
-- started: when the attempt that ended started (ms; nil when unknown), kept as `st`. A job made ready
-- again gets `q`: when it became ready to start (its due time for a delayed retry), for the wait-time metric.
local function record(mode, id, payload, ms, priority, started)
    local jk = prefix .. id
    local st = {}
    if started then st = {'st', started} end
    if mode == 'done' then
        hset(jk, 's', 'succeeded', 'r', payload, 'ft', now, unpack(st))
        redis.call('ZADD', KEYS[5], now + ms, id)
    elseif mode == 'failed' then
        hset(jk, 's', 'failed', 'e', payload, 'ft', now, unpack(st))
        redis.call('ZADD', KEYS[6], now + ms, id)
    elseif mode == 'retry' and ms > 0 then
        hset(jk, 'd', payload, 's', 'scheduled', 'q', now + ms, unpack(st))
        redis.call('ZADD', KEYS[4], now + ms, id)
        redis.call('ZADD', KEYS[3], 'LT', now + ms, 'd')
    else
        hset(jk, 'd', payload, 's', 'queued', 'q', now, unpack(st))
        local wait = KEYS[6 + priority]
        if mode == 'requeue' then redis.call('LPUSH', wait, id) else redis.call('RPUSH', wait, id) end
        redis.call('ZADD', KEYS[3], 0, '0')
    end
end
