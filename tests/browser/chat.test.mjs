// The chat app at / in headless Chromium: two people chat with presence and
// online counts, HTML stays text, language follows the browser, the phone
// layout, and the connection indicator with pending messages during a
// network cut.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  launch, openPage, signIn, joinRoom, say, allSent, messageTexts, waitForTexts, Server, Proxy, PHONE, DESKTOP,
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

// ---- phone top bar, sign-in checks, room list, links, fonts ----

/** Layout facts of the phone's top bar and conversation header. */
function phoneLayout(page) {
  return page.evaluate(() => {
    const q = (s) => document.querySelector(s);
    const fits = (node) => node.scrollWidth <= node.clientWidth; // not cut off by an ellipsis
    // Whether `node` is at least as wide as it wants to be (a select or button shrunk by flex is not).
    const natural = (node) => {
      const copy = node.cloneNode(true);
      copy.removeAttribute('id');
      copy.style.cssText = 'position: absolute; visibility: hidden; width: max-content; flex: none';
      node.parentNode.append(copy);
      if ('value' in node) copy.value = node.value;
      const width = copy.getBoundingClientRect().width;
      copy.remove();
      return node.getBoundingClientRect().width + 0.5 >= width;
    };
    const bar = q('.topbar').getBoundingClientRect();
    const parts = ['.topbar .brand', '#conn', '#account-toggle'].map((s) => q(s).getBoundingClientRect());
    const centers = parts.map((r) => Math.round(r.top + r.height / 2));
    return {
      barHeight: bar.height,
      oneRow: Math.max(...centers) - Math.min(...centers) <= 2,
      inside: parts.every((r) => r.left >= bar.left && r.right <= bar.right),
      connFits: fits(q('#conn .conn-label')),
      me: q('#me').checkVisibility() ? q('#me').textContent : null,
      meFits: fits(q('#me')),
      titleFits: fits(q('#conv-title')),
      buttons: ['#members-toggle', '#leave'].map((s) => Math.round(q(s).getBoundingClientRect().width)),
      menuNatural: ['#lang', '#signout'].map((s) => q(s).checkVisibility() && natural(q(s))),
      signoutHeight: q('#signout').getBoundingClientRect().height,
      overflow: document.documentElement.scrollWidth - window.innerWidth,
    };
  });
}

for (const [locale, reconnectingIn] of [['en-US', /^Reconnecting in \d+ s · 1 unsent$/], ['zh-CN', /^\d+ 秒后重新连接 · 1 条未发送$/]]) {
  test(`phone width (${locale}): the top bar holds while reconnecting, shows the user, the room name takes the space`, async () => {
    const proxy = await new Proxy(server.port).listen();
    const page = await openPage(browser, { url: `http://${proxy.addr}` }, { locale, viewport: { width: 390, height: 844 }, phone: true });
    await signIn(page, 'alexandra');
    await joinRoom(page, 'release-planning');
    proxy.refuse();
    proxy.cut();
    await page.waitForSelector('#conn[data-state="reconnecting"]');
    await say(page, 'on the train');
    await page.waitForFunction((re) => new RegExp(re).test(document.querySelector('#conn .conn-label').textContent), reconnectingIn.source);

    const layout = await phoneLayout(page);
    assert.equal(layout.me, 'alexandra', 'the signed-in user is shown');
    assert.ok(layout.meFits && layout.connFits, `name and indicator whole: ${JSON.stringify(layout)}`);
    assert.ok(layout.oneRow && layout.inside && layout.barHeight <= 52, `one row: ${JSON.stringify(layout)}`);
    assert.ok(layout.titleFits, 'the room name is not cut');
    assert.ok(layout.buttons.every((w) => w <= 44), `the room's buttons are compact: ${layout.buttons}`);
    assert.ok(layout.overflow <= 0, `page overflows by ${layout.overflow}px`);
    // Language and sign-out are in the menu behind the name, at full width.
    assert.deepEqual(layout.menuNatural, [false, false], 'the menu starts closed');
    await page.click('#account-toggle');
    assert.equal(await page.getAttribute('#account-toggle', 'aria-expanded'), 'true');
    const open = await phoneLayout(page);
    assert.deepEqual(open.menuNatural, [true, true], 'language and sign-out not shrunk');
    assert.ok(open.signoutHeight <= 40, `"sign out" on one line (${open.signoutHeight}px)`);
    await page.keyboard.press('Escape');
    assert.equal(await page.isVisible('#signout'), false);

    proxy.pass();
    await page.waitForSelector('#conn[data-state="connected"][data-unsent="0"]', { timeout: 20_000 });
    noErrors(page);
    await page.context().close();
    await proxy.close();
  });
}

test('the members panel closes when the window narrows to phone width, and comes back when wide', async () => {
  const page = await openPage(browser, server);
  await signIn(page, 'rosa');
  await page.waitForSelector('#members:not([hidden])');
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForSelector('#members', { state: 'hidden' });
  assert.ok(await page.isVisible('#scroller'));
  assert.equal(await page.getAttribute('#members-toggle', 'aria-expanded'), 'false');
  await page.setViewportSize(DESKTOP);
  await page.waitForSelector('#members:not([hidden])');
  noErrors(page);
  await page.context().close();
});

test('sign-in: an empty nickname is explained; the length is checked in UTF-8 bytes, in the page language', async () => {
  const page = await openPage(browser, server, { locale: 'zh-CN' });
  const sockets = [];
  page.on('websocket', (ws) => sockets.push(ws.url()));
  await page.click('#signin-submit');
  await page.waitForSelector('#signin-error:text-is("请输入昵称。")');
  // 22 Chinese characters: 66 bytes, over the server's 64.
  await page.fill('#nickname', '名'.repeat(22));
  await page.click('#signin-submit');
  await page.waitForSelector('#signin-error:text-is("昵称太长：66 字节，最多 64 字节（一个汉字占 3 字节）。")');
  assert.equal(await page.getAttribute('#nickname', 'aria-invalid'), 'true');
  // The message follows the language.
  await page.selectOption('#lang-signin', 'en');
  await page.waitForSelector('#signin-error:text-is("The nickname is too long: 66 bytes, at most 64 (a Chinese character takes 3 bytes).")');
  assert.deepEqual(sockets, [], 'nothing was sent to the server');
  // 21 of them (63 bytes) are fine.
  await signIn(page, '名'.repeat(21));
  assert.equal(await page.textContent('#me'), '名'.repeat(21));
  noErrors(page);
  await page.context().close();
});

test("the server's refusal of a name is shown fully in the page's language", async () => {
  // A name saved by an earlier version is sent as it is; the server refuses it.
  const page = await openPage(browser, server, { locale: 'zh-CN' });
  await page.evaluate((name) => localStorage.setItem('sb.user', name), '名'.repeat(22));
  await page.reload();
  const error = await page.waitForSelector('#signin-error:not([hidden])');
  assert.equal(await error.textContent(), '昵称太长：最多 64 字节（一个汉字占 3 字节）。');
  await page.context().close();
});

test('the room list: the online count (person icon) is not an unread badge (filled pill)', async () => {
  // A room of their own: the lobby's count would include whoever an
  // earlier test left there until the server notices them gone (once,
  // under load, the lobby's count never became 2).
  const alice = await openPage(browser, server);
  await signIn(alice, 'nadia');
  await joinRoom(alice, 'counted');
  await joinRoom(alice, 'elsewhere');
  const bob = await openPage(browser, server);
  await signIn(bob, 'omar');
  await joinRoom(bob, 'counted');
  await say(bob, 'anyone here?');
  const room = alice.locator('#room-list [data-key="r:counted"]');
  await room.locator('.badge:text-is("1")').waitFor();
  await room.locator('.count[aria-label="2 online"]').waitFor({ timeout: 10_000 }).catch(async () => {
    assert.fail(`the count says "${await room.locator('.count').getAttribute('aria-label')}", not "2 online"`);
  });
  const look = await room.evaluate((button) => {
    const style = (s) => getComputedStyle(button.querySelector(s));
    return {
      countIcon: !!button.querySelector('.count svg.icon'),
      countText: button.querySelector('.count').textContent,
      countBackground: style('.count').backgroundColor,
      badgeBackground: style('.badge').backgroundColor,
      badgeColor: style('.badge').color,
    };
  });
  assert.ok(look.countIcon, 'the count has a person icon');
  assert.equal(look.countText, '2');
  assert.equal(look.countBackground, 'rgba(0, 0, 0, 0)', 'the count has no background');
  assert.notEqual(look.badgeBackground, 'rgba(0, 0, 0, 0)', 'the badge is filled');
  assert.notEqual(look.badgeBackground, look.badgeColor);
  noErrors(alice, bob);
  await alice.context().close();
  await bob.context().close();
});

test('links in messages are clickable, safely; the rest stays text', async () => {
  const sender = await openPage(browser, server);
  await signIn(sender, 'linda');
  await joinRoom(sender, 'links');
  const reader = await openPage(browser, server);
  await signIn(reader, 'larry');
  await joinRoom(reader, 'links');
  const message = 'Docs: https://example.com/guide?x=1&y=2. Also (see https://example.org/a_(b)) '
    + '看这里https://例子.测试/路径，好吗 javascript:alert(1) <a href="https://evil.example">x</a> ftp://old.example';
  await say(sender, message);
  await waitForTexts(reader, [message]);
  const text = reader.locator('#messages .msg .text').last();
  assert.equal(await text.textContent(), message, 'the text is unchanged');
  const links = await text.evaluate((node) => [...node.querySelectorAll('a')].map((a) => ({
    text: a.textContent, href: a.getAttribute('href'), target: a.target, rel: a.rel,
  })));
  const safe = { target: '_blank', rel: 'noopener noreferrer' };
  assert.deepEqual(links, [
    { text: 'https://example.com/guide?x=1&y=2', href: 'https://example.com/guide?x=1&y=2', ...safe },
    { text: 'https://example.org/a_(b)', href: 'https://example.org/a_(b)', ...safe },
    { text: 'https://例子.测试/路径', href: 'https://xn--fsqu00a.xn--0zwm56d/%E8%B7%AF%E5%BE%84', ...safe },
    { text: 'https://evil.example', href: 'https://evil.example/', ...safe },
  ]);
  // Only elements the app makes: the HTML in the message stayed text.
  const tags = await text.evaluate((node) => [...node.querySelectorAll('*')].map((n) => n.tagName.toLowerCase()));
  assert.deepEqual(tags, ['a', 'a', 'a', 'a']);
  // A click opens a new tab that cannot reach back to the app.
  await reader.context().route('https://example.com/**', (route) => route.fulfill({ contentType: 'text/html', body: '<p>guide</p>' }));
  const [tab] = await Promise.all([reader.context().waitForEvent('page'), text.locator('a').first().click()]);
  assert.equal(await tab.evaluate(() => window.opener), null);
  await tab.close();
  noErrors(sender, reader);
  await sender.context().close();
  await reader.context().close();
});

test('emoji: the font stack ends with the common colour emoji fonts', async () => {
  const page = await openPage(browser, server);
  await signIn(page, 'emma');
  await say(page, 'ship it 🚀🎉');
  await waitForTexts(page, ['ship it 🚀🎉']);
  const family = await page.$eval('#messages .msg .text', (n) => getComputedStyle(n).fontFamily);
  for (const font of ['Apple Color Emoji', 'Segoe UI Emoji', 'Noto Color Emoji']) {
    assert.ok(family.includes(`"${font}"`), `${font} in ${family}`);
  }
  noErrors(page);
  await page.context().close();
});
