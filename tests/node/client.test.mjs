// client.js (web/client.js) against the real binary: commands and acks,
// errors, ack timeouts, reconnect with backoff, rejoin after a restart,
// dead-connection detection, and the offline queue.
// The tests that need the persistence server (replay, dedupe, inbox,
// receipts, history) are in client-resume.test.mjs.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket, { WebSocketServer } from 'ws';
import { readFileSync } from 'node:fs';
import { Client, SwitchboardError } from '../../web/client.js';
import { Server, Proxy, waitFor, waitState, collector } from './client-helpers.mjs';

let server;
before(async () => { server = await new Server(['--rate-limit', '0']).start(); });
after(async () => { await server.dispose(); });

const clients = [];
function client(user, options = {}) {
  const c = new Client({ url: `ws://${options.addr || server.addr}/ws`, user, WebSocket, ...options });
  clients.push(c);
  return c;
}
after(() => { for (const c of clients) c.close(); });

let rooms = 0;
const newRoom = () => `room-${++rooms}`;

test('connect, join, publish: acks resolve, others get each message once, presence and online counts', async () => {
  const room = newRoom();
  const alice = client('alice');
  const bob = client('bob');
  const states = [];
  alice.on('state', (s) => states.push(s.state));
  const welcome = await alice.connect();
  assert.equal(welcome.user, 'alice');
  assert.deepEqual(states, ['connecting', 'connected']);

  const aliceGot = collector();
  const alicePresence = collector();
  const joined = await alice.join(room, { onMessage: aliceGot, onPresence: alicePresence });
  assert.equal(joined.online, 1);
  assert.equal(joined.seq, 0);

  const bobGot = collector();
  const bobJoined = await bob.join(room, { onMessage: bobGot });
  assert.equal(bobJoined.online, 2);
  const [p] = await alicePresence.until(1);
  assert.deepEqual([p.event, p.user, p.online], ['join', 'bob', 2]);

  const ack1 = await alice.publish(room, { text: 'one' });
  const ack2 = await bob.publish(room, { text: 'two' });
  assert.deepEqual([ack1.seq, ack1.delivered, ack2.seq], [1, 1, 2]);
  const [m] = await aliceGot.until(1);
  assert.deepEqual([m.from, m.seq, m.body], ['bob', 2, { text: 'two' }]);
  await bobGot.until(1);
  assert.deepEqual(bobGot.items.map((x) => x.body.text), ['one']);
  assert.equal(alice.lastSeq(room), 2);

  const list = await alice.presence(room);
  assert.deepEqual([list.online, list.users], [2, ['alice', 'bob']]);

  await bob.leave(room);
  const [, left] = await alicePresence.until(2);
  assert.deepEqual([left.event, left.user, left.online], ['leave', 'bob', 1]);
  assert.deepEqual(bob.rooms, []);
});

test('send: the recipient gets a direct on every device, the sender\'s other devices a copy', async () => {
  const carol1 = client('carol');
  const carol2 = client('carol');
  const dave1 = client('dave');
  const dave2 = client('dave');
  await Promise.all([carol1.connect(), carol2.connect(), dave1.connect(), dave2.connect()]);
  const toDave1 = waitFor(dave1, 'direct');
  const toDave2 = waitFor(dave2, 'direct');
  const copy = waitFor(carol2, 'direct');
  const ack = await carol1.send('dave', { text: 'psst' });
  assert.equal(ack.to, 'dave');
  assert.equal(ack.delivered, 2);
  for (const d of await Promise.all([toDave1, toDave2, copy])) {
    assert.deepEqual([d.from, d.to, d.seq, d.body.text], ['carol', 'dave', ack.seq, 'psst']);
  }
});

test('a refused command rejects with the server\'s error; a refused join is not rejoined', async () => {
  const erin = client('erin');
  await assert.rejects(erin.publish(newRoom(), 'x'), (err) => {
    assert.ok(err instanceof SwitchboardError);
    assert.equal(err.code, 'not_joined');
    assert.match(err.message, /not joined/);
    return true;
  });
  await assert.rejects(erin.join(' bad room '), { code: 'bad_request' });
  assert.deepEqual(erin.rooms, []);
  // The connection is still usable.
  assert.ok((await erin.ping()) >= 0);
});

test('an invalid nickname is refused for good: no reconnect loop', async () => {
  const bad = client('bad\nname');
  const states = [];
  bad.on('state', (s) => states.push(s.state));
  await assert.rejects(bad.connect(), { code: 'bad_request' });
  assert.equal(bad.state, 'offline');
  await assert.rejects(bad.publish('lobby', 1), { code: 'bad_request' });
  assert.deepEqual(states, ['connecting', 'offline']);
});

test('ack timeout: a command whose reply never comes rejects with `timeout`', async () => {
  const proxy = await new Proxy(server.port).listen();
  const fay = client('fay', { addr: proxy.addr, ackTimeout: 300, pingInterval: 60_000 });
  const room = newRoom();
  await fay.join(room);
  proxy.blackhole();
  const started = Date.now();
  await assert.rejects(fay.publish(room, 'lost'), (err) => {
    assert.equal(err.code, 'timeout');
    return true;
  });
  const elapsed = Date.now() - started;
  assert.ok(elapsed >= 290 && elapsed < 2000, `timed out after ${elapsed} ms`);
  assert.equal(fay.pendingCount, 0);
  fay.close();
  await proxy.close();
});

test('backoff: exponential, capped, with jitter in [cap/2, cap]', () => {
  const at = (r) => new Client({ url: 'ws://127.0.0.1:1/ws', WebSocket, reconnect: { min: 100, max: 1000, factor: 2 }, random: () => r });
  const low = at(0);
  const high = at(0.999999);
  assert.deepEqual([0, 1, 2, 3, 4, 5].map((n) => low.backoff(n)), [50, 100, 200, 400, 500, 500]);
  assert.deepEqual([0, 1, 2, 3, 4, 5].map((n) => high.backoff(n)), [100, 200, 400, 800, 1000, 1000]);
  // Real jitter spreads clients out.
  const real = new Client({ url: 'ws://127.0.0.1:1/ws', WebSocket });
  const delays = new Set(Array.from({ length: 50 }, () => real.backoff(3)));
  assert.ok(delays.size > 10, 'jittered delays differ');
});

test('reconnect: retries with growing delays while the server is unreachable, then connects by itself', async () => {
  const proxy = await new Proxy(server.port).listen();
  proxy.refuse();
  const opened = [];
  class CountingWebSocket extends WebSocket {
    constructor(url) { super(url); opened.push(Date.now()); }
  }
  const gus = client('gus', { addr: proxy.addr, WebSocket: CountingWebSocket, reconnect: { min: 80, max: 400, factor: 2 } });
  const retries = [];
  gus.on('state', (s) => { if (s.state === 'reconnecting') retries.push(s); });
  const connected = gus.connect();
  // Five failed attempts (the first connection and four retries).
  while (retries.length < 5) await waitFor(gus, 'state', (s) => s.state === 'reconnecting');
  assert.deepEqual(retries.map((r) => r.attempt), [1, 2, 3, 4, 5]);
  const caps = [80, 160, 320, 400, 400];
  retries.forEach((r, i) => {
    assert.ok(r.delay >= caps[i] / 2 && r.delay <= caps[i], `attempt ${i + 1}: ${r.delay} ms within [${caps[i] / 2}, ${caps[i]}]`);
  });
  // No attempt came earlier than its announced delay.
  for (let i = 1; i < 5; i += 1) {
    const gap = opened[i] - opened[i - 1];
    assert.ok(gap >= retries[i - 1].delay - 5, `gap ${gap} ms before attempt ${i + 1} (delay ${retries[i - 1].delay})`);
  }
  proxy.pass();
  const welcome = await connected;
  assert.equal(welcome.user, 'gus');
  assert.equal(gus.state, 'connected');
  gus.close();
  await proxy.close();
});

test('server restart: the client reconnects, rejoins its rooms and keeps receiving', async () => {
  const own = await new Server(['--rate-limit', '0']).start();
  const url = `ws://${own.addr}/ws`;
  const room = 'restart-room';
  const hank = new Client({ url, user: 'hank', WebSocket, reconnect: { min: 50, max: 200 } });
  const ida = new Client({ url, user: 'ida', WebSocket, reconnect: { min: 50, max: 200 } });
  clients.push(hank, ida);
  const got = collector();
  await hank.join(room, { onMessage: got });
  await ida.join(room);
  await ida.publish(room, 'before');
  await got.until(1);

  const reconnecting = waitState(hank, 'reconnecting');
  const rejoined = [hank, ida].map((c) => waitFor(c, 'joined', (j) => j.room === room));
  await own.kill();
  await reconnecting;
  await own.start();
  // Both come back by themselves and rejoin the room.
  await Promise.all(rejoined);
  const list = await ida.presence(room);
  assert.deepEqual(list.users, ['hank', 'ida']);
  await ida.publish(room, 'after');
  await got.until(2);
  assert.deepEqual(got.items.map((m) => m.body), ['before', 'after']);
  hank.close();
  ida.close();
  await own.dispose();
});

test('heartbeat: a silently dead connection is noticed by ping and replaced', async () => {
  const proxy = await new Proxy(server.port).listen();
  const room = newRoom();
  const jo = client('jo', { addr: proxy.addr, pingInterval: 150, pingTimeout: 250, reconnect: { min: 20, max: 100 } });
  const got = collector();
  await jo.join(room, { onMessage: got });
  const firstSession = jo.session;
  const started = Date.now();
  const rejoined = waitFor(jo, 'joined', (j) => j.room === room);
  proxy.blackhole();
  const lost = await waitState(jo, 'reconnecting');
  assert.match(lost.reason, /heartbeat/);
  const noticed = Date.now() - started;
  assert.ok(noticed < 2000, `dead connection noticed after ${noticed} ms`);
  await rejoined;
  assert.equal(jo.state, 'connected');
  assert.notEqual(jo.session, firstSession);
  // The new connection works and receives the room.
  const other = client('kim');
  await other.join(room);
  await other.publish(room, 'still here');
  await got.until(1);
  jo.close();
  await proxy.close();
});

test('offline queue: commands issued while disconnected are sent once, in order, after reconnect', async () => {
  const proxy = await new Proxy(server.port).listen();
  const room = newRoom();
  const lee = client('lee', { addr: proxy.addr, reconnect: { min: 50, max: 200 } });
  const max = client('max');
  const got = collector();
  await lee.join(room);
  await max.join(room, { onMessage: got });

  proxy.refuse();
  proxy.cut();
  await waitState(lee, 'reconnecting');
  const acks = ['a', 'b', 'c'].map((text) => lee.publish(room, { text }));
  assert.equal(lee.pendingCount, 3);
  proxy.pass();
  const seqs = (await Promise.all(acks)).map((a) => a.seq);
  assert.deepEqual(seqs, [1, 2, 3]);
  await lee.publish(room, { text: 'end' });
  // `end` follows a, b and c in seq order: once it is here, any duplicate would be too.
  await got.until(4);
  assert.deepEqual(got.items.map((m) => [m.seq, m.body.text]), [[1, 'a'], [2, 'b'], [3, 'c'], [4, 'end']]);
  await proxy.close();
});

/**
 * A scripted server: `script(n, cmd, reply, ws)` sees every command of
 * connection n (the first one is 1), a `hello` after its `welcome` went out.
 */
async function scripted(script) {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await new Promise((r) => wss.once('listening', r));
  let connections = 0;
  wss.on('connection', (ws) => {
    const n = ++connections;
    ws.on('message', (data) => {
      const cmd = JSON.parse(data.toString());
      const reply = (e) => ws.send(JSON.stringify(e));
      if (cmd.type === 'hello') reply({ type: 'welcome', id: cmd.id, user: cmd.user, session: `s${n}`, heartbeat: 25 });
      script(n, cmd, reply, ws);
    });
  });
  return { url: `ws://127.0.0.1:${wss.address().port}/ws`, close: () => new Promise((r) => wss.close(r)) };
}

// The client's side of resume, against a scripted server: what it sends on
// reconnect (join with since, the same ids again) and what it drops.
test('resume contract: rejoin with since = last seq, resend in-flight commands with their ids, drop replayed duplicates', async () => {
  const seen = []; // [connection number, command]
  const server = await scripted((n, cmd, reply, ws) => {
    seen.push([n, cmd]);
    if (cmd.type === 'join' && n === 1) {
      reply({ type: 'joined', id: cmd.id, room: 'r', online: 1, seq: 2 });
      reply({ type: 'message', room: 'r', seq: 3, from: 'x', ts: 1, body: 3 });
      reply({ type: 'message', room: 'r', seq: 3, from: 'x', ts: 1, body: 3 }); // duplicate
    }
    if (cmd.type === 'publish' && n === 1) {
      // Acked as seq 4 … but the connection dies before the ack arrives.
      ws.terminate();
    }
    if (cmd.type === 'join' && n === 2) {
      // Replay after `since`: 4 is our own publish (stored before the
      // connection died), 5 is new. Both come before the resend's ack.
      reply({ type: 'message', room: 'r', seq: 4, from: 'me', ts: 2, body: 'mine' });
      reply({ type: 'message', room: 'r', seq: 5, from: 'x', ts: 3, body: 5 });
      reply({ type: 'joined', id: cmd.id, room: 'r', online: 1, seq: 5 });
    }
    if (cmd.type === 'publish' && n === 2) {
      reply({ type: 'ack', id: cmd.id, room: 'r', seq: 4, delivered: 0, duplicate: true });
    }
  });
  const me = new Client({ url: server.url, user: 'me', device: 'laptop', WebSocket, reconnect: { min: 10, max: 50 } });
  clients.push(me);
  const got = collector();
  await me.join('r', { onMessage: got });
  await got.until(1);
  const ack = await me.publish('r', 'mine');
  assert.equal(ack.seq, 4);
  await got.until(2);
  // 4 came back before its ack, but it is ours: held until the ack named
  // it, then dropped; 5 waited for it, so the order holds.
  assert.deepEqual(got.items.map((m) => m.seq), [3, 5]);
  assert.equal(me.lastSeq('r'), 5);
  const joins = seen.filter(([, c]) => c.type === 'join').map(([n, c]) => [n, c.since]);
  assert.deepEqual(joins, [[1, undefined], [2, 3]]);
  const publishes = seen.filter(([, c]) => c.type === 'publish');
  assert.equal(publishes.length, 2);
  assert.equal(publishes[0][1].id, publishes[1][1].id, 'resent with the same id');
  const hellos = seen.filter(([, c]) => c.type === 'hello').map(([, c]) => [c.user, c.device]);
  assert.deepEqual(hellos, [['me', 'laptop'], ['me', 'laptop']]);
  // On the new connection the join goes before the resent publish.
  const second = seen.filter(([n]) => n === 2).map(([, c]) => c.type);
  assert.deepEqual(second, ['hello', 'join', 'publish']);
  me.close();
  await server.close();
});

// A send whose ack was lost with its connection can come back to the
// sender as a copy (the server read it late and the new connection is one
// of the sender's "other" connections) before the resend's duplicate ack.
test('resume contract: the copy of our own send, back before its resend is acked, is not taken for another device\'s', async () => {
  const sends = [];
  const server = await scripted((n, cmd, reply, ws) => {
    if (cmd.type !== 'send') return;
    sends.push([n, cmd.id]);
    if (n === 1) {
      ws.terminate(); // stored as bob's inbox seq 7; the ack is lost
      return;
    }
    // The first send's copy, then one from another device, then the ack.
    reply({ type: 'direct', from: 'me', to: 'bob', seq: 7, gid: 70, ts: 1, body: 'mine' });
    reply({ type: 'direct', from: 'me', to: 'bob', seq: 8, gid: 71, ts: 2, body: 'from my phone' });
    reply({ type: 'ack', id: cmd.id, to: 'bob', seq: 7, delivered: 1, stored: true, duplicate: true });
    // Late again (the server's fan-out behind its dedupe): still ours.
    reply({ type: 'direct', from: 'me', to: 'bob', seq: 7, gid: 70, ts: 1, body: 'mine' });
    reply({ type: 'direct', from: 'bob', to: 'me', seq: 1, gid: 72, ts: 3, body: 'hi' });
  });
  const me = new Client({ url: server.url, user: 'me', WebSocket, reconnect: { min: 10, max: 50 } });
  clients.push(me);
  const got = [];
  me.on('direct', (d) => got.push(d.body));
  await me.connect();
  const last = waitFor(me, 'direct', (d) => d.body === 'hi');
  const ack = await me.send('bob', 'mine');
  assert.equal(ack.seq, 7);
  await last;
  assert.deepEqual(got, ['from my phone', 'hi']);
  assert.equal(sends.length, 2);
  assert.equal(sends[0][1], sends[1][1], 'resent with the same id');
  me.close();
  await server.close();
});

test('resume contract: held events survive a reset in them and another lost connection; our own message is still dropped', async () => {
  const server = await scripted((n, cmd, reply, ws) => {
    if (cmd.type === 'join' && n === 1) reply({ type: 'joined', id: cmd.id, room: 'r', online: 1, seq: 3 });
    if (cmd.type === 'join' && n > 1) {
      // More missed than the server replays: a reset, then our own 2001.
      reply({ type: 'joined', id: cmd.id, room: 'r', online: 1, seq: 2002 });
      reply({ type: 'reset', room: 'r', seq: 2000 });
      reply({ type: 'message', room: 'r', seq: 2001, from: 'me', ts: 2, body: 'mine' });
      reply({ type: 'message', room: 'r', seq: 2002, from: 'x', ts: 3, body: 'other' });
    }
    // Lost twice before the resend is answered.
    if (cmd.type === 'publish' && n < 3) ws.terminate();
    if (cmd.type === 'publish' && n === 3) reply({ type: 'ack', id: cmd.id, room: 'r', seq: 2001, delivered: 0, duplicate: true });
  });
  const me = new Client({ url: server.url, user: 'me', WebSocket, reconnect: { min: 10, max: 50 } });
  clients.push(me);
  const got = [];
  me.on('message', (m) => got.push([m.seq, m.body]));
  me.on('reset', (e) => got.push(['reset', e.seq]));
  await me.join('r');
  const ack = await me.publish('r', 'mine');
  // What waited went on before the ack resolved: once, in order, without ours.
  assert.equal(ack.seq, 2001);
  assert.deepEqual(got, [['reset', 2000], [2002, 'other']]);
  assert.equal(me.lastSeq('r'), 2002);
  me.close();
  await server.close();
});

test('resume contract: a retry with the same id while the first is unanswered is one command; the room does not stay held', async () => {
  const server = await scripted((n, cmd, reply, ws) => {
    if (cmd.type === 'join') reply({ type: 'joined', id: cmd.id, room: 'r', online: 1, seq: 3 });
    if (cmd.type === 'publish' && n === 1) ws.terminate();
    if (cmd.type === 'publish' && n === 2) reply({ type: 'ack', id: cmd.id, room: 'r', seq: 4, delivered: 0, duplicate: true });
    if (cmd.type === 'ping') {
      reply({ type: 'message', room: 'r', seq: 5, from: 'x', ts: 3, body: 'other' });
      reply({ type: 'pong', id: cmd.id });
    }
  });
  const me = new Client({ url: server.url, user: 'me', WebSocket, reconnect: { min: 200, max: 300 } });
  clients.push(me);
  const got = collector();
  await me.join('r', { onMessage: got });
  const first = me.publish('r', 'mine', { id: 'm1' });
  await waitState(me, 'reconnecting'); // the first is in doubt now
  const retry = me.publish('r', 'mine', { id: 'm1' });
  const [a, b] = await Promise.all([first, retry]);
  assert.deepEqual([a.seq, b.seq], [4, 4], 'one reply settles both');
  await me.ping();
  await got.until(1);
  assert.deepEqual(got.items.map((m) => m.seq), [5]);
  me.close();
  await server.close();
});

test('close(): unanswered and queued commands reject with `closed`, no reconnect', async () => {
  const proxy = await new Proxy(server.port).listen();
  proxy.refuse();
  const ned = client('ned', { addr: proxy.addr, reconnect: { min: 20, max: 40 } });
  const pending = ned.publish('lobby', 'never');
  await waitState(ned, 'reconnecting');
  ned.close();
  await assert.rejects(pending, { code: 'closed' });
  assert.equal(ned.state, 'closed');
  const accepted = proxy.accepted;
  await assert.rejects(ned.connect(), { code: 'closed' });
  assert.equal(proxy.accepted, accepted);
  await proxy.close();
});

test('the server serves the app and the library from the binary, as built from web/', async () => {
  for (const [path, file, type] of [
    ['/', 'index.html', 'text/html; charset=utf-8'],
    ['/app.js', 'app.js', 'text/javascript; charset=utf-8'],
    ['/i18n.js', 'i18n.js', 'text/javascript; charset=utf-8'],
    ['/app.css', 'app.css', 'text/css; charset=utf-8'],
    ['/favicon.svg', 'favicon.svg', 'image/svg+xml'],
    ['/client.js', 'client.js', 'text/javascript; charset=utf-8'],
    ['/client.d.ts', 'client.d.ts', 'application/typescript; charset=utf-8'],
  ]) {
    const res = await fetch(`${server.url}${path}`);
    assert.equal(res.status, 200, path);
    assert.equal(res.headers.get('content-type'), type, path);
    assert.equal(res.headers.get('cache-control'), 'no-cache', path);
    assert.equal(res.headers.get('x-content-type-options'), 'nosniff', path);
    // Stale binary? Rebuild it (cargo build -p switchboard): the assets are embedded.
    assert.equal(await res.text(), readFileSync(new URL(`../../web/${file}`, import.meta.url), 'utf8'), `${path} is web/${file}`);
    const etag = res.headers.get('etag');
    assert.match(etag, /^"[0-9a-f]{16}"$/);
    const again = await fetch(`${server.url}${path}`, { headers: { 'if-none-match': etag } });
    assert.equal(again.status, 304, `${path} revalidates`);
  }
  const page = await fetch(`${server.url}/`);
  assert.match(page.headers.get('content-security-policy'), /script-src 'self'/);
  assert.equal(page.headers.get('access-control-allow-origin'), null);
  const lib = await fetch(`${server.url}/client.js`);
  assert.equal(lib.headers.get('access-control-allow-origin'), '*', 'importable from other origins');
});
