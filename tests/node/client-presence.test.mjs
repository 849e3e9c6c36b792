// client.js and batched presence: in a room above --presence-batch-above
// the server sends one delta per --presence-interval; the client keeps the
// room's online count, gives out the named users as single changes
// (`batched: true`) and the delta itself (`onPresenceBatch`, the
// `presenceBatch` event).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { Client } from '../../web/client.js';
import { Server, collector } from './client-helpers.mjs';

let server;
before(async () => {
  server = await new Server([
    '--rate-limit', '0', '--store', 'memory',
    // Small threshold; an interval long enough that a burst of joins from
    // connected clients lands in one batch even on a busy machine.
    '--presence-batch-above', '2', '--presence-interval', '1s',
  ]).start();
});
after(async () => { await server.dispose(); });

const clients = [];
function client(user) {
  const c = new Client({ url: `ws://${server.addr}/ws`, user, WebSocket });
  clients.push(c);
  return c;
}
after(() => { for (const c of clients) c.close(); });

test('a batched delta: online count, single changes for the names listed, the delta with `more`', async () => {
  const room = 'big';
  const watch = client('watch');
  const singles = collector();
  const batches = collector();
  const emitted = collector();
  watch.on('presenceBatch', emitted);
  await watch.join(room, { onPresence: singles, onPresenceBatch: batches });

  // Everyone connects first, so the burst below is only joins.
  const first = client('first');
  const burst = Array.from({ length: 34 }, (_, i) => client(`u${String(i).padStart(2, '0')}`));
  await Promise.all([first, ...burst].map((c) => c.connect()));

  // 2 online: a single change, at once.
  await first.join(room);
  const [p] = await singles.until(1);
  assert.deepEqual([p.event, p.user, p.online, p.batched], ['join', 'first', 2, undefined]);

  // The burst makes the room big within the interval of that change: one
  // delta at its end, 32 names and 2 more.
  await Promise.all(burst.map((c) => c.join(room)));
  const [batch] = await batches.until(1);
  assert.equal(batch.online, 36);
  assert.equal(batch.joined.length, 32);
  assert.deepEqual(batch.left, []);
  assert.equal(batch.more, 2);
  const names = new Set(burst.map((c) => c.user));
  for (const user of batch.joined) assert.ok(names.has(user), user);
  assert.deepEqual(emitted.items, [batch]);

  // The listed users also came as single changes, before the delta.
  assert.equal(singles.items.length, 1 + 32);
  for (const [i, s] of singles.items.slice(1).entries()) {
    assert.deepEqual([s.event, s.user, s.online, s.batched], ['join', batch.joined[i], 36, true]);
  }

  // Leaves are batched too (the delta started a cooldown); `more` absent
  // on the wire reads as 0.
  await burst[0].leave(room);
  const [, second] = await batches.until(2);
  assert.deepEqual([second.online, second.joined, second.left, second.more], [35, [], ['u00'], 0]);
  const last = singles.items.at(-1);
  assert.deepEqual([last.event, last.user, last.online, last.batched], ['leave', 'u00', 35, true]);

  // The exact list is one request away.
  const list = await watch.presence(room);
  assert.equal(list.online, 35);
});
