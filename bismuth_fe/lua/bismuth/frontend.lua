-- The request path of the frontend: nginx phase handlers (see nginx.conf.j2).
--
--   route()           access phase of `location /`: checks Host, starts or continues the
--                     trace, looks the route up; answers 400/404/503 itself, sends
--                     Executable-mode functions to @agent, the rest to bismuth_containers.
--   balance()         balancer of bismuth_containers: the least loaded container not yet
--                     tried; nginx tries another one only when connecting failed (or, for an
--                     idempotent request, the connection broke before any response byte).
--   agent()           rewrite phase of @agent: the same choice among agents' containers;
--                     re-entered after each failed attempt (error_page), where it decides
--                     whether another one may be tried.
--   balance_agent()   balancer of bismuth_agents: the agent agent() chose.
--   upstream_failed() and fail(name): the JSON answers of nginx's own errors.
--   log()             releases the container's load count, counts the request.
--
-- Every answer of the frontend's own is JSON {"error": "..."}.

local cjson = require "cjson.safe"
local ffi = require "ffi"
local ngx_balancer = require "ngx.balancer"
local process = require "ngx.process"
local choice = require "bismuth.choice"
local metrics = require "bismuth.metrics"
local routes = require "bismuth.routes"
local trace = require "bismuth.trace"

local lower, match, sub, find = string.lower, string.match, string.sub, string.find
local gmatch, format = string.gmatch, string.format

local _M = {}

local settings = {}
local master_pid
local SIGQUIT = 3

ffi.cdef [[
int getppid(void);
int kill(int pid, int sig);
]]

-- RFC 9110 §9.2.2: a request that may be sent twice after a connection broke.
local IDEMPOTENT = {GET = true, HEAD = true, OPTIONS = true, TRACE = true, PUT = true,
    DELETE = true}
-- Connection options nginx handles itself; other names listed there are dropped.
local CONNECTION_OPTIONS = {["keep-alive"] = true, close = true, upgrade = true, te = true}

function _M.init(values)
    settings = values
    require "bismuth.control"
end

-- A worker whose master died (killed, out of memory) would keep the sockets, and a new
-- nginx could not take them: it stops gracefully on its own.
local function watch_master(premature)
    if not premature and ffi.C.getppid() ~= master_pid then
        ngx.log(ngx.WARN, "the master process is gone: stopping this worker")
        ffi.C.kill(ngx.worker.pid(), SIGQUIT)
    end
end

function _M.init_worker()
    trace.seed()
    metrics.start_flushing()
    master_pid = process.get_master_pid()
    if master_pid then
        ngx.timer.every(1, watch_master)
    end
end

local function answer(status, message)
    local body = cjson.encode({error = message}) .. "\n"
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    ngx.header["Content-Length"] = #body
    ngx.header["Cache-Control"] = "no-store"
    ngx.print(body)
    return ngx.exit(ngx.HTTP_OK)
end

local function quoted(text)
    return "'" .. text .. "'"
end

-- The hostname of a Host header as nginx's $host has it: lowercase, no port, no final dot.
local function host_of(header)
    local host = lower(header)
    host = match(host, "^(.-):%d*$") or host
    if sub(host, -1) == "." then
        host = sub(host, 1, -2)
    end
    return host
end

-- Drop the headers a client named in Connection (hop-by-hop, RFC 9110 §7.6.1).
local function drop_connection_options(value)
    for name in gmatch(value, "[^,%s]+") do
        if not CONNECTION_OPTIONS[lower(name)] then
            ngx.req.clear_header(name)
        end
    end
end

function _M.route()
    local var = ngx.var
    local host = var.host
    local header = var.http_host
    if host == "" then
        return answer(400, "missing Host header: it selects the function")
    end
    if header ~= nil and header ~= host and host_of(header) ~= host then
        -- absolute-form: the target's authority routes; the container must see the same
        -- ($bismuth_host: the Host header, or the target's host when there is none)
        return answer(400, "the Host header " .. quoted(header)
            .. " does not match the request target's host " .. quoted(host))
    end
    local connection = var.http_connection
    if connection and connection ~= "keep-alive" and connection ~= "close" then
        drop_connection_options(connection)
    end
    local incoming = var.http_traceparent
    if incoming then
        incoming = ngx.req.get_headers(100).traceparent -- a table if several were sent
    end
    local traceparent, continued = trace.span(incoming, var.request_id)
    var.bismuth_traceparent = traceparent
    if continued then
        var.bismuth_tracestate = var.http_tracestate or ""
    end
    local route = routes.lookup(host)
    if route == nil then
        return answer(404, "no function is routed for host " .. quoted(host))
    end
    if #route.direct > 0 then
        ngx.ctx.route = route
        return
    end
    var.bismuth_function = route["function"]
    if #route.agent > 0 then
        return ngx.exec("@agent")
    end
    return answer(503, "function " .. route["function"] .. " (host " .. quoted(host)
        .. ") has no running container")
end

function _M.balance()
    local ctx = ngx.ctx
    local route = ctx.route
    local tried = ctx.tried
    if tried then -- nginx is retrying: the last container could not be reached
        choice.release(ctx.peer)
        metrics.retry()
    else
        tried = {}
        ctx.tried = tried
        local more = math.min(settings.retries, #route.direct - 1)
        if more > 0 then
            ngx_balancer.set_more_tries(more)
        end
    end
    local peer = choice.pick(route.direct, tried)
    if peer == nil then
        return ngx.exit(ngx.ERROR)
    end
    tried[peer.container] = true
    choice.hold(peer.container)
    ctx.peer = peer.container
    ngx.var.bismuth_cid = peer.container
    local ok, err = ngx_balancer.set_current_peer(peer.address, peer.port)
    if not ok then
        ngx.log(ngx.ERR, "cannot use peer ", peer.address, ":", peer.port, ": ", err)
        return ngx.exit(ngx.ERROR)
    end
end

-- The last entry of an $upstream_* variable ("a, b : c" lists every attempt).
local function last(value)
    return value and match(value, "([^%s,:]+)%s*$")
end

-- Whether the attempt that just failed may be repeated on another container.
local function retryable(var)
    if last(var.upstream_connect_time) == "-" then
        return true -- never connected: nothing was sent
    end
    return IDEMPOTENT[ngx.req.get_method()] and last(var.upstream_status) == "502"
end

function _M.agent()
    local var = ngx.var
    local previous, tried = var.bismuth_cid, var.bismuth_tried
    if previous ~= "" then -- back here after a failed attempt
        choice.release(previous)
        var.bismuth_cid = ""
        local _, attempts = tried:gsub(" ", "")
        if not retryable(var) or attempts > settings.retries then
            return _M.upstream_failed(previous)
        end
        metrics.retry()
    end
    local route = routes.lookup(var.host)
    local peers = route and route.agent or {}
    local excluded = {}
    for container in gmatch(tried, "%S+") do
        excluded[container] = true
    end
    local peer = choice.pick(peers, excluded)
    if peer == nil then
        return previous ~= "" and _M.upstream_failed(previous)
            or answer(503, "no running container for host " .. quoted(var.host))
    end
    choice.hold(peer.container)
    var.bismuth_cid = peer.container
    var.bismuth_tried = tried .. " " .. peer.container
    var.bismuth_peer = peer.address
    var.bismuth_peer_port = peer.port
    var.bismuth_agent_uri = "/invoke/" .. peer.container .. var.request_uri
end

function _M.balance_agent()
    local var = ngx.var
    local ok, err = ngx_balancer.set_current_peer(var.bismuth_peer, tonumber(var.bismuth_peer_port))
    if not ok then
        ngx.log(ngx.ERR, "cannot use agent ", var.bismuth_peer, ": ", err)
        return ngx.exit(ngx.ERROR)
    end
end

-- The answer when no attempt got a response head: 504 if a container took the request
-- but did not answer in time, else 502.
function _M.upstream_failed(container)
    local var = ngx.var
    container = container or var.bismuth_cid
    if var.bismuth_function == "" then -- counted under its function (ctx is gone by now)
        local route = routes.lookup(var.host)
        var.bismuth_function = route and route["function"] or ""
    end
    local status, connected = last(var.upstream_status), last(var.upstream_connect_time) ~= "-"
    if status == "504" and connected then
        return answer(504, format("container %s did not answer within %gs", container,
            settings.request_timeout))
    end
    if not connected then
        local why = status == "504" and format("connect timed out after %gs",
            settings.connect_timeout) or "connection refused or unreachable"
        return answer(502, "no backend could be reached (last: " .. why .. ")")
    end
    return answer(502, "container " .. container .. " closed the connection without answering")
end

local ANSWERS = {
    bad_request = {400, "bad request: malformed request line, header or body"},
    client_timeout = {408, "the request was not received in time"},
    length_required = {411, "a request body needs Content-Length or chunked encoding"},
    uri_too_long = {414, "request line longer than the limit"},
    header_too_large = {431, "request header fields larger than the limit"},
    internal_error = {500, "internal error"},
    not_implemented = {501, "unsupported transfer coding"},
}

-- The answer to one of nginx's own errors, by its location (//bismuth-frontend/<name>).
function _M.fail(uri)
    local name = match(uri, "([%w_]+)$")
    if name == "too_large" then
        local length = ngx.var.http_content_length
        local size = length and (length .. " bytes") or "request body"
        return answer(413, format("%s exceeds the limit of %d bytes", size,
            settings.max_body_size))
    end
    local known = ANSWERS[name] or ANSWERS.internal_error
    local message = known[2]
    if name == "uri_too_long" or name == "header_too_large" then
        message = format("%s (%d bytes)", message, settings.max_header_size)
    end
    return answer(known[1], message)
end

function _M.log()
    local var = ngx.var
    local route = ngx.ctx.route
    local container = var.bismuth_cid
    if container ~= "" then
        choice.release(container)
    end
    local fid = route and route["function"]
    if fid == nil then
        fid = var.bismuth_function
        fid = fid ~= "" and fid or nil
    end
    local upstream = var.upstream_header_time
    if upstream then -- one attempt: a number; several: "a, b : c", the last one counts
        upstream = tonumber(upstream) or tonumber(last(upstream))
    end
    metrics.request(fid, ngx.status, ngx.now() - ngx.req.start_time(), upstream)
end

return _M
