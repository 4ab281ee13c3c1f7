-- The route table: Host -> where the containers of its function take requests.
--
-- The table lives in the shared dict `bismuth_routes` (one JSON value per host), written only
-- by the controller through the control socket (bismuth.control). Every change bumps
-- `generation` in `bismuth_state`; each worker keeps the routes it has decoded and drops them
-- all when the generation moved, so a request costs one shared-memory read of a number, and
-- decoding happens once per host and change. A route:
--
--   { ["function"] = "<function id>",
--     direct = { {address = "10.1.0.2", port = 8000, container = "<id>"}, ... },
--     agent  = { {address = "<node ip>", port = 8001, container = "<id>"}, ... } }
--
-- `direct` lists Running Server-mode containers (connected to straight); `agent` those reached
-- through their node's agent (`/invoke/<container>`): Executable mode, or an older agent.

local cjson = require "cjson.safe"

local routes = ngx.shared.bismuth_routes
local state = ngx.shared.bismuth_state

local _M = {}

local cache, cache_generation = {}, nil

-- The route of `host` (nginx's $host: lowercase, no port, no trailing dot), or nil.
function _M.lookup(host)
    local generation = state:get("generation")
    if generation ~= cache_generation then
        cache, cache_generation = {}, generation
    end
    local route = cache[host]
    if route == nil then
        local raw = routes:get(host)
        if raw == nil then
            return nil -- misses are not cached: a flood of made-up hosts costs no memory
        end
        route = cjson.decode(raw)
        cache[host] = route
    end
    return route
end

local function valid_peers(peers)
    if type(peers) ~= "table" then
        return false
    end
    for _, peer in ipairs(peers) do
        if type(peer) ~= "table" or type(peer.address) ~= "string"
            or not peer.address:match("^%d+%.%d+%.%d+%.%d+$")
            or type(peer.port) ~= "number" or peer.port < 1 or peer.port > 65535
            or peer.port % 1 ~= 0
            or type(peer.container) ~= "string" or not peer.container:match("^[%w-]+$") then
            return false
        end
    end
    return true
end

-- nil when `route` is well formed, else why not.
function _M.invalid(host, route)
    if type(host) ~= "string" or not host:match("^[%w._-]+$") or #host > 255 then
        return "bad host name"
    end
    if type(route) ~= "table" or type(route["function"]) ~= "string" then
        return "route of " .. host .. " has no function"
    end
    if not valid_peers(route.direct) or not valid_peers(route.agent) then
        return "route of " .. host .. " has a malformed backend"
    end
    return nil
end

local function bump()
    state:incr("generation", 1, 0)
end

local function store(host, route)
    local ok, err = routes:safe_set(host, cjson.encode(route))
    if not ok then
        return "cannot store the route of " .. host .. ": " .. tostring(err)
    end
    return nil
end

-- Replace the whole table with `new` (host -> route), then name it `table_id`. Hosts absent
-- from `new` are deleted after every new route is in place: a request never finds a table
-- emptier than either the old or the new one.
function _M.replace(table_id, new)
    state:delete("table") -- until done, no delta may apply to a half-written table
    local old = routes:get_keys(0)
    local count = 0
    for host, route in pairs(new) do
        local err = store(host, route)
        if err then
            bump()
            return err
        end
        count = count + 1
    end
    for _, host in ipairs(old) do
        if new[host] == nil then
            routes:delete(host)
        end
    end
    state:set("count", count)
    state:set("table", table_id)
    bump()
    return nil
end

-- Apply a delta: `set` (host -> route) and `delete` (hosts).
function _M.update(set, delete)
    local count = state:get("count") or 0
    for host, route in pairs(set) do
        if routes:get(host) == nil then
            count = count + 1
        end
        local err = store(host, route)
        if err then
            state:delete("table")
            bump()
            return err
        end
    end
    for _, host in ipairs(delete) do
        if routes:get(host) ~= nil then
            routes:delete(host)
            count = count - 1
        end
    end
    state:set("count", count)
    bump()
    return nil
end

function _M.status()
    return {
        table = state:get("table") or cjson.null,
        routes = state:get("count") or 0,
        generation = state:get("generation") or 0,
    }
end

-- Every route, decoded (for the control socket's GET).
function _M.dump()
    local out = {}
    for _, host in ipairs(routes:get_keys(0)) do
        local raw = routes:get(host)
        if raw then
            out[host] = cjson.decode(raw)
        end
    end
    return out
end

return _M
