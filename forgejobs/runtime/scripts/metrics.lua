-- Metrics, pasted where a script says "-- @include metrics": counters and histograms in the queue's
-- metrics hash (forgejobs:{q}:metrics), per-minute counts in its minutes hash (forgejobs:{q}:minutes).
-- Field names (forgejobs/metrics.py reads them):
--   <counter>|<job name>            a counter: enqueued, deduplicated, succeeded, retried, stalled,
--                                    rate_limited, deferred, aborted, cancelled, dead_lettered:<reason>
--   wait|<job name>|<i>, run|...    histogram buckets: observations <= METRIC_BUCKETS[i] ms (and above
--                                    the bucket before); i = #METRIC_BUCKETS + 1 is the overflow bucket
--   wait_ms|<job name>, run_ms|...  histogram sums, ms
--   <minute>|<kind>                 (minutes hash) kind c: succeeded, f: failed attempts, in that minute
--                                    (ms since the epoch / 60000)
local METRIC_BUCKETS = {__BUCKETS__}

local function metric_observe(mkey, kind, name, ms)
    ms = math.max(0, math.floor(ms))
    local i = #METRIC_BUCKETS + 1
    for b = 1, #METRIC_BUCKETS do
        if ms <= METRIC_BUCKETS[b] then
            i = b
            break
        end
    end
    redis.call('HINCRBY', mkey, kind .. '|' .. name .. '|' .. i, 1)
    redis.call('HINCRBY', mkey, kind .. '_ms|' .. name, ms)
end

local function metric_minute(key, ms, kind)
    redis.call('HINCRBY', key, string.format('%d', math.floor(ms / 60000)) .. '|' .. kind, 1)
end

-- Several counters at once: `counters` is space-separated counter names.
local function metric_count(mkey, counters, name)
    for counter in string.gmatch(counters, '%S+') do
        redis.call('HINCRBY', mkey, counter .. '|' .. name, 1)
    end
end
