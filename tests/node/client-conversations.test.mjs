// client.js against the store: stored read positions and receipts across
// two devices of a user and a peer (live, and for an offline sender), edit
// and recall (live, and for a peer that was offline: inbox replay for a
// direct, `since` replay for a room), ephemeral signals (typing), and the
// conversation list with unread counts, on two devices and across a restart.
// Inbox bookkeeping is checked on the wire: a recording WebSocket shows the
// `received` commands the client sends.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket, { WebSocketServer } from 'ws';
import { EventSource } from 'eventsource';
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

/** A WebSocket class that records every command the client writes (parsed) in `log`. */
function recording(log) {
  return class extends WebSocket {
    send(data, ...rest) {
      log.push(JSON.parse(data));
      return super.send(data, ...rest);
    }
  };
}
const receivedUpto = (log) => Math.max(0, ...log.filter((c) => c.type === 'received').map((c) => c.upto));

let rooms = 0;
const newRoom = () => `conv-${++rooms}`;
const texts = (items) => items.map((m) => (m.body ? m.body.text : m.body));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The client's inbox and room bookkeeping, against a scripted server: which
// events carry this user's inbox seqs (confirmed with `received`, deduped on
// replay) and which carry a peer's (copies), and room changes in `since`.
test('bookkeeping contract: inbox entries are confirmed and deduped, copies are not, room changes move `since`', async () => {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await new Promise((r) => wss.once('listening', r));
  const seen = []; // [connection number, command]
  let connections = 0;
  const inbox = [
    { type: 'direct', from: 'peer', to: 'me', seq: 1, gid: 100, ts: 10, body: 'hi' },
    { type: 'read', by: 'peer', from: 'me', upto: 7, seq: 2 }, // a receipt: my inbox
    { type: 'recall', from: 'peer', to: 'me', seq: 3, gid: 102, target: 100, ts: 12 },
  ];
  const copies = [
    { type: 'read', by: 'me', from: 'peer', upto: 1, seq: 40 }, // my read on another device: the peer's seq
    { type: 'edit', from: 'me', to: 'peer', seq: 50, gid: 103, target: 99, ts: 13, body: 'fixed' },
    { type: 'read', by: 'me', room: 'r', upto: 3 },
  ];
  wss.on('connection', (ws) => {
    const n = ++connections;
    const reply = (e) => ws.send(JSON.stringify(e));
    ws.on('message', (data) => {
      const cmd = JSON.parse(data.toString());
      seen.push([n, cmd]);
      if (cmd.type === 'hello') {
        reply({ type: 'welcome', id: cmd.id, user: 'me', session: `s${n}`, heartbeat: 25 });
        for (const e of inbox) reply(e);
        if (n === 1) for (const e of copies) reply(e);
        if (n === 2) reply({ type: 'direct', from: 'peer', to: 'me', seq: 4, gid: 104, ts: 14, body: 'new' });
      }
      if (cmd.type === 'join') {
        if (n === 1) {
          reply({ type: 'joined', id: cmd.id, room: 'r', online: 1, seq: 2 });
          reply({ type: 'message', room: 'r', seq: 3, from: 'peer', ts: 1, body: 'm', edited: 2 });
          reply({ type: 'edit', room: 'r', seq: 4, target: 3, from: 'peer', ts: 2, body: 'm!' });
          reply({ type: 'recall', room: 'r', seq: 5, target: 3, from: 'peer', ts: 3 });
        } else {
          reply({ type: 'recall', room: 'r', seq: 5, target: 3, from: 'peer', ts: 3 }); // replayed twice
          reply({ type: 'joined', id: cmd.id, room: 'r', online: 1, seq: 5 });
        }
      }
      if (cmd.type === 'ping' && cmd.id) reply({ type: 'pong', id: cmd.id });
    });
  });
  const me = new Client({ url: `ws://127.0.0.1:${wss.address().port}/ws`, user: 'me', device: 'd', WebSocket, reconnect: { min: 10, max: 50 } });
  clients.push(me);
  const got = [];
  for (const type of ['direct', 'read', 'myread', 'edit', 'recall']) me.on(type, (e) => got.push([type, e.seq ?? e.upto]));
  const roomGot = collector();
  await me.join('r', { onMessage: roomGot, onEdit: roomGot, onRecall: roomGot });
  await roomGot.until(3);
  await me.ping();
  const received = (n) => seen.filter(([c, cmd]) => c === n && cmd.type === 'received').map(([, cmd]) => cmd.upto);
  assert.deepEqual(received(1), [3], 'the highest inbox seq addressed to me, never a copy\'s');
  assert.equal(me.lastSeq('r'), 5);

  const again = waitFor(me, 'direct', (d) => d.seq === 4);
  for (const c of wss.clients) c.terminate();
  await again;
  await me.ping();
  assert.deepEqual(received(2), [3, 4], 'confirmed again on the new connection, then the replayed and the new entries');
  const join2 = seen.find(([c, cmd]) => c === 2 && cmd.type === 'join')[1];
  assert.equal(join2.since, 5, 'the room\'s changes count in `since`');
  assert.deepEqual(got, [
    ['direct', 1], ['read', 2], ['recall', 3], ['myread', 40], ['edit', 50], ['myread', 3], ['edit', 4], ['recall', 5],
    ['direct', 4],
  ], 'each inbox entry once; a replayed one is not delivered again');
  me.close();
  await new Promise((r) => wss.close(r));
});

test('read: a read on one device reaches the other device (`myread`) and the peer (`read`), for a direct and a room', async () => {
  const amy = client('r-amy', { device: 'a1' });
  const phone = client('r-bob', { device: 'phone' });
  const laptop = client('r-bob', { device: 'laptop' });
  await Promise.all([amy.connect(), phone.connect(), laptop.connect()]);
  const phoneGot = collector();
  const laptopGot = collector();
  phone.on('direct', phoneGot);
  laptop.on('direct', laptopGot);
  const bobReceipts = [];
  phone.on('read', (r) => bobReceipts.push(r));
  laptop.on('read', (r) => bobReceipts.push(r));
  const phoneMarks = [];
  phone.on('myread', (r) => phoneMarks.push(r));

  await amy.send('r-bob', { text: 'one' });
  const ack2 = await amy.send('r-bob', { text: 'two' });
  await phoneGot.until(2);
  await laptopGot.until(2);
  const receipt = waitFor(amy, 'read');
  const mark = waitFor(laptop, 'myread');
  phone.read('r-amy', phoneGot.items[1].seq);

  const r = await receipt;
  assert.deepEqual([r.by, r.from, r.upto], ['r-bob', 'r-amy', ack2.seq]);
  assert.equal(typeof r.seq, 'number', 'the receipt is an entry of the sender\'s inbox');
  const m = await mark;
  assert.deepEqual([m.by, m.from, m.upto], ['r-bob', 'r-amy', ack2.seq]);

  // Both of Bob's devices see the stored position; Amy sees it as peer_read.
  const [fromLaptop, fromAmy] = await Promise.all([laptop.history({ with: 'r-amy' }), amy.history({ with: 'r-bob' })]);
  assert.equal(fromLaptop.read, ack2.seq);
  assert.equal(fromAmy.peer_read, ack2.seq);

  // A room: Bob's other device is told, the room's other members are not.
  const room = newRoom();
  await amy.join(room);
  await phone.join(room);
  await laptop.join(room);
  await amy.publish(room, { text: 'r1' });
  const p2 = await amy.publish(room, { text: 'r2' });
  const amyRoomReads = [];
  amy.on('read', (x) => { if (x.room) amyRoomReads.push(x); });
  amy.on('myread', (x) => { if (x.room) amyRoomReads.push(x); });
  const roomMark = waitFor(laptop, 'myread', (x) => x.room === room);
  phone.readRoom(room, p2.seq);
  const rm = await roomMark;
  assert.deepEqual([rm.by, rm.room, rm.upto], ['r-bob', room, p2.seq]);
  assert.equal((await laptop.history({ room })).read, p2.seq);
  await amy.ping();

  // Reads of Bob's own are not receipts; the device that read gets no echo;
  // nobody else hears of a room read.
  assert.deepEqual(bobReceipts, []);
  assert.deepEqual(phoneMarks, []);
  assert.deepEqual(amyRoomReads, []);
});

test('read receipt for an offline sender: delivered on reconnect, confirmed with `received`, not delivered again', async () => {
  const log = [];
  const cal1 = client('o-cal', { device: 'c1' });
  const dee = client('o-dee', { device: 'd1' });
  await Promise.all([cal1.connect(), dee.connect()]);
  const deeGot = collector();
  dee.on('direct', deeGot);
  const ack = await cal1.send('o-dee', { text: 'are you there?' });
  await deeGot.until(1);
  cal1.close();

  dee.read('o-cal', deeGot.items[0].seq);
  await dee.ping(); // ran after the read

  const cal2 = client('o-cal', { device: 'c1', WebSocket: recording(log) });
  const reads = collector();
  cal2.on('read', reads);
  await cal2.connect();
  const [r] = await reads.until(1);
  assert.deepEqual([r.by, r.from, r.upto], ['o-dee', 'o-cal', ack.seq]);
  assert.equal(typeof r.seq, 'number');
  await cal2.ping(); // `received` goes out before it
  assert.equal(receivedUpto(log), r.seq, 'the receipt is confirmed like a direct');
  cal2.close();

  const cal3 = client('o-cal', { device: 'c1' });
  const reads3 = collector();
  const directs3 = collector();
  cal3.on('read', reads3);
  cal3.on('direct', directs3);
  await cal3.connect();
  await dee.send('o-cal', { text: 'marker' });
  await directs3.until(1);
  assert.deepEqual(texts(directs3.items), ['marker']);
  assert.deepEqual(reads3.items, [], 'a confirmed receipt is not redelivered');
});

test('a read mark whose connection died before it reached the server is sent again on the next connection', async () => {
  const proxy = await new Proxy(server.port).listen();
  const eva = client('l-eva');
  const fin = client('l-fin', { addr: proxy.addr });
  await Promise.all([eva.connect(), fin.connect()]);
  const got = collector();
  fin.on('direct', got);
  const ack = await eva.send('l-fin', { text: 'read me' });
  await got.until(1);

  proxy.blackhole(); // nothing gets through either way
  fin.read('l-eva', got.items[0].seq);
  const receipt = waitFor(eva, 'read');
  await sleep(100);
  proxy.cut();
  const r = await receipt;
  assert.deepEqual([r.by, r.upto], ['l-fin', ack.seq]);
  await proxy.close();
});

test('edit, live: room members and the sender\'s other device get it; a direct edit is an inbox entry of the recipient only', async () => {
  const room = newRoom();
  const ivanLog = [];
  const joLog = [];
  const ivan1 = client('e-ivan', { device: 'i1' });
  const ivan2 = client('e-ivan', { device: 'i2', WebSocket: recording(ivanLog) });
  const jo = client('e-jo', { device: 'j1', WebSocket: recording(joLog) });
  const joEdits = collector();
  const ivan2Edits = collector();
  const joRoom = collector();
  await ivan1.join(room);
  await ivan2.join(room, { onEdit: ivan2Edits });
  await jo.join(room, { onMessage: joRoom, onEdit: joEdits });

  const ack = await ivan1.publish(room, { text: 'helo' });
  await joRoom.until(1);
  const eAck = await ivan1.edit(ack, { text: 'hello' });
  assert.equal(eAck.room, room);
  assert.ok(eAck.seq > ack.seq, 'a change takes the next seq of the room');
  const [e] = await joEdits.until(1);
  assert.deepEqual([e.type, e.room, e.seq, e.target, e.from, e.body.text], ['edit', room, eAck.seq, ack.seq, 'e-ivan', 'hello']);
  const [e2] = await ivan2Edits.until(1);
  assert.equal(e2.seq, eAck.seq);
  assert.equal(jo.lastSeq(room), eAck.seq, 'the change counts in the room\'s resume position');
  assert.equal(ivan1.lastSeq(room), eAck.seq);
  const page = await jo.history({ room });
  assert.deepEqual(page.messages.map((x) => [x.seq, x.body.text, typeof x.edited]), [[ack.seq, 'hello', 'number']],
    'history returns the message in its current state, without the change record');
  // Only the sender may change a message.
  await assert.rejects(jo.edit(ack, { text: 'hijacked' }), { code: 'forbidden' });

  // Direct: Jo's inbox numbers far ahead of Ivan's, so a copy's seq taken
  // as Ivan's own would show in his `received`.
  const joDirects = collector();
  jo.on('direct', joDirects);
  for (let i = 0; i < 4; i += 1) await ivan1.send('e-jo', { text: `filler ${i}` });
  const inIvan = await jo.send('e-ivan', { text: 'to ivan' }); // Ivan's inbox seq
  const dAck = await ivan1.send('e-jo', { text: 'tpyo' });
  await joDirects.until(5);
  const joEdit = waitFor(jo, 'edit', (x) => x.to === 'e-jo');
  const copy = waitFor(ivan2, 'edit', (x) => x.to === 'e-jo');
  const deAck = await ivan1.edit(dAck, { text: 'typo' });
  const je = await joEdit;
  assert.deepEqual([je.from, je.to, je.seq, je.target, je.body.text], ['e-ivan', 'e-jo', deAck.seq, dAck.gid, 'typo']);
  assert.equal(typeof je.gid, 'number');
  const ce = await copy;
  assert.equal(ce.seq, je.seq, 'the copy carries Jo\'s inbox seq');
  await Promise.all([jo.ping(), ivan2.ping()]);
  assert.equal(receivedUpto(joLog), je.seq, 'the recipient confirms the edit like a direct');
  assert.ok(receivedUpto(ivanLog) <= inIvan.seq, `a copy must not move the sender's inbox (received ${receivedUpto(ivanLog)} > ${inIvan.seq})`);
  const convo = await jo.history({ with: 'e-ivan' });
  const edited = convo.messages.find((x) => x.gid === dAck.gid);
  assert.equal(edited.body.text, 'typo');
  assert.equal(typeof edited.edited, 'number');
  assert.ok(!convo.messages.some((x) => x.type !== 'direct'));
});

test('recall of a direct, seen by a recipient who was offline: inbox replay, confirmed, not repeated', async () => {
  const eli = client('x-eli', { device: 'e1' });
  const fay1 = client('x-fay', { device: 'f1' });
  await Promise.all([eli.connect(), fay1.connect()]);
  const got = collector();
  fay1.on('direct', got);
  const ack = await eli.send('x-fay', { text: 'oops' });
  await got.until(1);
  await fay1.ping(); // confirmed: the next connection starts after it
  fay1.close();

  const rAck = await eli.recall(ack);
  assert.equal(rAck.to, 'x-fay');

  const log = [];
  const fay2 = client('x-fay', { device: 'f1', WebSocket: recording(log) });
  const recalls = collector();
  const directs = collector();
  fay2.on('recall', recalls);
  fay2.on('direct', directs);
  await fay2.connect();
  const [rc] = await recalls.until(1);
  assert.deepEqual([rc.from, rc.to, rc.seq, rc.target], ['x-eli', 'x-fay', rAck.seq, ack.gid]);
  assert.equal(rc.body, undefined);
  await fay2.ping();
  assert.equal(receivedUpto(log), rc.seq);
  assert.deepEqual(directs.items, [], 'the original was confirmed before');
  const convo = await fay2.history({ with: 'x-eli' });
  const original = convo.messages.find((x) => x.gid === ack.gid);
  assert.equal(original.body, null, 'a recalled message\'s body is erased');
  assert.equal(typeof original.recalled, 'number');
  fay2.close();

  // A new device gets the backlog: the original in its current state, then the recall.
  const fay3 = client('x-fay', { device: 'f3' });
  const all = collector();
  fay3.on('direct', all);
  fay3.on('recall', all);
  await fay3.connect();
  await eli.send('x-fay', { text: 'marker' });
  await all.until(3);
  assert.deepEqual(all.items.map((x) => [x.type, x.body == null ? null : x.body.text]),
    [['direct', null], ['recall', null], ['direct', 'marker']]);
  assert.equal(typeof all.items[0].recalled, 'number');
  fay3.close();

  // f1 confirmed the recall: it is not delivered to it again.
  const fay4 = client('x-fay', { device: 'f1' });
  const again = [];
  const later = collector();
  fay4.on('recall', (x) => again.push(x));
  fay4.on('direct', later);
  await fay4.connect();
  await eli.send('x-fay', { text: 'marker 2' });
  await later.until(2);
  assert.deepEqual(texts(later.items), ['marker', 'marker 2']);
  assert.deepEqual(again, []);
});

test('recall in a room, seen by a member who was offline: `since` replay, counted in the resume position', async () => {
  const proxy = await new Proxy(server.port).listen();
  const room = newRoom();
  const gus = client('y-gus');
  const hana = client('y-hana', { addr: proxy.addr });
  const got = collector();
  const recalled = collector();
  await gus.join(room);
  await hana.join(room, { onMessage: got, onRecall: recalled });
  const a1 = await gus.publish(room, { text: 'm1' });
  await gus.publish(room, { text: 'm2' });
  await got.until(2);

  proxy.refuse();
  proxy.cut();
  await waitState(hana, 'reconnecting');
  const rAck = await gus.recall(a1);
  await assert.rejects(gus.recall(a1), { code: 'bad_request' }, 'recalled already');
  await assert.rejects(gus.edit(a1, { text: 'back' }), { code: 'bad_request' }, 'a recalled message cannot be edited');
  await assert.rejects(gus.edit({ room, seq: 9999 }, { text: '?' }), { code: 'not_found' });
  await assert.rejects(gus.recall({ room }), TypeError, 'a target needs its seq');
  const a3 = await gus.publish(room, { text: 'm3' });
  const rejoined = waitFor(hana, 'joined', (j) => j.room === room);
  proxy.pass();
  await rejoined;
  await got.until(3);
  const [rc] = await recalled.until(1);
  assert.deepEqual([rc.room, rc.seq, rc.target, rc.from], [room, rAck.seq, a1.seq, 'y-gus']);
  assert.deepEqual(texts(got.items), ['m1', 'm2', 'm3']);
  assert.equal(hana.lastSeq(room), a3.seq, 'the recall\'s seq moved the resume position');

  // Another reconnect replays nothing twice.
  proxy.cut();
  await waitState(hana, 'reconnecting');
  await waitFor(hana, 'joined', (j) => j.room === room);
  await gus.publish(room, { text: 'm4' });
  await got.until(4);
  assert.deepEqual(texts(got.items), ['m1', 'm2', 'm3', 'm4']);
  assert.equal(recalled.items.length, 1);

  // A client resuming from before the message sees it recalled, then the recall.
  const ida = client('y-ida');
  const seen = collector();
  const onRecall = collector();
  await ida.join(room, { since: 0, onMessage: seen, onRecall });
  await seen.until(3);
  await onRecall.until(1);
  assert.equal(seen.items[0].seq, a1.seq);
  assert.equal(seen.items[0].body, null);
  assert.equal(typeof seen.items[0].recalled, 'number');
  await proxy.close();
});

test('signals: delivered live, with the typing helper and tracker; never stored or replayed', async () => {
  const room = newRoom();
  const kim = client('s-kim');
  const lee = client('s-lee', { device: 'l1' });
  const signals = collector();
  const roomSignals = collector();
  const typing = collector();
  lee.on('signal', signals);
  lee.on('typing', typing);
  await kim.join(room);
  await lee.join(room, { onSignal: roomSignals });

  assert.equal(kim.typing({ room }, true), true);
  assert.equal(kim.typing({ room }, true), false, 'at most one `typing: true` per 3 s');
  const [s] = await signals.until(1);
  assert.deepEqual([s.type, s.room, s.from, s.body], ['signal', room, 's-kim', { typing: true }]);
  assert.equal(roomSignals.items.length, 1);
  const [t] = await typing.until(1);
  assert.deepEqual(t, { room, users: ['s-kim'] });
  assert.deepEqual(lee.typingUsers({ room }), ['s-kim']);
  assert.equal(kim.typing({ room }, false), true);
  await typing.until(2);
  assert.deepEqual(typing.items[1], { room, users: [] });
  assert.equal(kim.typing({ room }, false), false, 'nothing to stop');

  // Direct, cleared by a message from the typist.
  assert.equal(kim.typing({ to: 's-lee' }, true), true);
  await typing.until(3);
  assert.deepEqual(typing.items[2], { with: 's-kim', users: ['s-kim'] });
  assert.equal(signals.items[2].to, 's-lee');
  await kim.send('s-lee', { text: 'hi' });
  await typing.until(4);
  assert.deepEqual(typing.items[3], { with: 's-kim', users: [] });
  assert.equal(kim.typing({ to: 's-lee' }, true), true, 'a send resets the throttle');

  // Any body; "typing" expires 5 s after the last signal.
  assert.equal(kim.signal({ room }, { cursor: 7 }), true);
  await signals.until(5);
  assert.deepEqual(signals.items[4].body, { cursor: 7 });
  await typing.until(5);
  const expired = waitFor(lee, 'typing', (x) => x.with === 's-kim' && x.users.length === 0, 7000);
  await expired;

  // Nothing was stored: a new device and a replay from 0 see the message only.
  const lee2 = client('s-lee', { device: 'l2' });
  const late = [];
  lee2.on('event', (e) => late.push(e.type));
  const replayed = collector();
  await lee2.join(room, { since: 0, onMessage: replayed });
  await kim.publish(room, { text: 'marker' });
  await replayed.until(1);
  await lee2.ping();
  assert.ok(!late.includes('signal'), `no signal replayed: ${late}`);
  assert.equal((await lee2.history({ room })).messages.length, 1);
  const idle = new Client({ url: 'ws://127.0.0.1:1/ws', WebSocket });
  assert.equal(idle.signal({ room }, 1), false, 'not connected: not sent, not queued');
  assert.equal(idle.state, 'idle');
  idle.close();
});

test('conversations: unread counts agree on two devices, follow reads, and survive a restart', async () => {
  const own = await new Server(['--rate-limit', '0']).start();
  const options = { addr: own.addr };
  const room = 'conv-room';
  const amy = client('c-amy', { ...options, device: 'a1' });
  const carl = client('c-carl', { ...options, device: 'c1' });
  const phone = client('c-bob', { ...options, device: 'phone' });
  const laptop = client('c-bob', { ...options, device: 'laptop' });
  await Promise.all([amy.connect(), carl.connect(), phone.connect(), laptop.connect()]);
  const phoneGot = collector();
  phone.on('direct', phoneGot);
  await carl.join(room);
  await phone.join(room);
  await laptop.join(room);
  // A room is listed once marked read (the app does when it shows the room).
  const r1 = await carl.publish(room, { text: 'r1' });
  const listed = waitFor(laptop, 'myread', (x) => x.room === room);
  phone.readRoom(room, r1.seq);
  await listed;

  for (const text of ['d1', 'd2', 'd3']) await amy.send('c-bob', { text });
  await carl.publish(room, { text: 'r2' });
  const lastRoom = await carl.publish(room, { text: 'r3' });
  await phoneGot.until(3);

  const summary = (reply) => reply.conversations.map((c) => (c.room != null
    ? ['room', c.room, c.unread, c.read, c.last.seq]
    : ['with', c.with, c.unread, c.read, c.last.gid]));
  const p1 = await phone.conversations();
  const l1 = await laptop.conversations({ limit: 10 });
  assert.deepEqual(summary(p1), summary(l1));
  assert.deepEqual(summary(p1), [
    ['room', room, 2, r1.seq, lastRoom.seq],
    ['with', 'c-amy', 3, 0, phoneGot.items[2].gid],
  ]);
  assert.equal(p1.conversations[0].last.body.text, 'r3');
  assert.equal(p1.next, undefined);

  // Reading on the phone moves the laptop's counts too.
  const read = waitFor(laptop, 'myread', (x) => x.from === 'c-amy');
  phone.read('c-amy', phoneGot.items[1].seq);
  await read;
  const l2 = await laptop.conversations();
  const withAmy = l2.conversations.find((c) => c.with === 'c-amy');
  assert.deepEqual([withAmy.unread, withAmy.read], [1, phoneGot.items[1].seq]);
  const amyView = (await amy.conversations()).conversations.find((c) => c.with === 'c-bob');
  assert.equal(amyView.peer_read, phoneGot.items[1].seq);
  assert.equal(amyView.unread, 0, 'one\'s own messages are not unread');

  // A recalled message is not unread; `last` shows it in its current state.
  const d3 = phoneGot.items[2];
  const recalled = waitFor(laptop, 'recall', (x) => x.target === d3.gid);
  await amy.recall({ to: 'c-bob', gid: d3.gid });
  await recalled;
  const l2r = (await laptop.conversations()).conversations.find((c) => c.with === 'c-amy');
  assert.equal(l2r.unread, 0);
  assert.equal(l2r.last.gid, d3.gid);
  assert.equal(l2r.last.body, null);
  assert.equal(typeof l2r.last.recalled, 'number');

  // Paging: one at a time.
  const first = await laptop.conversations({ limit: 1 });
  assert.equal(first.conversations.length, 1);
  assert.equal(typeof first.next, 'string');
  const second = await laptop.conversations({ limit: 1, before: first.next });
  assert.deepEqual(summary(second), summary(await laptop.conversations()).slice(1, 2));

  // A restart (graceful: the read positions are stored, not in flight).
  const before = summary(await laptop.conversations());
  const down = [phone, laptop].map((c) => waitState(c, 'reconnecting'));
  await own.terminate();
  await Promise.all(down);
  await own.start();
  await Promise.all([waitState(phone, 'connected'), waitState(laptop, 'connected')]);
  const [p3, l3] = await Promise.all([phone.conversations(), laptop.conversations()]);
  assert.deepEqual(summary(p3), before);
  assert.deepEqual(summary(l3), before);
  for (const c of [amy, carl, phone, laptop]) c.close();
  await own.dispose();
});

test('over the HTTP transport too: typing, an edit and a read between an SSE device and a WebSocket one', async () => {
  const room = newRoom();
  const sse = client('h-sam', { transports: ['sse'], EventSource, device: 's1' });
  const ws = client('h-tia', { device: 't1' });
  const typing = collector();
  const edits = collector();
  const got = collector();
  sse.on('typing', typing);
  await sse.join(room, { onMessage: got, onEdit: edits });
  await ws.join(room);
  assert.equal(sse.transport, 'sse');
  assert.equal(ws.typing({ room }, true), true);
  const [t] = await typing.until(1);
  assert.deepEqual(t, { room, users: ['h-tia'] });
  const ack = await ws.publish(room, { text: 'sse?' });
  await got.until(1);
  const eAck = await ws.edit(ack, { text: 'SSE!' });
  const [e] = await edits.until(1);
  assert.deepEqual([e.seq, e.target, e.body.text], [eAck.seq, ack.seq, 'SSE!']);
  assert.equal(sse.lastSeq(room), eAck.seq);

  const dm = collector();
  sse.on('direct', dm);
  const sent = await ws.send('h-sam', { text: 'dm' });
  await dm.until(1);
  const receipt = waitFor(ws, 'read');
  sse.read('h-tia', dm.items[0].seq);
  const r = await receipt;
  assert.deepEqual([r.by, r.upto], ['h-sam', sent.seq]);
});

// PROTOCOL.md, `conversations`: a room is listed once the user has a read
// position in it, i.e. marked a message of it read; marking an empty room
// (or a position of 0) stores nothing, so nobody can list rooms without
// messages and make the server keep a position per name.
test('conversations: a room is listed once a message of it was marked read', async () => {
  const room = newRoom();
  const una = client('z-una');
  const vic = client('z-vic');
  await una.join(room);
  una.readRoom(room, 0);
  await una.ping();
  let list = await una.conversations();
  assert.deepEqual(list.conversations.map((c) => c.room), [], 'an empty room marked read at 0 is not listed');
  await vic.join(room);
  await vic.publish(room, { text: 'first' });
  const second = await vic.publish(room, { text: 'second' });
  una.readRoom(room, second.seq - 1);
  await una.ping();
  list = await una.conversations();
  assert.deepEqual(list.conversations.map((c) => [c.room, c.unread, c.read]), [[room, 1, second.seq - 1]]);
});
