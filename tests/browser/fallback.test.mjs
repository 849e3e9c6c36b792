// The chat app where WebSockets do not get through: a real nginx (Debian's
// package) runs the configuration of docs/OPERATIONS.md without its two
// upgrade lines, so the WebSocket upgrade reaches the server as a plain GET
// and is refused, and client.js falls back to the HTTP transport (SSE +
// POST). Alongside, the documented configuration as written carries a
// WebSocket. Two people on different transports chat both ways; a server
// restart mid-chat on SSE loses and duplicates nothing. Needs the store
// (the restart) and nginx (scripts/test-web installs it).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  launch, openPage, signIn, joinRoom, say, allSent, messageTexts, waitForTexts, Server, startNginx,
} from './lib.mjs';

let browser;
let server;
let blocked; // nginx that does not pass the upgrade
let full; // nginx as documented
before(async () => {
  server = await new Server(['--rate-limit', '0']).start();
  blocked = await startNginx(server, { websockets: false });
  full = await startNginx(server);
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await blocked?.stop();
  await full?.stop();
  await server?.dispose();
});

const transport = (page) => page.getAttribute('#conn', 'data-transport');
const label = (page) => page.textContent('#conn .conn-label');

test('WebSockets blocked by nginx: the chat app works over SSE and says so; a WebSocket user and an SSE user chat both ways', async () => {
  const ann = await openPage(browser, blocked); // WebSocket refused: SSE
  await signIn(ann, 'ann');
  assert.equal(await transport(ann), 'sse');
  assert.equal(await label(ann), 'Connected (HTTP fallback)');
  assert.match(await ann.getAttribute('#conn', 'title'), /Server-Sent Events/);
  await joinRoom(ann, 'mixed');

  const ben = await openPage(browser, full); // the documented config: WebSocket
  await signIn(ben, 'ben');
  assert.equal(await transport(ben), 'websocket');
  assert.equal(await label(ben), 'Connected');
  assert.equal(await ben.getAttribute('#conn', 'title'), null);
  await joinRoom(ben, 'mixed');

  await ann.waitForSelector('#messages .notice:text-is("ben joined")');
  await ann.waitForSelector('#conv-sub:text-is("2 online")');
  await say(ann, 'hello over SSE');
  await waitForTexts(ben, ['hello over SSE']);
  await say(ben, 'hello over a WebSocket 你好');
  await waitForTexts(ann, ['hello over SSE', 'hello over a WebSocket 你好']);
  await say(ann, 'and back');
  await waitForTexts(ben, ['hello over SSE', 'hello over a WebSocket 你好', 'and back']);
  await allSent(ann);
  await allSent(ben);
  assert.deepEqual(await messageTexts(ann), await messageTexts(ben));

  // A direct message each way too.
  await ann.click('#member-list button:has(.member-name:text-is("ben"))');
  await ann.waitForSelector('#conv-title:text-is("ben")');
  await say(ann, 'psst, ben');
  const entry = ben.locator('#dm-list [data-key="u:ann"]');
  await entry.locator('.badge:text-is("1")').waitFor();
  await entry.click();
  await waitForTexts(ben, ['psst, ben']);
  await say(ben, 'psst, ann');
  await waitForTexts(ann, ['psst, ben', 'psst, ann']);

  // The indicator in Chinese.
  await ann.selectOption('#lang', 'zh-CN');
  await ann.waitForSelector('#conn .conn-label:text-is("已连接（HTTP 备用通道）")');
  assert.match(await ann.getAttribute('#conn', 'title'), /Server-Sent Events/);
  assert.deepEqual([...ann.errors, ...ben.errors], []);
  await ann.context().close();
  await ben.context().close();
});

async function settled(page, count) {
  await page.waitForSelector('#conn[data-state="connected"][data-unsent="0"]', { timeout: 20_000 });
  await page.waitForFunction((n) => document.querySelectorAll('#messages .msg').length >= n, count, { timeout: 20_000 });
}

test('a tab closed on SSE ends its session: the others see the user leave at once, not two heartbeats (50 s) later', async () => {
  const cat = await openPage(browser, blocked);
  await signIn(cat, 'cat');
  assert.equal(await transport(cat), 'sse');
  await joinRoom(cat, 'tabs');
  const dov = await openPage(browser, full);
  await signIn(dov, 'dov');
  await joinRoom(dov, 'tabs');
  await dov.waitForSelector('#conv-sub:text-is("2 online")');
  // The tab goes: the browser drops the event stream, which the server
  // would keep for a reattach; the page's `pagehide` sends the DELETE.
  await cat.close();
  await dov.waitForSelector('#messages .notice:text-is("cat left")', { timeout: 10_000 });
  await dov.waitForSelector('#conv-sub:text-is("1 online")');
  assert.deepEqual(dov.errors, []);
  await cat.context().close();
  await dov.context().close();
});

test('server restart (kill -9) mid-chat with both people on SSE behind nginx: every message exactly once, in order', async () => {
  const room = 'sse-standup';
  const cat = await openPage(browser, blocked);
  await signIn(cat, 'cat');
  await joinRoom(cat, room);
  const dan = await openPage(browser, blocked);
  await signIn(dan, 'dan');
  await joinRoom(dan, room);
  assert.equal(await transport(cat), 'sse');
  assert.equal(await transport(dan), 'sse');

  await say(cat, 'c1 before');
  await waitForTexts(dan, ['c1 before']);
  await say(dan, 'd1 before');
  await waitForTexts(cat, ['c1 before', 'd1 before']);

  await server.kill();
  await cat.waitForSelector('#conn[data-state="reconnecting"]');
  await dan.waitForSelector('#conn[data-state="reconnecting"]');
  await say(cat, 'c2 during');
  await say(dan, 'd2 during');
  await say(cat, 'c3 during');
  await cat.waitForSelector('#conn[data-unsent="2"]');
  await dan.waitForSelector('#conn[data-unsent="1"]');

  await server.start();
  await settled(cat, 5);
  await settled(dan, 5);
  assert.equal(await transport(cat), 'sse');
  assert.equal(await label(cat), 'Connected (HTTP fallback)');
  await say(dan, 'd4 after');
  await say(cat, 'c4 after');
  await cat.waitForFunction(() => document.querySelectorAll('#messages .msg').length >= 7);
  await dan.waitForFunction(() => document.querySelectorAll('#messages .msg').length >= 7);
  await allSent(cat);
  await allSent(dan);

  const catSees = await messageTexts(cat);
  const danSees = await messageTexts(dan);
  const all = ['c1 before', 'd1 before', 'c2 during', 'd2 during', 'c3 during', 'd4 after', 'c4 after'];
  assert.deepEqual([...catSees].sort(), [...all].sort(), `cat: ${catSees}`);
  assert.deepEqual([...danSees].sort(), [...all].sort(), `dan: ${danSees}`);
  assert.deepEqual(catSees, danSees);
  const order = (list, prefix) => list.filter((t) => t.startsWith(prefix));
  assert.deepEqual(order(catSees, 'c'), ['c1 before', 'c2 during', 'c3 during', 'c4 after']);
  assert.deepEqual(order(catSees, 'd'), ['d1 before', 'd2 during', 'd4 after']);
  assert.equal(await cat.locator('#messages .msg.pending, #messages .msg.failed').count(), 0);
  assert.deepEqual([...cat.errors, ...dan.errors], []);
  await cat.context().close();
  await dan.context().close();
});
