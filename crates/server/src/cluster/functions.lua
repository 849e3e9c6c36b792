#!lua name=switchboard_v1
-- Switchboard's Redis Function library (cluster mode). Loaded by every node
-- with FUNCTION LOAD REPLACE at connect (crates/server/src/cluster/
-- sequencer.rs); a change of what a function does or returns takes a new
-- library name, so nodes of two versions never replace each other's code.
--
-- Each function is one atomic step: Redis runs it to the end with nothing
-- in between. Writes are ordered so that a step that fails (an error
-- raised by redis.call) has written nothing: Redis does not roll back what
-- a function wrote before an error.

-- Milliseconds since the epoch on Redis' clock: one clock for every node.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- An integer as decimal text (tostring would give "1e+15" past 14 digits).
local function int(n)
  return string.format('%d', n)
end

-- publish: sequence, store and announce one room message.
--
-- KEYS[1] sb:{r:ROOM}:meta  HASH  seq (last seq), ts (its ts)
-- KEYS[2] sb:{r:ROOM}:log   STREAM  ID <seq>-0, field e = the event JSON
-- KEYS[3] (only with an id) the dedupe key, storing the original's seq
-- ARGV    channel, room (JSON string), from (JSON string), body (JSON),
--         retention count, dedupe window (ms), origin (no '|')
--
-- Returns {'dup', seq} for a repeated id, else {'new', seq, ts}. The
-- channel gets '<seq>|<origin>|<event>'.
local function publish(keys, args)
  local meta, log, dd = keys[1], keys[2], keys[3]
  local channel, room, from, body = args[1], args[2], args[3], args[4]
  local keep, window, origin = args[5], args[6], args[7]
  if dd then
    local seen = redis.call('GET', dd)
    if seen then
      return {'dup', tonumber(seen)}
    end
  end
  local state = redis.call('HMGET', meta, 'seq', 'ts')
  local seq = int((tonumber(state[1]) or 0) + 1)
  -- ts never goes back within a room, even if Redis' clock does.
  local ts = int(math.max(now_ms(), tonumber(state[2]) or 0))
  -- Byte for byte what protocol::encode(Message) writes for a live message.
  local event = '{"type":"message","room":' .. room .. ',"seq":' .. seq
    .. ',"from":' .. from .. ',"ts":' .. ts .. ',"body":' .. body .. '}'
  -- First write: it fails (nothing written) if the log is ahead of the
  -- counter, rather than reuse a seq.
  redis.call('XADD', log, 'MAXLEN', keep, seq .. '-0', 'e', event)
  redis.call('HSET', meta, 'seq', seq, 'ts', ts)
  if dd then
    redis.call('SET', dd, seq, 'PX', window)
  end
  redis.call('PUBLISH', channel, seq .. '|' .. origin .. '|' .. event)
  return {'new', tonumber(seq), tonumber(ts)}
end

redis.register_function('publish', publish)
