// client.js over the HTTP transport (Server-Sent Events + POST) against the
// real binary: the same API and guarantees as over a WebSocket — acks as
// promises, resume with `since`, the offline queue resent once with the
// same ids — plus the transport's own: a broken stream reattached by
// Last-Event-ID, the fallback when a proxy refuses the WebSocket, and the
// way back once it passes. Needs the store (replay, dedupe); Node 20 has no
// EventSource, so the `eventsource` package stands in for the browser's.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { EventSource } from 'eventsource';
import { Client } from '../../web/client.js';
import { Server, HttpProxy, waitFor, waitState, waitUntil, collector } from './client-helpers.mjs';

let server;
before(async () => { server = await new Server(['--rate-limit', '0']).start(); });
after(async () => { await server.dispose(); });

const clients = [];
function client(user, options = {}) {
  const c = new Client({
    url: `ws://${options.addr || server.addr}/ws`,
    user,
    WebSocket,
    EventSource,
    reconnect: { min: 50, max: 300 },
    ...options,
  });
  clients.push(c);
  return c;
}
/** A client on the HTTP transport only. */
const sseClient = (user, options = {}) => client(user, { transports: ['sse'], ...options });
after(() => { for (const c of clients) c.close(); });

let rooms = 0;
const newRoom = () => `sse-${++rooms}`;
const texts = (items) => items.map((m) => m.body.text);

test('over SSE: join, publish and send resolve with their acks; an SSE user and a WebSocket user talk both ways', async () => {
  const room = newRoom();
  const ann = sseClient('ann', { device: 'laptop' });
  const bob = client('bob', { transports: ['websocket'] });
  const states = [];
  ann.on('state', (s) => states.push(s));
  const annGot = collector();
  const bobGot = collector();
  const joined = await ann.join(room, { onMessage: annGot });
  assert.equal(joined.online, 1);
  assert.equal(ann.transport, 'sse');
  assert.equal(ann.user, 'ann');
  assert.deepEqual(states.map((s) => [s.state, s.transport]), [['connecting', undefined], ['connected', 'sse']]);
  const presence = waitFor(ann, 'presence', (p) => p.user === 'bob');
  await bob.join(room, { onMessage: bobGot });
  assert.equal(bob.transport, 'websocket');
  assert.equal((await presence).online, 2);

  const ack = await ann.publish(room, { text: 'from sse' });
  assert.equal(ack.type, 'ack');
  assert.equal(typeof ack.seq, 'number');
  await bobGot.until(1);
  await bob.publish(room, { text: 'from ws' });
  await annGot.until(1);
  assert.deepEqual(texts(annGot.items), ['from ws'], 'not its own message');
  assert.deepEqual(texts(bobGot.items), ['from sse']);

  // Many commands at once: batched into POSTs, answered in order.
  const burst = await Promise.all(Array.from({ length: 40 }, (_, i) => ann.publish(room, { text: `b${i}` })));
  const seqs = burst.map((a) => a.seq);
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
  assert.equal(new Set(seqs).size, 40);
  await bobGot.until(41);
  assert.deepEqual(texts(bobGot.items).slice(1), Array.from({ length: 40 }, (_, i) => `b${i}`));

  // Directs both ways, and a refused command rejects with the server's code.
  const direct = waitFor(bob, 'direct', (d) => d.from === 'ann');
  const sent = await ann.send('bob', { text: 'psst' });
  assert.equal(sent.stored, true);
  assert.equal((await direct).body.text, 'psst');
  const back = waitFor(ann, 'direct', (d) => d.from === 'bob');
  await bob.send('ann', { text: 'hi ann' });
  assert.equal((await back).body.text, 'hi ann');
  await assert.rejects(ann.publish('not-joined-here', { text: 'x' }), { code: 'not_joined' });
  assert.ok(await ann.ping() >= 0);
  assert.equal(ann.pendingCount, 0);
  assert.equal(states.length, 2, 'no reconnect');
});

test('close() over SSE ends the session at once: the others see the user leave (not two heartbeats later)', async () => {
  const room = newRoom();
  const kim = sseClient('kim');
  const lou = client('lou', { transports: ['websocket'] });
  await lou.join(room);
  const joined = waitFor(lou, 'presence', (p) => p.user === 'kim' && p.event === 'join');
  await kim.join(room);
  await joined;
  const left = waitFor(lou, 'presence', (p) => p.user === 'kim' && p.event === 'leave', 5_000);
  kim.close();
  assert.equal((await left).online, 1);
});

test('a stream that breaks is reattached by Last-Event-ID: no reconnect, what came meanwhile arrives once', async () => {
  const proxy = await new HttpProxy(server.port).listen();
  const room = newRoom();
  const cid = sseClient('cid', { addr: proxy.addr });
  const dan = client('dan', { transports: ['websocket'] });
  const got = collector();
  await cid.join(room, { onMessage: got });
  await dan.join(room);
  await dan.publish(room, { text: 'm1' });
  await got.until(1);
  const states = [];
  cid.on('state', (s) => states.push(s.state));

  proxy.muted = true; // the stream stays open but brings nothing …
  await dan.publish(room, { text: 'm2' });
  await dan.publish(room, { text: 'm3' });
  proxy.cutStreams(); // … then breaks
  proxy.muted = false;
  await dan.publish(room, { text: 'm4' });
  await got.until(4);
  await dan.publish(room, { text: 'm5' });
  await got.until(5);
  assert.deepEqual(texts(got.items), ['m1', 'm2', 'm3', 'm4', 'm5']);
  assert.deepEqual(states, [], 'the session carried on: no reconnect');
  await proxy.close();
});

test('a publish whose ack was lost with its session is resent with its id on the next one: stored and delivered once', async () => {
  const proxy = await new HttpProxy(server.port).listen();
  const room = newRoom();
  const eve = sseClient('eve', { addr: proxy.addr });
  const fay = client('fay', { transports: ['websocket'] });
  const got = collector();
  await eve.join(room);
  await fay.join(room, { onMessage: got });

  proxy.muted = true; // the server acts on eve's POSTs; eve hears nothing
  const acked = eve.publish(room, { text: 'once' });
  const [delivered] = await got.until(1);
  // The stream breaks and comes back without Last-Event-ID: a new session.
  proxy.stripLastEventId = true;
  const resumed = waitFor(eve, 'welcome');
  proxy.cutStreams();
  proxy.muted = false;
  await resumed;
  const ack = await acked;
  assert.equal(ack.seq, delivered.seq, 'the dedupe acks with the original seq');
  assert.equal(ack.duplicate, true);
  await eve.publish(room, { text: 'next' });
  await got.until(2);
  assert.deepEqual(texts(got.items), ['once', 'next']);
  await proxy.close();
});

test('server restart (kill -9) on SSE: rooms resume with since, commands queued offline are sent once, nothing is lost or twice', async () => {
  const own = await new Server(['--rate-limit', '0']).start();
  const options = { addr: own.addr };
  const gil = sseClient('gil', options);
  const hal = sseClient('hal', options);
  const room = 'sse-restart';
  const gilGot = collector();
  const halGot = collector();
  const resets = [];
  await gil.join(room, { onMessage: gilGot, onReset: (r) => resets.push(r) });
  await hal.join(room, { onMessage: halGot, onReset: (r) => resets.push(r) });
  await gil.publish(room, { text: 'g1' });
  await hal.publish(room, { text: 'h1' });
  await halGot.until(1);
  await gilGot.until(1);

  const down = [waitState(gil, 'reconnecting'), waitState(hal, 'reconnecting')];
  await own.kill();
  await Promise.all(down);
  const queued = [gil.publish(room, { text: 'g2' }), hal.publish(room, { text: 'h2' }), gil.publish(room, { text: 'g3' })];
  assert.equal(gil.pendingCount, 2);
  await own.start();
  const acks = await Promise.all(queued);
  assert.deepEqual(acks.map((a) => a.seq).sort((a, b) => a - b), [3, 4, 5]);
  assert.ok(acks.every((a) => !a.duplicate));
  const endG = await gil.publish(room, { text: 'g-end' });
  const endH = await hal.publish(room, { text: 'h-end' });
  const all = [[1, 'g1'], [2, 'h1'], ...acks.map((a, i) => [a.seq, ['g2', 'h2', 'g3'][i]]), [endG.seq, 'g-end'], [endH.seq, 'h-end']]
    .sort((a, b) => a[0] - b[0]);
  const othersOf = (who) => all.filter(([, text]) => text[0] !== who);
  await halGot.until(4);
  await gilGot.until(3);
  assert.deepEqual(halGot.items.map((m) => [m.seq, m.body.text]), othersOf('h'));
  assert.deepEqual(gilGot.items.map((m) => [m.seq, m.body.text]), othersOf('g'));
  assert.deepEqual(resets, []);
  assert.equal(gil.transport, 'sse');
  gil.close();
  hal.close();
  await own.dispose();
});

test('fallback: a proxy refuses the WebSocket (403), the client goes on over SSE at once; once it passes, back to the WebSocket without loss or duplicates', async () => {
  const proxy = await new HttpProxy(server.port, { upgrades: 'refuse' }).listen();
  const room = newRoom();
  const ida = client('ida', { addr: proxy.addr, transportRetry: 300 });
  const jon = client('jon', { transports: ['websocket'] });
  const states = [];
  ida.on('state', (s) => states.push(s));
  const idaGot = collector();
  const jonGot = collector();
  await ida.join(room, { onMessage: idaGot });
  assert.equal(ida.transport, 'sse');
  assert.ok(proxy.upgradesRefused >= 1);
  assert.deepEqual(states.map((s) => s.state), ['connecting', 'connected'], 'the fallback is no reconnect');
  assert.equal(states[1].transport, 'sse');
  await jon.join(room, { onMessage: jonGot });

  // Still refused: the retries keep it on SSE.
  const refused = proxy.upgradesRefused;
  await waitUntil(() => proxy.upgradesRefused > refused, 'the client tries the WebSocket again');
  assert.equal(ida.transport, 'sse');
  assert.equal(ida.state, 'connected');

  // The proxy passes WebSockets now: ida switches while both sides talk.
  const switched = waitFor(ida, 'state', (s) => s.state === 'connected' && s.transport === 'websocket');
  proxy.upgrades = 'pass';
  const idaAcks = [];
  const jonAcks = [];
  for (let i = 0; i < 10; i += 1) {
    idaAcks.push(ida.publish(room, { text: `i${i}` }));
    jonAcks.push(jon.publish(room, { text: `j${i}` }));
    await new Promise((resolve) => setTimeout(resolve, 40));
  }
  await switched;
  assert.equal(ida.transport, 'websocket');
  const acks = await Promise.all([...idaAcks, ...jonAcks]);
  assert.equal(new Set(acks.map((a) => a.seq)).size, 20, 'each stored once');
  await ida.publish(room, { text: 'i-end' });
  await jon.publish(room, { text: 'j-end' });
  await jonGot.until(11);
  await idaGot.until(11);
  assert.deepEqual(texts(jonGot.items), [...Array.from({ length: 10 }, (_, i) => `i${i}`), 'i-end']);
  assert.deepEqual(texts(idaGot.items), [...Array.from({ length: 10 }, (_, i) => `j${i}`), 'j-end']);
  const seqsSeen = idaGot.items.map((m) => m.seq);
  assert.deepEqual(seqsSeen, [...seqsSeen].sort((a, b) => a - b));
  const last = states.slice(-2);
  assert.deepEqual(last.map((s) => [s.state, s.transport]), [['reconnecting', undefined], ['connected', 'websocket']]);
  assert.match(last[0].reason, /switching to websocket/);
  await proxy.close();
});

test('transports: the option is checked, and a transport needs its implementation', () => {
  assert.throws(() => new Client({ url: 'ws://127.0.0.1:1/ws', WebSocket, transports: ['carrier-pigeon'] }), TypeError);
  assert.throws(() => new Client({ url: 'ws://127.0.0.1:1/ws', WebSocket, transports: [] }), TypeError);
  assert.throws(() => new Client({ url: 'ws://127.0.0.1:1/ws', WebSocket, transports: ['sse'], EventSource: null, fetch: null }), /EventSource/);
});
