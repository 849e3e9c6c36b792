#!lua name=switchboard_presence_v1
-- Cluster-wide presence (crates/server/src/cluster/presence.rs). A user is
-- online in a room while at least one node has a connection of theirs in
-- it. Each node keeps the set of (room, user) it holds in
-- sb:node:NODE:pres; sb:{r:ROOM}:users counts, per user, the nodes holding
-- them. Joins and leaves are announced on the room's channel only when
-- that count goes 0 -> 1 or 1 -> 0, so a user with devices on three nodes
-- is one user. A node renews a lease in sb:nodes every second; a node
-- whose lease ran out (kill -9) is reaped by whichever node runs `reap`
-- next: its presences are subtracted and the leaves announced. Redis runs
-- one function at a time, so no leader is needed.
--
-- The node also keeps its connection counts where acks read them (an
-- ack's `delivered` is the cluster's count): HASH sb:{r:ROOM}:conns and
-- sb:{u:USER}:conns, field NODE = that node's member connections / the
-- user's connections there. sb:node:NODE:conns lists the hashes it has a
-- field in, so a reaper can take them away.
--
-- Names cannot contain control characters (protocol::names), so \31
-- separates a room from a user.

local SEP = '\31'

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function users_key(room) return 'sb:{r:' .. room .. '}:users' end
local function channel(room) return 'sb:{r:' .. room .. '}:ch' end
local function node_set(node) return 'sb:node:' .. node .. ':pres' end
local function node_conns(node) return 'sb:node:' .. node .. ':conns' end
local function conns_key(kind, name)
  if kind == 'r' then return 'sb:{r:' .. name .. '}:conns' end
  return 'sb:{u:' .. name .. '}:conns'
end

-- This node has `n` connections in the room (kind 'r') or of the user
-- ('u').
local function set_conns(node, kind, name, n)
  local key = conns_key(kind, name)
  if n > 0 then
    redis.call('HSET', key, node, n)
    redis.call('SADD', node_conns(node), key)
  else
    redis.call('HDEL', key, node)
    redis.call('SREM', node_conns(node), key)
  end
end

local function split(member)
  local at = string.find(member, SEP, 1, true)
  return string.sub(member, 1, at - 1), string.sub(member, at + 1)
end

-- One node presence more (+1) or fewer (-1) for (room, user).
local function count(room, user, delta)
  local users = users_key(room)
  local n = redis.call('HINCRBY', users, user, delta)
  if delta > 0 and n == 1 then
    redis.call('PUBLISH', channel(room), 'p|j|' .. user)
  elseif delta < 0 and n <= 0 then
    redis.call('HDEL', users, user)
    redis.call('PUBLISH', channel(room), 'p|l|' .. user)
  end
end

-- here: ARGV node, then changes applied in order, each one of
--   'p', room, user, '1' (joined) | '0' (left)   a presence change
--   'r', room, n                                 member connections here
--   'u', user, n                                 the user's connections here
local function here(keys, args)
  local node = args[1]
  local set = node_set(node)
  local i = 2
  while i <= #args do
    local kind = args[i]
    if kind == 'p' then
      local room, user, joined = args[i + 1], args[i + 2], args[i + 3]
      local member = room .. SEP .. user
      if joined == '1' then
        if redis.call('SADD', set, member) == 1 then count(room, user, 1) end
      else
        if redis.call('SREM', set, member) == 1 then count(room, user, -1) end
      end
      i = i + 4
    else
      set_conns(node, kind, args[i + 1], tonumber(args[i + 2]))
      i = i + 3
    end
  end
  return 1
end

-- resync: ARGV node, then what the node holds now, in `here`'s format
-- (presences as joins, every non-zero count). Makes Redis say exactly
-- that, counting (and announcing) only the difference: after Redis was
-- unreachable or the node was reaped.
local function resync(keys, args)
  local node = args[1]
  local set = node_set(node)
  local want = {}
  local counts = {}
  local i = 2
  while i <= #args do
    if args[i] == 'p' then
      want[args[i + 1] .. SEP .. args[i + 2]] = true
      i = i + 4
    else
      counts[conns_key(args[i], args[i + 1])] = args[i + 2]
      i = i + 3
    end
  end
  for _, key in ipairs(redis.call('SMEMBERS', node_conns(node))) do
    if not counts[key] then
      redis.call('HDEL', key, node)
      redis.call('SREM', node_conns(node), key)
    end
  end
  for key, n in pairs(counts) do
    redis.call('HSET', key, node, n)
    redis.call('SADD', node_conns(node), key)
  end
  for _, member in ipairs(redis.call('SMEMBERS', set)) do
    if want[member] then
      want[member] = nil
    else
      redis.call('SREM', set, member)
      local room, user = split(member)
      count(room, user, -1)
    end
  end
  for member in pairs(want) do
    redis.call('SADD', set, member)
    local room, user = split(member)
    count(room, user, 1)
  end
  return 1
end

-- lease: ARGV node, ttl (ms). Returns 1 if the node held a lease (alive),
-- 0 if it had none (new, or reaped: it must resync).
local function lease(keys, args)
  local node, ttl = args[1], tonumber(args[2])
  local held = redis.call('ZSCORE', 'sb:nodes', node)
  redis.call('ZADD', 'sb:nodes', now_ms() + ttl, node)
  if held then return 1 end
  return 0
end

-- reap: ARGV budget (presences per call). Takes every node whose lease
-- ran out (its set moves aside, so a node that comes back starts a fresh
-- one), then subtracts up to `budget` of the taken presences. Returns how
-- many presences are still waiting to be reaped.
local function reap(keys, args)
  local budget = tonumber(args[1])
  local dead = redis.call('ZRANGEBYSCORE', 'sb:nodes', '-inf', now_ms(), 'LIMIT', 0, 100)
  for _, node in ipairs(dead) do
    redis.call('ZREM', 'sb:nodes', node)
    local set = node_set(node)
    if redis.call('EXISTS', set) == 1 then
      -- A key of its own per reap: a node reaped, back, and reaped again
      -- before the first was done owes each presence twice, and a union
      -- of the two sets would subtract it once.
      local aside = 'sb:reap:' .. node .. ':' .. redis.call('INCR', 'sb:reaps')
      redis.call('RENAME', set, aside)
      redis.call('SADD', 'sb:reaping', aside)
    end
    -- Counts go at once: a field per hash, no announcement.
    local conns = redis.call('SMEMBERS', node_conns(node))
    for _, key in ipairs(conns) do
      redis.call('HDEL', key, node)
    end
    redis.call('DEL', node_conns(node))
  end
  for _, aside in ipairs(redis.call('SMEMBERS', 'sb:reaping')) do
    if budget <= 0 then break end
    local taken = redis.call('SPOP', aside, budget)
    for _, member in ipairs(taken) do
      local room, user = split(member)
      count(room, user, -1)
    end
    budget = budget - #taken
    if redis.call('EXISTS', aside) == 0 then
      redis.call('SREM', 'sb:reaping', aside)
    end
  end
  local waiting = 0
  for _, aside in ipairs(redis.call('SMEMBERS', 'sb:reaping')) do
    waiting = waiting + redis.call('SCARD', aside)
  end
  return waiting
end

-- retire: ARGV node. A node shutting down: its lease ends now, so the
-- next reap (run right after by the same node) takes its presences.
local function retire(keys, args)
  redis.call('ZADD', 'sb:nodes', 0, args[1])
  return 1
end

redis.register_function('here', here)
redis.register_function('resync', resync)
redis.register_function('lease', lease)
redis.register_function('reap', reap)
redis.register_function('retire', retire)
