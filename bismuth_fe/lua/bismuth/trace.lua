-- W3C Trace Context (`traceparent`): keep the caller's trace, add the frontend's span.
--
-- A valid incoming `traceparent` keeps its trace-id and flags and gets a new span id (the
-- frontend's span, parent of whatever the container does); anything else (none, several,
-- or an invalid one) starts a new trace whose id is nginx's $request_id (128 random bits).
-- Versions above 00 are read with version-00 rules, ignoring trailing fields.
-- See https://www.w3.org/TR/trace-context/#traceparent-header.

local random = math.random
local format, match, sub = string.format, string.match, string.sub

local _M = {}

local ZERO_TRACE = string.rep("0", 32)
local ZERO_SPAN = string.rep("0", 16)
local V00_LENGTH = 55 -- "00-" .. 32 .. "-" .. 16 .. "-" .. 2
local FIELDS = "^([0-9a-f][0-9a-f])%-([0-9a-f]+)%-([0-9a-f]+)%-([0-9a-f][0-9a-f])$"

local prefix -- this worker's random half of every span id
local counter = 0

-- Seeds this worker's span ids: a random half from /dev/urandom, then a counter (span ids
-- need to be unique, not secret; trace ids of new traces are nginx's random $request_id).
function _M.seed()
    local seed = ngx.now() * 1000 + ngx.worker.pid()
    local urandom = io.open("/dev/urandom", "rb")
    if urandom then
        local bytes = urandom:read(4)
        urandom:close()
        if bytes and #bytes == 4 then
            seed = seed + bytes:byte(1) * 16777216 + bytes:byte(2) * 65536
                + bytes:byte(3) * 256 + bytes:byte(4)
        end
    end
    math.randomseed(seed % 2147483647)
    prefix = format("%04x%04x", random(1, 65535), random(0, 65535))
    counter = random(0, 65535)
end

local function span_id()
    counter = counter + 1
    if counter >= 4294967296 then
        counter = 0
    end
    return prefix .. format("%08x", counter)
end

-- The trace id and flags of a `traceparent` value, or nil if it is not a valid one.
function _M.parse(value)
    if type(value) ~= "string" or #value < V00_LENGTH then
        return nil
    end
    local version = sub(value, 1, 2)
    if version == "ff" or (version == "00" and #value ~= V00_LENGTH) then
        return nil
    end
    if #value > V00_LENGTH and sub(value, V00_LENGTH + 1, V00_LENGTH + 1) ~= "-" then
        return nil
    end
    local _, trace_id, parent, flags = match(sub(value, 1, V00_LENGTH), FIELDS)
    if not trace_id or #trace_id ~= 32 or #parent ~= 16 then
        return nil
    end
    if trace_id == ZERO_TRACE or parent == ZERO_SPAN then
        return nil
    end
    return trace_id, flags
end

-- The frontend's `traceparent` for a request whose header value(s) are `incoming` (nil, a
-- string or a table of strings), and whether the caller's trace was continued.
function _M.span(incoming, request_id)
    local trace_id, flags
    if type(incoming) == "string" then
        trace_id, flags = _M.parse(incoming)
    end
    if not trace_id then
        return "00-" .. request_id .. "-" .. span_id() .. "-01", false
    end
    return "00-" .. trace_id .. "-" .. span_id() .. "-" .. flags, true
end

return _M
