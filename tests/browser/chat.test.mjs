// The chat app at / in headless Chromium: two people chat with presence and
// online counts, HTML stays text, language follows the browser, the phone
// layout, and the connection indicator with pending messages during a
// network cut.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  launch, openPage, signIn, joinRoom, say, allSent, messageTexts, waitForTexts, Server, Proxy, PHONE,
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

const text = (page, selector) => page.textContent(selector);
const noErrors = (...pages) => { for (const p of pages) assert.deepEqual(p.errors, [], 'no page errors'); };

test('two people chat: messages with sender and time, own marked, presence notices, online counts, members', async () => {
  const alice = await openPage(browser, server);
  await signIn(alice, 'alice');
  await joinRoom(alice, 'general');
  await alice.waitForSelector('#conv-sub:text-is("1 online")');

  const bob = await openPage(browser, server);
  await signIn(bob, 'bob');
  await joinRoom(bob, 'general');

  // Alice sees Bob arrive: a notice, the count in the header and the room list, the member list.
  await alice.waitForSelector('#messages .notice:text-is("bob joined")');
  await alice.waitForSelector('#conv-sub:text-is("2 online")');
  assert.equal(await text(alice, '#room-list [data-key="r:general"] .count'), '2');
  await alice.waitForSelector('#member-list .member-name:text-is("bob")');
  assert.deepEqual(await alice.$$eval('#member-list .member-name', (n) => n.map((x) => x.textContent)), ['alice', 'bob']);

  await say(alice, 'Hi Bob!');
  await waitForTexts(bob, ['Hi Bob!']);
  await say(bob, 'Hello Alice 你好');
  await waitForTexts(alice, ['Hi Bob!', 'Hello Alice 你好']);
  await waitForTexts(bob, ['Hi Bob!', 'Hello Alice 你好']);

  // Sender and local time on others' messages; own messages marked.
  const fromBob = alice.locator('#messages .msg', { hasText: 'Hello Alice' });
  assert.equal(await fromBob.locator('.from').textContent(), 'bob');
  assert.match(await fromBob.locator('time').textContent(), /^\d{1,2}:\d{2}( [AP]M)?$/);
  assert.ok(Date.parse(await fromBob.locator('time').getAttribute('datetime')) > Date.now() - 60_000);
  assert.equal(await fromBob.getAttribute('class'), 'msg');
  const own = alice.locator('#messages .msg', { hasText: 'Hi Bob!' });
  assert.match(await own.getAttribute('class'), /\bown\b/);
  assert.equal(await own.locator('.from').textContent(), 'You');

  // Bob leaves the room: Alice sees the notice and the count drop.
  await bob.click('#leave');
  await alice.waitForSelector('#messages .notice:text-is("bob left")');
  await alice.waitForSelector('#conv-sub:text-is("1 online")');
  await alice.waitForFunction(() => ![...document.querySelectorAll('#member-list .member-name')].some((n) => n.textContent === 'bob'));
  // Bob comes back, then closes his browser: "left" again.
  await joinRoom(bob, 'general');
  await alice.waitForSelector('#conv-sub:text-is("2 online")');
  await bob.context().close();
  await alice.waitForFunction(() => document.querySelectorAll('#messages .notice').length >= 4);
  await alice.waitForSelector('#conv-sub:text-is("1 online")');
  const notices = await alice.$$eval('#messages .notice', (n) => n.map((x) => x.textContent));
  assert.deepEqual(notices.filter((n) => /bob/.test(n)), ['bob joined', 'bob left', 'bob joined', 'bob left']);
  assert.deepEqual(await messageTexts(alice), ['Hi Bob!', 'Hello Alice 你好']);
  noErrors(alice);
  await alice.context().close();
});

test('a message with HTML is shown as text: <img src=x onerror=alert(1)>', async () => {
  const mallory = await openPage(browser, server);
  await signIn(mallory, '<b>mallory</b>');
  await joinRoom(mallory, 'xss');
  const victim = await openPage(browser, server);
  await signIn(victim, 'victim');
  await joinRoom(victim, 'xss');

  const payloads = ['<img src=x onerror=alert(1)>', '<script>alert(2)</script>', '"><svg onload=alert(3)>'];
  for (const p of payloads) await say(mallory, p);
  await waitForTexts(victim, payloads);
  assert.deepEqual(await messageTexts(victim), payloads);
  // Nothing was parsed as markup: no element but our own inside the list.
  const tags = await victim.$$eval('#messages *', (nodes) => [...new Set(nodes.map((n) => n.tagName.toLowerCase()))].sort());
  assert.deepEqual(tags, ['div', 'li', 'span', 'time']);
  // The nickname is text too, in messages and in the member list.
  assert.equal(await victim.locator('#messages .msg .from').first().textContent(), '<b>mallory</b>');
  await victim.waitForSelector('#member-list .member-name:text-is("<b>mallory</b>")');
  assert.deepEqual([...mallory.dialogs, ...victim.dialogs], [], 'no alert() ran');
  noErrors(mallory, victim);
  await mallory.context().close();
  await victim.context().close();
});

test('the UI follows the browser language (Chinese) and can be switched', async () => {
  const page = await openPage(browser, server, { locale: 'zh-CN' });
  assert.equal(await page.getAttribute('html', 'lang'), 'zh-CN');
  assert.equal(await text(page, '#signin-submit'), '登录');
  await page.fill('#nickname', '小明');
  await page.click('#signin-submit');
  await page.waitForSelector('#conn[data-state="connected"]');
  assert.equal(await text(page, '#conn .conn-label'), '已连接');
  await page.waitForSelector('#conv-sub:text-is("1 人在线")');
  await say(page, '大家好');
  await waitForTexts(page, ['大家好']);
  await allSent(page);
  assert.equal(await page.locator('#messages .msg .from').last().textContent(), '你');

  await page.selectOption('#lang', 'en');
  assert.equal(await page.getAttribute('html', 'lang'), 'en');
  assert.equal(await text(page, '#conn .conn-label'), 'Connected');
  await page.waitForSelector('#conv-sub:text-is("1 online")');
  assert.equal(await page.locator('#messages .msg .from').last().textContent(), 'You');
  // The choice is remembered.
  await page.reload();
  await page.waitForSelector('#conn[data-state="connected"]');
  assert.equal(await text(page, '#signout'), 'Sign out');
  noErrors(page);
  await page.context().close();
});

test('phone-sized screen: room list and conversation one at a time', async () => {
  const page = await openPage(browser, server, { viewport: PHONE, phone: true });
  await signIn(page, 'phoebe');
  // On a phone the app starts on the list.
  assert.equal(await page.getAttribute('#chat', 'data-view'), 'list');
  assert.ok(await page.isVisible('#room-list'));
  assert.ok(!(await page.isVisible('#composer')));
  await page.click('#room-list [data-key="r:lobby"]');
  assert.equal(await page.getAttribute('#chat', 'data-view'), 'conv');
  assert.ok(await page.isVisible('#composer'));
  assert.ok(!(await page.isVisible('#room-list')));
  await say(page, 'typing on my phone');
  await waitForTexts(page, ['typing on my phone']);
  // Nothing is wider than the screen.
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `page overflows by ${overflow}px`);
  await page.click('#back');
  assert.ok(await page.isVisible('#room-list'));
  noErrors(page);
  await page.context().close();
});

test('network cut: indicator shows reconnecting, a message waits as pending and is sent once on reconnect', async () => {
  const proxy = await new Proxy(server.port).listen();
  const viaProxy = { url: `http://${proxy.addr}` };
  const carol = await openPage(browser, viaProxy);
  await signIn(carol, 'carol');
  await joinRoom(carol, 'cut');
  const dave = await openPage(browser, server);
  await signIn(dave, 'dave');
  await joinRoom(dave, 'cut');
  await say(carol, 'before the cut');
  await waitForTexts(dave, ['before the cut']);

  proxy.refuse();
  proxy.cut();
  await carol.waitForSelector('#conn[data-state="reconnecting"]');
  assert.match(await text(carol, '#conn'), /Reconnecting/);
  await say(carol, 'sent while cut off');
  const pending = carol.locator('#messages .msg.pending', { hasText: 'sent while cut off' });
  await pending.waitFor();
  assert.equal(await pending.locator('.status').textContent(), 'Waiting for connection');
  assert.match(await text(carol, '#conn'), /1 unsent/);

  proxy.pass();
  await carol.waitForSelector('#conn[data-state="connected"][data-unsent="0"]');
  await pending.waitFor({ state: 'detached' });
  await waitForTexts(dave, ['before the cut', 'sent while cut off']);
  await say(carol, 'after');
  await waitForTexts(dave, ['before the cut', 'sent while cut off', 'after']);
  assert.deepEqual(await messageTexts(dave), ['before the cut', 'sent while cut off', 'after']);
  assert.deepEqual(await messageTexts(carol), ['before the cut', 'sent while cut off', 'after']);
  noErrors(carol, dave);
  await carol.context().close();
  await dave.context().close();
  await proxy.close();
});

test('the browser goes offline: the indicator says Offline; back online, it reconnects at once', async () => {
  const page = await openPage(browser, server);
  await signIn(page, 'olga');
  await page.context().setOffline(true);
  // The client probes the socket with a ping; no answer within its timeout: offline.
  await page.waitForSelector('#conn[data-state="offline"]', { timeout: 20_000 });
  assert.equal(await page.textContent('#conn .conn-label'), 'Offline');
  await say(page, 'written offline');
  await page.waitForSelector('#conn[data-unsent="1"]');
  await page.context().setOffline(false);
  // No backoff wait: the `online` event reconnects immediately.
  await page.waitForSelector('#conn[data-state="connected"][data-unsent="0"]', { timeout: 3_000 });
  await waitForTexts(page, ['written offline']);
  noErrors(page);
  await page.context().close();
});
