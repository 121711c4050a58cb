-- settle: apply the decision about one stalled job (retry it, or record it failed), once.
--
-- KEYS: the queue's standard keys (see common.lua), and KEYS[17] the stalled list,
-- KEYS[18] the metrics hash, KEYS[19] the per-minute counts hash (both optional).
-- ARGV[1]  job key prefix (forgejobs:{q}:job:)
-- ARGV[2]  the job's id
-- ARGV[3]  "retry", "requeue", "failed", or "drop" (nothing to record: its record is gone)
-- ARGV[4]  next envelope (retry, requeue) or error (failed)
-- ARGV[5]  ms: delay (retry) or failure TTL (failed)
-- ARGV[6]  priority
-- ARGV[7]  the envelope the decision was made from ("" with "drop")
-- ARGV[8]  the job's name, ARGV[9] counters to add 1 to (space-separated), ARGV[10] per-minute kind (optional)
-- Returns 1, or 0 when the job is no longer on the stalled list or its envelope changed (another worker
-- settled it): then nothing is written.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix = ARGV[1]

-- @include common
-- @include metrics

if ARGV[3] ~= 'drop' and redis.pcall('HGET', prefix .. ARGV[2], 'd') ~= ARGV[7] then return 0 end
if redis.call('LREM', KEYS[17], 1, ARGV[2]) == 0 then return 0 end
if ARGV[3] ~= 'drop' then record(ARGV[3], ARGV[2], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])) end
if KEYS[18] and ARGV[8] then
    metric_count(KEYS[18], ARGV[9] or '', ARGV[8])
    if (ARGV[10] or '') ~= '' then metric_minute(KEYS[19], now, ARGV[10]) end
end
return 1
