#!lua name=switchboard_v1
-- Switchboard's Redis Function library (cluster mode). Loaded by every node
-- with FUNCTION LOAD REPLACE at connect (crates/server/src/cluster/
-- store.rs); a change of what a function does or returns takes a new
-- library name, so nodes of two versions never replace each other's code.
--
-- Each function is one atomic step: Redis runs it to the end with nothing
-- in between. Redis does not roll back what a function wrote before an
-- error, so `commit` validates the whole batch before its first write.
--
-- The key layout is documented in store.rs (and built by cluster::keys in
-- Rust: the two must agree). Records are JSON texts that start with
-- {"seq":S,"gid":G, so a function completes a record the node encoded
-- without its numbers (a "tail") by prepending them, and reads the few
-- fields it needs with patterns: inside a JSON string a '"' is always
-- escaped, so ,"name": can only be a field of the record itself, and the
-- body (the only free-form value) is the last field.

local SEP = '\31'

-- An integer as decimal text (tostring would give "1e+15" past 14 digits).
local function int(n)
  return string.format('%d', n)
end

-- Byte order, as Rust compares strings (Lua's < follows the locale).
local function less(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return #a < #b
end

local function room_key(name, part)
  return 'sb:{r:' .. name .. '}:' .. part
end

local function user_key(name, part)
  return 'sb:{u:' .. name .. '}:' .. part
end

local function conv_key(a, b)
  if less(b, a) then
    a, b = b, a
  end
  return 'sb:conv:' .. a .. SEP .. b
end

-- A numeric field of a record (not seq, which opens it).
local function num_field(rec, name)
  return tonumber(string.match(rec, ',"' .. name .. '":(%d+)'))
end

local function gid_of(rec)
  return string.match(rec, '^{"seq":%d+,"gid":(%d+),')
end

-- An inbox entry is gone: its gid no longer names it, and a message
-- leaves its conversation (and, with the last one, the pair's peer lists).
local function forget_gid(rec)
  local gid = gid_of(rec)
  if not gid then
    return
  end
  local info = redis.call('HGET', 'sb:gids', gid)
  if not info then
    return
  end
  redis.call('HDEL', 'sb:gids', gid)
  local to, seq, from = string.match(info, '^(.-)\31(%d+)\31(.*)$')
  if not to then
    return
  end
  local conv = conv_key(to, from)
  if redis.call('ZREM', conv, to .. SEP .. seq) == 1 and redis.call('EXISTS', conv) == 0 then
    redis.call('ZREM', user_key(to, 'peers'), from)
    redis.call('ZREM', user_key(from, 'peers'), to)
  end
end

-- Drops the inbox entries of `user` with min <= seq <= max (score syntax).
local function drop_inbox_range(user, min, max)
  local inbox = user_key(user, 'inbox')
  local gone = redis.call('ZRANGEBYSCORE', inbox, min, max)
  for _, rec in ipairs(gone) do
    forget_gid(rec)
  end
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', inbox, min, max)
  end
end

-- Arguments per op of `commit`, after the op name.
local ARITY = {
  room = 7, direct = 10, replace = 5, dedupe = 3, cursor = 3, read = 3,
  trim_room = 2, trim_inbox = 2, forget_room = 1, forget_inbox = 1,
  room_floor = 2, inbox_floor = 2,
}

-- Connections on every node (HASH node -> count, kept by presence.lua).
local function conns(key)
  local n = 0
  for _, v in ipairs(redis.call('HVALS', key)) do
    n = n + (tonumber(v) or 0)
  end
  return n
end

-- 1 if the origin names a connection (`NODE:CONN`), 0 for `NODE:`.
local function from_conn(origin)
  if string.sub(origin, -1) == ':' or origin == '' then return 0 end
  return 1
end

-- commit: applies one batch of writes.
--
-- ARGV: mode ('assign': number entries from the shared counters, check
-- dedupe ids, keep retention by count, publish; 'given': store the seqs
-- and gids as given, fail the batch if one is already stored), the data
-- set's identity the node opened (assign mode: the value of sb:cluster),
-- retention count, max device cursors, dedupe window (ms), then ops, each
-- its name and fixed arguments:
--   room    name, seq, ts, tail, dedupe field|'', dedupe ts, origin
--   direct  to, from, seq, gid, ts, is message 1|0, tail, dedupe field|'',
--           dedupe ts, origin
--   replace key, score, old member, new member, k: applied if old is still
--           there and (k > 0) the k-th room/direct op of the batch was new
--   dedupe  field, seq, ts          cursor  user, device, upto
--   read    user, key, upto         trim_room / trim_inbox  name, upto
--   forget_room / forget_inbox name room_floor / inbox_floor bucket, value
--
-- Returns, per room/direct op in order, {'new', seq, gid, reach} or
-- {'dup', seq}; reach (assign mode) is how many connections on every node
-- get the entry, the sender's not counted (the ack's `delivered`).
-- In assign mode a new entry is announced on its channel(s) as
-- 's|<origin>|<record>'.
local function commit(_, args)
  local assign = args[1] == 'assign'
  -- Counters continue only from the data set they were read from: after a
  -- Redis that lost its data (restarted empty, flushed), every seq would
  -- start again at 1 and reach clients a second time.
  if assign and redis.call('GET', 'sb:cluster') ~= args[2] then
    return redis.error_reply('SBLOST sb:cluster is not ' .. args[2] .. ': Redis lost the data set this node numbered from')
  end
  local keep = tonumber(args[3])
  local max_cursors = tonumber(args[4])
  local window = tonumber(args[5])
  local ops = {}
  local i = 6
  while i <= #args do
    local n = ARITY[args[i]]
    if not n or i + n > #args then
      return redis.error_reply('ERR switchboard commit: bad op ' .. tostring(args[i]) .. ' at ' .. i)
    end
    ops[#ops + 1] = {args[i], i + 1}
    i = i + 1 + n
  end

  -- Validation, before the first write. A key of the wrong type (damaged,
  -- or written by something else) would fail a write half-way.
  local function has_type(key, want)
    local t = redis.call('TYPE', key)['ok']
    return t == 'none' or t == want
  end
  local seen = {}
  for _, o in ipairs(ops) do
    local meta, key, seq
    if o[1] == 'room' then
      local name = args[o[2]]
      meta, key, seq = room_key(name, 'meta'), room_key(name, 'log'), args[o[2] + 1]
    elseif o[1] == 'direct' then
      local to = args[o[2]]
      meta, key, seq = user_key(to, 'meta'), user_key(to, 'inbox'), args[o[2] + 2]
    end
    if key then
      if not (has_type(meta, 'hash') and has_type(key, 'zset')) then
        return redis.error_reply('WRONGTYPE commit rejected: ' .. meta .. ' or ' .. key .. ' holds the wrong type')
      end
      local id = key .. SEP .. seq
      if not assign and (seen[id] or redis.call('ZCOUNT', key, seq, seq) > 0) then
        return redis.error_reply('SBSEQ commit rejected: seq ' .. seq .. ' of ' .. key .. ' is already stored')
      end
      seen[id] = true
    end
  end

  -- The original's seq if `field` was seen within the window.
  local function seen_before(field, ts)
    if field == '' then
      return nil
    end
    local v = redis.call('HGET', 'sb:dd', field)
    if not v then
      return nil
    end
    local seq, at = string.match(v, '^(%d+)|(%d+)$')
    if seq and tonumber(at) + window >= tonumber(ts) then
      return tonumber(seq)
    end
    return nil
  end
  local function remember(field, seq, ts)
    redis.call('HSET', 'sb:dd', field, int(seq) .. '|' .. ts)
    redis.call('ZADD', 'sb:dd:ts', ts, field)
  end
  -- The next seq of a counter; a counter that is gone (never there, or
  -- forgotten) starts from the node's provisional seq, which is above the
  -- floor the node knows for the name.
  local function next_seq(meta, provisional)
    local last = tonumber(redis.call('HGET', meta, 'seq'))
    if last then
      return last + 1
    end
    return math.max(1, tonumber(provisional))
  end
  local function set_counter(meta, seq, ts)
    local last = tonumber(redis.call('HGET', meta, 'seq'))
    if not last or seq >= last then
      redis.call('HSET', meta, 'seq', int(seq), 'ts', ts)
    end
  end

  local results = {}
  local fresh = {}
  for _, o in ipairs(ops) do
    local op, a = o[1], o[2]
    if op == 'room' then
      local name, ts, tail = args[a], args[a + 2], args[a + 3]
      local field, dd_ts, origin = args[a + 4], args[a + 5], args[a + 6]
      local dup = assign and seen_before(field, dd_ts)
      if dup then
        results[#results + 1] = {'dup', dup}
        fresh[#results] = false
      else
        local meta, log = room_key(name, 'meta'), room_key(name, 'log')
        local seq = tonumber(args[a + 1])
        if assign then
          seq = next_seq(meta, seq)
        end
        local rec = '{"seq":' .. int(seq) .. ',"gid":0,' .. tail
        redis.call('ZADD', log, seq, rec)
        set_counter(meta, seq, ts)
        redis.call('SADD', 'sb:rooms', name)
        if assign then
          if seq > keep then
            redis.call('ZREMRANGEBYSCORE', log, '-inf', int(seq - keep))
          end
          if field ~= '' then
            remember(field, seq, dd_ts)
          end
          redis.call('PUBLISH', room_key(name, 'ch'), 's|' .. origin .. '|' .. rec)
        end
        -- The sender (a member, if a connection sent it) gets the ack.
        local reach = assign and conns(room_key(name, 'conns')) - from_conn(origin) or 0
        results[#results + 1] = {'new', seq, 0, math.max(0, reach)}
        fresh[#results] = true
      end
    elseif op == 'direct' then
      local to, from, ts, message = args[a], args[a + 1], args[a + 4], args[a + 5]
      local tail, field, dd_ts, origin = args[a + 6], args[a + 7], args[a + 8], args[a + 9]
      local dup = assign and seen_before(field, dd_ts)
      if dup then
        results[#results + 1] = {'dup', dup}
        fresh[#results] = false
      else
        local meta, inbox = user_key(to, 'meta'), user_key(to, 'inbox')
        local seq, gid = tonumber(args[a + 2]), tonumber(args[a + 3])
        local last_gid = tonumber(redis.call('GET', 'sb:gid')) or 0
        if assign then
          seq = next_seq(meta, seq)
          if last_gid > 0 then
            gid = last_gid + 1
          else
            gid = math.max(1, gid)
          end
        end
        if gid > last_gid then
          redis.call('SET', 'sb:gid', int(gid))
        end
        local rec = '{"seq":' .. int(seq) .. ',"gid":' .. int(gid) .. ',' .. tail
        redis.call('ZADD', inbox, seq, rec)
        set_counter(meta, seq, ts)
        redis.call('HSET', 'sb:gids', int(gid), to .. SEP .. int(seq) .. SEP .. from)
        if message == '1' then
          redis.call('ZADD', conv_key(to, from), gid, to .. SEP .. int(seq))
          redis.call('ZADD', user_key(to, 'peers'), 'GT', gid, from)
          redis.call('ZADD', user_key(from, 'peers'), 'GT', gid, to)
        end
        redis.call('SADD', 'sb:inboxes', to)
        if assign then
          if seq > keep then
            drop_inbox_range(to, '-inf', int(seq - keep))
          end
          if field ~= '' then
            remember(field, seq, dd_ts)
          end
          local payload = 's|' .. origin .. '|' .. rec
          redis.call('PUBLISH', user_key(to, 'ch'), payload)
          if from ~= to then
            redis.call('PUBLISH', user_key(from, 'ch'), payload)
          end
        end
        local reach = 0
        if assign then
          reach = conns(user_key(to, 'conns'))
          if from == to then reach = reach - from_conn(origin) end
        end
        results[#results + 1] = {'new', seq, gid, math.max(0, reach)}
        fresh[#results] = true
      end
    elseif op == 'replace' then
      local key, score, old, new, k = args[a], args[a + 1], args[a + 2], args[a + 3], tonumber(args[a + 4])
      if (k == 0 or fresh[k]) and redis.call('ZSCORE', key, old) then
        redis.call('ZREM', key, old)
        redis.call('ZADD', key, score, new)
      end
    elseif op == 'dedupe' then
      remember(args[a], tonumber(args[a + 1]), args[a + 2])
    elseif op == 'cursor' then
      local cur, device, upto = user_key(args[a], 'cur'), args[a + 1], tonumber(args[a + 2])
      local now = tonumber(redis.call('HGET', cur, device))
      if not now or upto > now then
        redis.call('HSET', cur, device, int(upto))
      end
      if redis.call('HLEN', cur) > max_cursors then
        -- The one furthest behind goes (ties: the greatest name).
        local all = redis.call('HGETALL', cur)
        local victim, lowest
        for j = 1, #all, 2 do
          local d, u = all[j], tonumber(all[j + 1])
          if not victim or u < lowest or (u == lowest and less(victim, d)) then
            victim, lowest = d, u
          end
        end
        redis.call('HDEL', cur, victim)
      end
    elseif op == 'read' then
      local user, key, upto = args[a], args[a + 1], tonumber(args[a + 2])
      local reads = user_key(user, 'reads')
      local now = tonumber(redis.call('HGET', reads, key))
      if not now or upto > now then
        redis.call('HSET', reads, key, int(upto))
      end
      if string.sub(key, 1, 5) == 'room:' then
        -- Who holds a position in the room, for forget_room.
        redis.call('SADD', room_key(string.sub(key, 6), 'readers'), user)
      end
    elseif op == 'trim_room' then
      redis.call('ZREMRANGEBYSCORE', room_key(args[a], 'log'), '-inf', args[a + 1])
    elseif op == 'trim_inbox' then
      drop_inbox_range(args[a], '-inf', args[a + 1])
    elseif op == 'forget_room' then
      local name = args[a]
      redis.call('DEL', room_key(name, 'meta'), room_key(name, 'log'))
      redis.call('SREM', 'sb:rooms', name)
      local readers = room_key(name, 'readers')
      for _, user in ipairs(redis.call('SMEMBERS', readers)) do
        redis.call('HDEL', user_key(user, 'reads'), 'room:' .. name)
      end
      redis.call('DEL', readers)
    elseif op == 'forget_inbox' then
      local user = args[a]
      drop_inbox_range(user, '-inf', '+inf')
      redis.call('DEL', user_key(user, 'meta'), user_key(user, 'inbox'), user_key(user, 'cur'))
      redis.call('SREM', 'sb:inboxes', user)
      -- Positions in this user's inbox: its seqs go on from the floor, so
      -- none of them can apply again.
      local reads = user_key(user, 'reads')
      for _, key in ipairs(redis.call('HKEYS', reads)) do
        if string.sub(key, 1, 5) == 'user:' then
          redis.call('HDEL', reads, key)
        end
      end
    elseif op == 'room_floor' or op == 'inbox_floor' then
      local floors = op == 'room_floor' and 'sb:floors:room' or 'sb:floors:inbox'
      local now = tonumber(redis.call('HGET', floors, args[a]))
      if not now or tonumber(args[a + 1]) > now then
        redis.call('HSET', floors, args[a], args[a + 1])
      end
    end
  end
  return results
end

-- trim: retention by age for one batch of names, or dedupe expiry.
--
-- ARGV: what ('room' | 'inbox' | 'dedupe'), cut-off (ms), then names.
-- Entries go from the oldest while their ts is below the cut-off (seqs
-- rise with time, so the first one at or above it ends the scan). For
-- 'dedupe' at most 1000 entries go per call; returns how many went.
local function trim(_, args)
  local what, cut = args[1], tonumber(args[2])
  if what == 'dedupe' then
    -- The cut-off as sent: past 2^53 a Lua number no longer prints back.
    local gone = redis.call('ZRANGEBYSCORE', 'sb:dd:ts', '-inf', '(' .. args[2], 'LIMIT', 0, 1000)
    if #gone > 0 then
      redis.call('HDEL', 'sb:dd', unpack(gone))
      redis.call('ZREM', 'sb:dd:ts', unpack(gone))
    end
    return #gone
  end
  local dropped = 0
  for j = 3, #args do
    local name = args[j]
    local key = what == 'room' and room_key(name, 'log') or user_key(name, 'inbox')
    while true do
      local head = redis.call('ZRANGE', key, 0, 99, 'WITHSCORES')
      local upto
      for h = 1, #head, 2 do
        local ts = num_field(head[h], 'ts')
        if not ts or ts >= cut then
          break
        end
        upto = head[h + 1]
      end
      if not upto then
        break
      end
      if what == 'room' then
        dropped = dropped + redis.call('ZREMRANGEBYSCORE', key, '-inf', upto)
      else
        drop_inbox_range(name, '-inf', upto)
      end
    end
  end
  return dropped
end

-- unread: counts the messages (not recalled) of a room log or an inbox
-- with seq > after, from (mode 'from') or not from (mode 'notfrom') the
-- user whose name is given JSON-encoded, up to `max`.
--
-- ARGV: key, after, mode, name (JSON string), max.
local function unread(_, args)
  local key, after, mode, max = args[1], args[2], args[3], tonumber(args[5])
  local needle = ',"from":' .. args[4] .. ',"ts":'
  local count, offset = 0, 0
  while count < max do
    local page = redis.call('ZRANGEBYSCORE', key, '(' .. after, '+inf', 'LIMIT', offset, 200)
    for _, rec in ipairs(page) do
      local at = string.find(rec, ',"from":', 1, true)
      local same = at ~= nil and string.sub(rec, at, at + #needle - 1) == needle
      local kind, recalled = string.match(rec, ',"kind":(%d+),"target":%d+,"edited":%d+,"recalled":(%d+),')
      if kind == '0' and recalled == '0' and same == (mode == 'from') then
        count = count + 1
        if count >= max then
          break
        end
      end
    end
    if #page < 200 then
      break
    end
    offset = offset + #page
  end
  return count
end

redis.register_function('commit', commit)
redis.register_function('trim', trim)
redis.register_function{function_name = 'unread', callback = unread, flags = {'no-writes'}}
