-- Least-outstanding-requests choice among a route's peers, per worker.
--
-- Each worker counts the requests it has in flight per container (no shared memory, no
-- locks: a worker that dies takes its counts with it) and sends the next request to the
-- least loaded peer not yet tried for it, breaking ties at random so equal peers share the
-- load. With several workers each balances its own share of the traffic.

local random = math.random

local _M = {}

local outstanding = {} -- container id -> requests in flight from this worker
local total = 0

-- The least loaded peer of `peers` whose container is not in `tried` (a set), or nil.
function _M.pick(peers, tried)
    local best, best_load, ties = nil, math.huge, 0
    for i = 1, #peers do
        local peer = peers[i]
        if not (tried and tried[peer.container]) then
            local load = outstanding[peer.container] or 0
            if load < best_load then
                best, best_load, ties = peer, load, 1
            elseif load == best_load then
                ties = ties + 1
                if random(ties) == 1 then -- each of the tied peers with equal chance
                    best = peer
                end
            end
        end
    end
    return best
end

function _M.hold(container)
    outstanding[container] = (outstanding[container] or 0) + 1
    total = total + 1
end

function _M.release(container)
    local load = outstanding[container]
    if load == nil then
        return
    end
    outstanding[container] = load > 1 and load - 1 or nil
    total = total - 1
end

-- Requests this worker has in flight.
function _M.total()
    return total
end

return _M
