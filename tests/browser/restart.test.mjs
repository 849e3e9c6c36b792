// The server is killed in the middle of a conversation and restarted on the
// same port; both pages reconnect by themselves, and after messages were
// sent during the outage each page shows every message exactly once, in
// order. Needs the persistence build: the store keeps the room's messages
// and seqs across the restart, `join` with `since` replays what a page
// missed, and id dedupe makes resends exactly-once.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launch, openPage, signIn, joinRoom, say, allSent, messageTexts, waitForTexts, Server } from './lib.mjs';

let browser;
let server;
before(async () => {
  server = await new Server(['--rate-limit', '0']).start();
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await server?.dispose();
});

async function settled(page, count) {
  await page.waitForSelector('#conn[data-state="connected"][data-unsent="0"]', { timeout: 20_000 });
  await page.waitForFunction((n) => document.querySelectorAll('#messages .msg').length >= n, count, { timeout: 20_000 });
}

for (const [how, stop] of [['kill -9', (s) => s.kill()], ['graceful shutdown', (s) => s.terminate()]]) {
  test(`server restart (${how}) mid-conversation: every message exactly once, in order, on both pages`, async () => {
    const room = `standup-${how.replace(/\W+/g, '')}`;
    const ann = await openPage(browser, server);
    await signIn(ann, 'ann');
    await joinRoom(ann, room);
    const ben = await openPage(browser, server);
    await signIn(ben, 'ben');
    await joinRoom(ben, room);

    await say(ann, 'a1 before');
    await waitForTexts(ben, ['a1 before']);
    await say(ben, 'b1 before');
    await waitForTexts(ann, ['a1 before', 'b1 before']);

    await stop(server);
    await ann.waitForSelector('#conn[data-state="reconnecting"]');
    await ben.waitForSelector('#conn[data-state="reconnecting"]');

    // Written while the server is down: pending on screen, queued in the client.
    await say(ann, 'a2 during');
    await say(ben, 'b2 during');
    await say(ann, 'a3 during');
    await ann.waitForSelector('#conn[data-unsent="2"]');
    await ben.waitForSelector('#conn[data-unsent="1"]');

    await server.start();
    await settled(ann, 5);
    await settled(ben, 5);
    await say(ben, 'b4 after');
    await say(ann, 'a4 after');
    await ann.waitForFunction(() => document.querySelectorAll('#messages .msg').length >= 7);
    await ben.waitForFunction(() => document.querySelectorAll('#messages .msg').length >= 7);
    // Own messages take their place in seq order once acked.
    await allSent(ann);
    await allSent(ben);

    const annSees = await messageTexts(ann);
    const benSees = await messageTexts(ben);
    const all = ['a1 before', 'b1 before', 'a2 during', 'b2 during', 'a3 during', 'b4 after', 'a4 after'];
    // Exactly once each …
    assert.deepEqual([...annSees].sort(), [...all].sort(), `ann: ${annSees}`);
    assert.deepEqual([...benSees].sort(), [...all].sort(), `ben: ${benSees}`);
    // … in the same (seq) order on both pages, each person's own messages in the order written.
    assert.deepEqual(annSees, benSees);
    const order = (list, prefix) => list.filter((t) => t.startsWith(prefix));
    assert.deepEqual(order(annSees, 'a'), ['a1 before', 'a2 during', 'a3 during', 'a4 after']);
    assert.deepEqual(order(annSees, 'b'), ['b1 before', 'b2 during', 'b4 after']);
    assert.deepEqual(annSees.slice(0, 2), ['a1 before', 'b1 before']);
    assert.equal(await ann.locator('#messages .msg.pending, #messages .msg.failed').count(), 0);
    assert.deepEqual([...ann.errors, ...ben.errors], []);
    await ann.context().close();
    await ben.context().close();
  });
}
