// The server is killed in the middle of a conversation and restarted on the
// same port; both pages reconnect by themselves, and after messages were
// sent during the outage each page shows every message exactly once, in
// order. Needs the persistence build: the store keeps the room's messages
// and seqs across the restart, `join` with `since` replays what a page
// missed, and id dedupe makes resends exactly-once. Also: signing in while
// the server is down, and members coming back after a restart.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  launch, openPage, signIn, joinRoom, say, allSent, messageTexts, waitForTexts, Server, Proxy,
} from './lib.mjs';

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

// Each of these stops the server; whatever happens, the next test finds it running.
const restartAfter = (t) => t.after(async () => { if (!server.child) await server.start(); });

test('signing in while the server is down: "Reconnecting in N s" and no online count, then in', async (t) => {
  restartAfter(t);
  const page = await openPage(browser, server);
  await server.kill();
  await page.fill('#nickname', 'zoe');
  await page.click('#signin-submit');
  await page.waitForSelector('#chat:not([hidden])');
  await page.waitForFunction(() => /^Reconnecting in \d+ s$/.test(document.querySelector('#conn[data-state="reconnecting"] .conn-label')?.textContent));
  await page.waitForSelector('#conv-title:text-is("# lobby")');
  // Nobody has said how many are online: no "0 online".
  assert.equal(await page.textContent('#conv-sub'), '');
  assert.equal(await page.locator('#room-list [data-key="r:lobby"] .count').count(), 0);
  await server.start();
  await page.waitForSelector('#conn[data-state="connected"]', { timeout: 30_000 });
  await page.waitForSelector('#conv-sub:text-is("1 online")');
  assert.equal(await page.getAttribute('#room-list [data-key="r:lobby"] .count', 'aria-label'), '1 online');
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('after a server restart, members who come back are not announced as joined again', async (t) => {
  restartAfter(t);
  const room = 'rejoin';
  const proxy = await new Proxy(server.port).listen();
  const amy = await openPage(browser, server);
  await signIn(amy, 'amy');
  await joinRoom(amy, room);
  const dan = await openPage(browser, { url: `http://${proxy.addr}` });
  await signIn(dan, 'dan');
  await joinRoom(dan, room);
  await amy.waitForSelector('#messages .notice:text-is("dan joined")');
  await amy.waitForSelector('#conv-sub:text-is("2 online")');

  // The server dies without sending leaves; Dan's way back is blocked
  // until Amy is back and the server has told her she is alone.
  proxy.refuse();
  await server.kill();
  await amy.waitForSelector('#conn[data-state="reconnecting"]');
  await dan.waitForSelector('#conn:not([data-state="connected"])');
  await server.start();
  await amy.waitForSelector('#conn[data-state="connected"]', { timeout: 20_000 });
  await amy.waitForSelector('#conv-sub:text-is("1 online")');
  const members = () => amy.$$eval('#member-list .member-name', (n) => n.map((x) => x.textContent));
  await amy.waitForFunction(() => [...document.querySelectorAll('#member-list .member-name')].map((n) => n.textContent).join() === 'amy');

  proxy.pass();
  await dan.waitForSelector('#conn[data-state="connected"]', { timeout: 30_000 });
  await amy.waitForSelector('#conv-sub:text-is("2 online")');
  assert.deepEqual(await members(), ['amy', 'dan']);
  const notices = await amy.$$eval('#messages .notice', (n) => n.map((x) => x.textContent));
  assert.deepEqual(notices.filter((n) => /dan/.test(n)), ['dan joined'], 'dan never left as far as Amy could see');

  // A real departure is still announced.
  await dan.click('#leave');
  await amy.waitForSelector('#messages .notice:text-is("dan left")');
  assert.deepEqual([...amy.errors, ...dan.errors], []);
  await amy.context().close();
  await dan.context().close();
  await proxy.close();
});
