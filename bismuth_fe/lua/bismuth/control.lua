-- The control endpoint, served only on the unix socket in the frontend's 0700 run directory.
--
--   GET   /v1/status    {"table": <id of the last full table> | null, "routes": n,
--                        "generation": n}
--   GET   /v1/routes    {"table": ..., "routes": {host: route}}
--   PUT   /v1/routes    {"table": "<id>", "routes": {host: route}}: replaces every route
--   PATCH /v1/routes    {"table": "<id>", "set": {host: route}, "delete": [host]}: 409 unless
--                       <id> names the table in place (nginx restarted, or a full sync
--                       failed half-way: the controller then sends the whole table again)
--   GET   /v1/metrics   {key: number} (see bismuth.metrics)
--
-- Answers are JSON; a malformed request is a 400 naming the problem and changes nothing.

local cjson = require "cjson.safe"
local metrics = require "bismuth.metrics"
local routes = require "bismuth.routes"

local _M = {}

local function reply(status, body)
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    ngx.say(cjson.encode(body))
    return ngx.exit(ngx.HTTP_OK)
end

local function fail(status, message)
    return reply(status, {error = message})
end

local function read_json()
    ngx.req.read_body()
    local body = ngx.req.get_body_data()
    if body == nil then
        local file = ngx.req.get_body_file()
        if file then
            local handle = io.open(file, "rb")
            body = handle and handle:read("*a")
            if handle then
                handle:close()
            end
        end
    end
    if body == nil then
        return nil, "empty body"
    end
    local value, err = cjson.decode(body)
    if type(value) ~= "table" then
        return nil, "body is not a JSON object: " .. tostring(err)
    end
    return value
end

local function check_routes(map)
    if type(map) ~= "table" then
        return "routes must be an object"
    end
    for host, route in pairs(map) do
        local invalid = routes.invalid(host, route)
        if invalid then
            return invalid
        end
    end
    return nil
end

local function replace(body)
    if type(body.table) ~= "string" or body.table == "" then
        return fail(400, "table: a non-empty id is required")
    end
    local invalid = check_routes(body.routes)
    if invalid then
        return fail(400, invalid)
    end
    local err = routes.replace(body.table, body.routes)
    if err then
        return fail(507, err)
    end
    return reply(200, routes.status())
end

local function update(body)
    local current = routes.status().table
    if body.table ~= current then
        return fail(409, "table " .. tostring(body.table) .. " is not the one in place")
    end
    local set, delete = body.set or {}, body.delete or {}
    local invalid = check_routes(set)
    if invalid then
        return fail(400, invalid)
    end
    if type(delete) ~= "table" then
        return fail(400, "delete must be a list of hosts")
    end
    for _, host in ipairs(delete) do
        if type(host) ~= "string" then
            return fail(400, "delete must be a list of hosts")
        end
    end
    local err = routes.update(set, delete)
    if err then
        return fail(507, err)
    end
    return reply(200, routes.status())
end

function _M.handle()
    local method, uri = ngx.req.get_method(), ngx.var.uri
    if uri == "/v1/status" and method == "GET" then
        return reply(200, routes.status())
    elseif uri == "/v1/metrics" and method == "GET" then
        return reply(200, metrics.dump())
    elseif uri == "/v1/routes" then
        if method == "GET" then
            local status = routes.status()
            return reply(200, {table = status.table, routes = routes.dump()})
        end
        if method ~= "PUT" and method ~= "PATCH" then
            return fail(405, "use GET, PUT or PATCH")
        end
        local body, err = read_json()
        if body == nil then
            return fail(400, err)
        end
        return method == "PUT" and replace(body) or update(body)
    end
    return fail(404, "no such control path: " .. uri)
end

return _M
