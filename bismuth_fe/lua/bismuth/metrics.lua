-- Request counts and latencies per function, gathered per worker and flushed each second.
--
-- The log phase only adds to plain Lua tables of its worker; a timer adds them into the
-- shared dict `bismuth_metrics` once a second, where the controller reads them (through the
-- control socket) for its Prometheus endpoint. Keys, tab-separated:
--
--   requests  <function> <2xx|4xx|...>   answers
--   duration  <function> <bucket>        whole request, seconds (bucket = upper bound index)
--   duration_sum / duration_count <function>
--   upstream  <function> <bucket>        until the container's (or agent's) response head
--   upstream_sum / upstream_count <function>
--   retries                              attempts sent to another peer after one failed
--   outstanding <worker pid>             requests in flight (expires if the worker is gone)
--
-- <function> is "-" for requests no function took (unknown host, bad request).

local choice = require "bismuth.choice"

local metrics = ngx.shared.bismuth_metrics

local floor = math.floor

local _M = {}

-- Upper bounds of the latency buckets, seconds (the last bucket, +Inf, is #BUCKETS + 1).
local BUCKETS = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}
_M.BUCKETS = BUCKETS

-- Per function, not yet in shared memory: {answers by status class (1-5), duration
-- buckets, duration sum, upstream buckets, upstream sum}; built into keys only when flushed.
local pending = {}
local retries = 0
local FLUSH_INTERVAL = 1
local NBUCKETS = #BUCKETS + 1

local function new_counts()
    local counts = {classes = {0, 0, 0, 0, 0}, duration = {}, upstream = {},
        duration_sum = 0, upstream_sum = 0}
    for i = 1, NBUCKETS do
        counts.duration[i] = 0
        counts.upstream[i] = 0
    end
    return counts
end

local function bucket(seconds)
    for i = 1, #BUCKETS do
        if seconds <= BUCKETS[i] then
            return i
        end
    end
    return NBUCKETS
end

-- One answered request: its function (or nil), status, and durations in seconds (the
-- upstream one nil when no response head came from a container).
function _M.request(fid, status, seconds, upstream_seconds)
    fid = fid or "-"
    local counts = pending[fid]
    if counts == nil then
        counts = new_counts()
        pending[fid] = counts
    end
    local class = floor(status / 100)
    if class >= 1 and class <= 5 then
        counts.classes[class] = counts.classes[class] + 1
    end
    local b = bucket(seconds)
    counts.duration[b] = counts.duration[b] + 1
    counts.duration_sum = counts.duration_sum + seconds
    if upstream_seconds then
        b = bucket(upstream_seconds)
        counts.upstream[b] = counts.upstream[b] + 1
        counts.upstream_sum = counts.upstream_sum + upstream_seconds
    end
end

function _M.retry()
    retries = retries + 1
end

local function add(key, amount)
    if amount ~= 0 then
        local _, err = metrics:incr(key, amount, 0)
        if err then
            ngx.log(ngx.WARN, "metrics: cannot count ", key, ": ", err)
        end
    end
end

local function flush_function(fid, counts)
    for class = 1, 5 do
        add("requests\t" .. fid .. "\t" .. class .. "xx", counts.classes[class])
    end
    local durations, upstreams = 0, 0
    for i = 1, NBUCKETS do
        add("duration\t" .. fid .. "\t" .. i, counts.duration[i])
        add("upstream\t" .. fid .. "\t" .. i, counts.upstream[i])
        durations = durations + counts.duration[i]
        upstreams = upstreams + counts.upstream[i]
    end
    add("duration_sum\t" .. fid, counts.duration_sum)
    add("duration_count\t" .. fid, durations)
    add("upstream_sum\t" .. fid, counts.upstream_sum)
    add("upstream_count\t" .. fid, upstreams)
end

local function flush(premature)
    if premature then
        return
    end
    local batch = pending
    pending = {}
    for fid, counts in pairs(batch) do
        flush_function(fid, counts)
    end
    add("retries", retries)
    retries = 0
    metrics:set("outstanding\t" .. ngx.worker.pid(), choice.total(), FLUSH_INTERVAL * 5)
end

function _M.start_flushing()
    local ok, err = ngx.timer.every(FLUSH_INTERVAL, flush)
    if not ok then
        ngx.log(ngx.ERR, "metrics: cannot start the flush timer: ", err)
    end
end

-- Every counter, for the control socket.
function _M.dump()
    local out = {}
    for _, key in ipairs(metrics:get_keys(0)) do
        local value = metrics:get(key)
        if value then
            out[key] = value
        end
    end
    return out
end

return _M
