// client.js against the PERSISTENCE server (SPEC §3–5): resume with replay
// after a network cut and after a restart, exactly-once resend of in-flight
// publish/send through the server's id dedupe, the offline inbox with
// `received`, read receipts, history.
// These fail on a server without the store (no replay, no dedupe, `history`,
// `received` and `read` unknown); client.test.mjs covers the rest.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { Client } from '../../web/client.js';
import { Server, Proxy, waitFor, waitState, collector } from './client-helpers.mjs';

let server;
before(async () => { server = await new Server(['--rate-limit', '0']).start(); });
after(async () => { await server.dispose(); });

const clients = [];
function client(user, options = {}) {
  const c = new Client({
    url: `ws://${options.addr || server.addr}/ws`, user, WebSocket, reconnect: { min: 50, max: 200 }, ...options,
  });
  clients.push(c);
  return c;
}
after(() => { for (const c of clients) c.close(); });

let rooms = 0;
const newRoom = () => `resume-${++rooms}`;
const texts = (items) => items.map((m) => m.body.text);

test('network cut: what was published meanwhile is replayed once, in order, without a reset', async () => {
  const proxy = await new Proxy(server.port).listen();
  const room = newRoom();
  const amy = client('amy');
  const ben = client('ben', { addr: proxy.addr });
  const got = collector();
  const resets = [];
  await amy.join(room);
  await ben.join(room, { onMessage: got, onReset: (r) => resets.push(r) });
  await amy.publish(room, { text: 'm1' });
  await got.until(1);

  proxy.refuse();
  proxy.cut();
  await waitState(ben, 'reconnecting');
  for (const text of ['m2', 'm3', 'm4']) await amy.publish(room, { text });
  const rejoined = waitFor(ben, 'joined', (j) => j.room === room);
  proxy.pass();
  await rejoined;
  await amy.publish(room, { text: 'm5' });
  await got.until(5);
  assert.deepEqual(texts(got.items), ['m1', 'm2', 'm3', 'm4', 'm5']);
  assert.deepEqual(got.items.map((m) => m.seq), [1, 2, 3, 4, 5]);
  assert.deepEqual(resets, []);
  await proxy.close();
});

test('server restart (kill -9): acked messages survive; messages queued during the outage arrive once, in order', async () => {
  const own = await new Server(['--rate-limit', '0']).start();
  const url = `ws://${own.addr}/ws`;
  const options = { url, WebSocket, reconnect: { min: 50, max: 300 } };
  const cat = new Client({ ...options, user: 'cat' });
  const dan = new Client({ ...options, user: 'dan' });
  clients.push(cat, dan);
  const room = 'restart';
  const danGot = collector();
  const catGot = collector();
  const resets = [];
  await cat.join(room, { onMessage: catGot, onReset: (r) => resets.push(r) });
  await dan.join(room, { onMessage: danGot, onReset: (r) => resets.push(r) });
  await cat.publish(room, { text: 'c1' });
  await dan.publish(room, { text: 'd1' });
  await danGot.until(1);
  await catGot.until(1);

  const down = [waitState(cat, 'reconnecting'), waitState(dan, 'reconnecting')];
  await own.kill();
  await Promise.all(down);
  const queued = [
    cat.publish(room, { text: 'c2' }),
    dan.publish(room, { text: 'd2' }),
    cat.publish(room, { text: 'c3' }),
  ];
  await own.start();
  const acks = await Promise.all(queued);
  assert.deepEqual(acks.map((a) => a.seq).sort((a, b) => a - b), [3, 4, 5]);
  const endC = await cat.publish(room, { text: 'c-end' });
  const endD = await dan.publish(room, { text: 'd-end' });
  const all = [[1, 'c1'], [2, 'd1'], ...acks.map((a, i) => [a.seq, ['c2', 'd2', 'c3'][i]]), [endC.seq, 'c-end'], [endD.seq, 'd-end']]
    .sort((a, b) => a[0] - b[0]);
  // Each side sees every message of the other once, in seq order, and none of its own.
  const othersOf = (who) => all.filter(([, text]) => text[0] !== who);
  await danGot.until(4);
  await catGot.until(3);
  assert.deepEqual(danGot.items.map((m) => [m.seq, m.body.text]), othersOf('d'));
  assert.deepEqual(catGot.items.map((m) => [m.seq, m.body.text]), othersOf('c'));
  assert.deepEqual(resets, []);
  cat.close();
  dan.close();
  await own.dispose();
});

test('exactly-once: a publish whose ack was lost is resent with its id and not delivered again', async () => {
  const proxy = await new Proxy(server.port).listen();
  const room = newRoom();
  const eve = client('eve', { addr: proxy.addr });
  const fred = client('fred');
  const got = collector();
  const eveGot = collector();
  await eve.join(room, { onMessage: eveGot });
  await fred.join(room, { onMessage: got });

  proxy.muteDown(); // the server acts on eve's commands; eve hears nothing
  const acked = eve.publish(room, { text: 'once' });
  const [delivered] = await got.until(1);
  proxy.cut(); // eve reconnects and resends with the same id
  const ack = await acked;
  assert.equal(ack.seq, delivered.seq, 'the dedupe acks with the original seq');
  // The rejoin's replay (before the resend's ack) holds eve's own message:
  // it is hers, acked, not one she received.
  assert.deepEqual(texts(eveGot.items), []);
  await eve.publish(room, { text: 'next' });
  await got.until(2);
  assert.deepEqual(texts(got.items), ['once', 'next']);
  await proxy.close();
});

test('exactly-once: a send whose ack was lost is resent with its id and not delivered again', async () => {
  const proxy = await new Proxy(server.port).listen();
  const gil = client('gil', { addr: proxy.addr });
  const hal = client('hal');
  await Promise.all([gil.connect(), hal.connect()]);
  const got = collector();
  hal.on('direct', got);

  proxy.muteDown();
  const acked = gil.send('hal', { text: 'once' });
  const [delivered] = await got.until(1);
  proxy.cut();
  const ack = await acked;
  assert.equal(ack.seq, delivered.seq);
  await gil.send('hal', { text: 'next' });
  await got.until(2);
  assert.deepEqual(texts(got.items), ['once', 'next']);
  await proxy.close();
});

test('inbox: a direct to an offline user is stored, delivered on connect, confirmed with `received`, not redelivered', async () => {
  const ivy = client('ivy');
  const ack = await ivy.send('jon', { text: 'while you were out' });
  assert.equal(ack.stored, true);
  assert.equal(ack.delivered, 0);

  const jon1 = client('jon');
  const first = waitFor(jon1, 'direct');
  await jon1.connect();
  const d = await first;
  assert.deepEqual([d.from, d.to, d.seq, d.body.text], ['ivy', 'jon', ack.seq, 'while you were out']);
  // `received` has no reply. It goes out before the next command, and the
  // server commits writes in order: once this send is acked, so is the cursor.
  await jon1.send('ivy', { text: 'thanks' });
  jon1.close();

  const jon2 = client('jon');
  const got = collector();
  jon2.on('direct', got);
  await jon2.connect();
  await ivy.send('jon', { text: 'marker' });
  await got.until(1);
  assert.deepEqual(texts(got.items), ['marker']);
});

test('read receipts: the sender learns how far the recipient read', async () => {
  const kai = client('kai');
  const lia = client('lia');
  await Promise.all([kai.connect(), lia.connect()]);
  const incoming = collector();
  lia.on('direct', incoming);
  await kai.send('lia', { text: 'one' });
  const ack2 = await kai.send('lia', { text: 'two' });
  await incoming.until(2);
  const receipt = waitFor(kai, 'read');
  lia.read('kai', incoming.items[1].seq);
  const r = await receipt;
  assert.deepEqual([r.by, r.upto], ['lia', ack2.seq]);
});

test('history: a room\'s past messages, newest last, paged with before/limit; a conversation with a user', async () => {
  const room = newRoom();
  const max = client('max');
  const ned = client('ned');
  await max.join(room);
  for (let i = 1; i <= 7; i += 1) await max.publish(room, { text: `h${i}` });
  const page1 = await ned.history({ room, limit: 3 });
  assert.deepEqual(texts(page1.messages), ['h5', 'h6', 'h7']);
  assert.deepEqual(page1.messages.map((m) => m.seq), [5, 6, 7]);
  const page2 = await ned.history({ room, before: 5, limit: 3 });
  assert.deepEqual(texts(page2.messages), ['h2', 'h3', 'h4']);
  const page3 = await ned.history({ room, before: 2, limit: 3 });
  assert.deepEqual(texts(page3.messages), ['h1']);

  await max.send('ned', { text: 'dm1' });
  await ned.send('max', { text: 'dm2' });
  const convo = await ned.history({ with: 'max' });
  assert.deepEqual(texts(convo.messages), ['dm1', 'dm2']);
  assert.deepEqual(convo.messages.map((m) => [m.from, m.to]), [['max', 'ned'], ['ned', 'max']]);
});

test('disconnected by the server API (close 4003): the client stays offline instead of reconnecting', async () => {
  const own = await new Server(['--rate-limit', '0', '--api-key', 'test-key']).start();
  const pat = new Client({ url: `ws://${own.addr}/ws`, user: 'pat', WebSocket, reconnect: { min: 10, max: 20 } });
  clients.push(pat);
  await pat.connect();
  const states = [];
  pat.on('state', (s) => states.push(s));
  const offline = waitState(pat, 'offline');
  const res = await fetch(`${own.url}/api/users/pat/connections`, { method: 'DELETE', headers: { authorization: 'Bearer test-key' } });
  assert.equal(res.status, 200);
  const s = await offline;
  assert.equal(s.error.code, 'kicked');
  assert.deepEqual(states.map((x) => x.state), ['offline']);
  await assert.rejects(pat.connect(), { code: 'kicked' });
  await assert.rejects(pat.publish('lobby', 'x'), { code: 'kicked' });
  await own.dispose();
});
