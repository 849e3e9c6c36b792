// The chat app as a messenger: unread counts kept by the server (two devices
// of one user, a reload), read ticks (also for a sender that was offline),
// recall and edit of one's own messages (live, and for a peer that was
// offline), the typing indicator; in English and Chinese.
// Needs the persistence build (read positions, conversations, edit/recall).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { Client } from '../../web/client.js';
import {
  launch, openPage, signIn, joinRoom, say, waitForTexts, messageTexts, ownMessage, Server, Proxy, PHONE,
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

const bots = [];
/** A user driven from Node (client.js), for the other side of a conversation. */
function bot(user) {
  const c = new Client({ url: `ws://${server.addr}/ws`, user, WebSocket });
  bots.push(c);
  return c;
}
after(() => { for (const b of bots) b.close(); });

const badge = (page, key) => page.locator(`[data-key="${key}"] .badge`);
const noBadge = (page, key) => page.waitForSelector(`[data-key="${key}"] .badge`, { state: 'detached' });

/** Opens the menu of my message containing `text` with the mouse. */
async function openMenu(page, text) {
  const msg = page.locator('#messages .msg.own', { hasText: text });
  await msg.hover();
  await msg.locator('.msg-menu-button').click();
  await page.locator('.msg-menu').waitFor();
}

test('two devices of one user: reading a direct or a room on one clears its badge on the other', async () => {
  const carol = bot('carol');
  await carol.join('news');
  const laptop = await openPage(browser, server);
  await signIn(laptop, 'bob');
  const phone = await openPage(browser, server, { locale: 'zh-CN', viewport: PHONE, phone: true });
  await signIn(phone, 'bob');
  // Both devices are in `news` and looking elsewhere (the phone at its list).
  await joinRoom(laptop, 'news');
  await laptop.click('#room-list [data-key="r:lobby"]');
  await phone.fill('#join-input', 'news');
  await phone.press('#join-input', 'Enter');
  await phone.waitForSelector('#conv-title:text-is("# news")');
  await phone.click('#back');

  await carol.send('bob', { text: 'are you free at 3?' });
  await badge(laptop, 'u:carol').filter({ hasText: '1' }).waitFor();
  await badge(phone, 'u:carol').filter({ hasText: '1' }).waitFor();
  assert.equal(await badge(phone, 'u:carol').getAttribute('aria-label'), '1 条未读');
  assert.equal(await phone.textContent('#dm-list [data-key="u:carol"] .preview'), 'are you free at 3?');

  // Read on the laptop: the phone's badge goes (its `myread`).
  await laptop.click('#dm-list [data-key="u:carol"]');
  await waitForTexts(laptop, ['are you free at 3?']);
  await noBadge(phone, 'u:carol');
  assert.equal(await phone.title(), 'Switchboard');

  // A room: read on the phone clears the laptop's badge.
  await carol.publish('news', { text: 'release at 5' });
  await carol.publish('news', { text: 'freeze at 4' });
  await badge(laptop, 'r:news').filter({ hasText: '2' }).waitFor();
  await badge(phone, 'r:news').filter({ hasText: '2' }).waitFor();
  assert.equal(await phone.textContent('#room-list [data-key="r:news"] .preview'), 'carol：freeze at 4');
  await phone.click('#room-list [data-key="r:news"]');
  await waitForTexts(phone, ['release at 5', 'freeze at 4']);
  await noBadge(laptop, 'r:news');
  assert.equal(await laptop.title(), 'Switchboard');

  // While shown on the phone, new messages are read at once: no badge anywhere.
  await carol.publish('news', { text: 'moved to 6' });
  await waitForTexts(phone, ['moved to 6']);
  await laptop.locator('#room-list [data-key="r:news"] .preview:text-is("carol: moved to 6")').waitFor();
  await noBadge(laptop, 'r:news');
  assert.equal(await badge(phone, 'r:news').count(), 0);
  assert.deepEqual([...laptop.errors, ...phone.errors], []);
  await laptop.context().close();
  await phone.context().close();
});

test('unread counts come from the server after a reload (a room and a direct), in Chinese', async () => {
  const dan = bot('dan');
  await dan.join('club');
  let page = await openPage(browser, server, { locale: 'zh-CN' });
  await signIn(page, '小明');
  await joinRoom(page, 'club');
  await page.click('#room-list [data-key="r:lobby"]');
  // A direct that arrives while the page is open: this device has it, unread.
  await dan.send('小明', { text: 'did you see the club news?' });
  await badge(page, 'u:dan').filter({ hasText: '1' }).waitFor();
  // The room was read once (a room is listed once read: docs/PROTOCOL.md, `conversations`).
  await dan.publish('club', { text: 'welcome' });
  await page.click('#room-list [data-key="r:club"]');
  await waitForTexts(page, ['welcome']);
  await page.click('#room-list [data-key="r:lobby"]');

  // Closed; meanwhile three messages in the room.
  const context = page.context();
  await page.close();
  for (const text of ['one', 'two', 'three']) await dan.publish('club', { text });
  page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (err) => page.errors.push(err.message));
  await page.goto(server.url);
  await page.waitForSelector('#conn[data-state="connected"]');
  await badge(page, 'r:club').filter({ hasText: '3' }).waitFor();
  await badge(page, 'u:dan').filter({ hasText: '1' }).waitFor();
  assert.equal(await badge(page, 'r:club').getAttribute('aria-label'), '3 条未读');
  assert.equal(await page.title(), '(4) Switchboard');

  // Reading them clears the badges, and they stay cleared after another reload.
  await page.click('#room-list [data-key="r:club"]');
  await waitForTexts(page, ['one', 'two', 'three']);
  await page.click('#dm-list [data-key="u:dan"]');
  await waitForTexts(page, ['did you see the club news?']);
  await page.click('#room-list [data-key="r:lobby"]');
  await page.reload();
  await page.waitForSelector('#conn[data-state="connected"]');
  await page.locator('#room-list [data-key="r:club"] .preview:text-is("dan：three")').waitFor();
  // The list came from the server (the preview says so): no badge.
  assert.equal(await badge(page, 'r:club').count(), 0);
  assert.equal(await badge(page, 'u:dan').count(), 0);
  assert.deepEqual(page.errors, []);
  await context.close();
});

test('ticks: one when stored, two when read; a sender that was offline sees two when it is back', async () => {
  let erin = await openPage(browser, server, { locale: 'zh-CN' });
  await signIn(erin, 'erin');
  await erin.fill('#dm-input', 'frank');
  await erin.press('#dm-input', 'Enter');
  await say(erin, 'frank, the keys are under the mat');
  const mine = (page) => page.locator('#messages .msg.own', { hasText: 'the keys are under the mat' }).locator('.status');
  await mine(erin).locator('.icon-tick').waitFor();
  assert.equal(await mine(erin).getAttribute('data-ticks'), '1');
  assert.equal(await mine(erin).getAttribute('title'), '已发送');

  // Erin closes the app; Frank comes online and reads it.
  const url = server.url;
  const context = erin.context();
  await erin.close();
  const frank = await openPage(browser, server);
  await signIn(frank, 'frank');
  await badge(frank, 'u:erin').filter({ hasText: '1' }).waitFor();
  await frank.click('#dm-list [data-key="u:erin"]');
  await waitForTexts(frank, ['frank, the keys are under the mat']);

  // Erin comes back: two ticks (the receipt waited in her inbox; history says peer_read too).
  erin = await context.newPage();
  erin.errors = [];
  erin.on('pageerror', (err) => erin.errors.push(err.message));
  await erin.goto(url);
  await mine(erin).locator('.icon-ticks').waitFor();
  assert.equal(await mine(erin).getAttribute('data-ticks'), '2');
  assert.equal(await mine(erin).getAttribute('title'), '已读');

  // Live: one tick, then two as soon as Frank (who has the conversation open) reads it.
  await say(erin, 'and the bike is in the shed');
  await erin.locator('#messages .msg.own', { hasText: 'bike' }).locator('.status[data-ticks="2"]').waitFor();
  assert.deepEqual([...erin.errors, ...frank.errors], []);
  await context.close();
  await frank.context().close();
});

test('recall: the text is gone for everyone, also for a peer that was offline during it (room replay, direct inbox)', async () => {
  const proxy = await new Proxy(server.port).listen();
  try {
    const hana = await openPage(browser, server);
    await signIn(hana, 'hana');
    await joinRoom(hana, 'ops');
    const gus = await openPage(browser, { url: `http://${proxy.addr}` });
    await signIn(gus, 'gus');
    await joinRoom(gus, 'ops');
    await say(hana, 'the root password is hunter2');
    await waitForTexts(gus, ['the root password is hunter2']);

    // Gus loses the network; Hana recalls her message meanwhile.
    proxy.refuse();
    proxy.cut();
    await gus.waitForSelector('#conn[data-state="reconnecting"]');
    await openMenu(hana, 'hunter2');
    await hana.click('.msg-menu .menu-recall');
    await hana.locator('#messages .recalled:text-is("You recalled a message")').waitFor();
    assert.deepEqual(await messageTexts(hana), []);
    // Gus resumes (rejoin with `since`): the recall is replayed.
    proxy.pass();
    await gus.locator('#messages .recalled:text-is("hana recalled a message")').waitFor({ timeout: 20_000 });
    assert.deepEqual(await messageTexts(gus), []);
    assert.equal(await gus.locator('#messages', { hasText: 'hunter2' }).count(), 0);

    // A direct: Ivy (in Chinese) read it, closed the app; it is recalled; she comes back.
    let ivy = await openPage(browser, server, { locale: 'zh-CN' });
    await signIn(ivy, 'ivy');
    await hana.fill('#dm-input', 'ivy');
    await hana.press('#dm-input', 'Enter');
    await say(hana, 'wrong chat, sorry');
    await ivy.click('#dm-list [data-key="u:hana"]');
    await waitForTexts(ivy, ['wrong chat, sorry']);
    const context = ivy.context();
    await ivy.close();
    await openMenu(hana, 'wrong chat, sorry');
    await hana.click('.msg-menu .menu-recall');
    await hana.locator('#messages .recalled:text-is("You recalled a message")').waitFor();
    ivy = await context.newPage();
    ivy.errors = [];
    ivy.on('pageerror', (err) => ivy.errors.push(err.message));
    await ivy.goto(server.url);
    await ivy.locator('#messages .recalled:text-is("hana 撤回了一条消息")').waitFor();
    assert.deepEqual(await messageTexts(ivy), []);
    assert.equal(await ivy.textContent('#dm-list [data-key="u:hana"] .preview'), 'hana 撤回了一条消息');
    assert.deepEqual([...hana.errors, ...gus.errors, ...ivy.errors], []);
    for (const page of [hana, gus, ivy]) await page.context().close();
  } finally {
    await proxy.close();
  }
});

test('edit: from the keyboard, shown live with "(edited)" in English and Chinese, also after a reload', async () => {
  const jack = await openPage(browser, server);
  await signIn(jack, 'jack');
  await joinRoom(jack, 'plans');
  const ming = await openPage(browser, server, { locale: 'zh-CN' });
  await signIn(ming, '小明');
  await joinRoom(ming, 'plans');
  await say(jack, 'teh plan is ready');
  await waitForTexts(ming, ['teh plan is ready']);
  // Only my own messages have the menu.
  assert.equal(await ming.locator('#messages .msg .msg-menu-button').count(), 0);

  // The menu by keyboard: focus its button, Enter opens it on the first
  // item, arrows move, Escape closes it and gives the focus back.
  // (By key: while edited, the text is in a textarea's value, not the item's text.)
  const own = await ownMessage(jack, 'teh plan');
  await own.locator('.msg-menu-button').focus();
  await jack.keyboard.press('Enter');
  await jack.waitForSelector('.msg-menu .menu-edit:focus');
  assert.equal(await own.locator('.msg-menu-button').getAttribute('aria-expanded'), 'true');
  await jack.keyboard.press('ArrowDown');
  await jack.waitForSelector('.msg-menu .menu-recall:focus');
  await jack.keyboard.press('Escape');
  await jack.waitForSelector('.msg-menu', { state: 'detached' });
  assert.ok(await own.locator('.msg-menu-button').evaluate((b) => b === document.activeElement));
  await jack.keyboard.press('Enter');
  await jack.keyboard.press('Enter'); // "Edit"
  const editor = own.locator('.edit-form textarea');
  await editor.waitFor();
  assert.equal(await editor.inputValue(), 'teh plan is ready');
  await editor.fill('the plan is ready');
  await editor.press('Enter');
  await own.locator('.edited:text-is("(edited)")').waitFor();
  await waitForTexts(jack, ['the plan is ready']);
  await waitForTexts(ming, ['the plan is ready']);
  await ming.locator('#messages .msg', { hasText: 'the plan is ready' }).locator('.edited:text-is("(已编辑)")').waitFor();

  // After a reload, history has it edited.
  await ming.reload();
  await ming.waitForSelector('#conn[data-state="connected"]');
  await waitForTexts(ming, ['the plan is ready']);
  await ming.locator('#messages .msg', { hasText: 'the plan is ready' }).locator('.edited:text-is("(已编辑)")').waitFor();
  assert.deepEqual([...jack.errors, ...ming.errors], []);
  await jack.context().close();
  await ming.context().close();
});

test('a recall or edit the server refuses (its window passed) says so, in English and Chinese', async () => {
  // A server with windows of a second (the app offers the default ones, minutes).
  const strict = await new Server(['--rate-limit', '0', '--recall-window', '1s', '--edit-window', '1s']).start();
  try {
    for (const [locale, late, lateEdit] of [
      ['en-US', 'It is too late to recall this message.', 'It is too late to edit this message.'],
      ['zh-CN', '已超过可撤回的时间，无法撤回。', '已超过可编辑的时间，无法编辑。'],
    ]) {
      const page = await openPage(browser, strict, { locale });
      await signIn(page, `late-${locale}`);
      await say(page, `too late ${locale}`);
      await page.waitForSelector('#conn[data-unsent="0"]');
      const msg = await ownMessage(page, `too late ${locale}`);
      // The server's window passes (the message's time is the server's).
      const sent = Date.parse(await msg.locator('time').getAttribute('datetime'));
      await page.waitForFunction((ts) => Date.now() > ts + 1500, sent);
      await openMenu(page, `too late ${locale}`);
      await page.click('.msg-menu .menu-recall');
      await msg.locator(`.msg-error[role="alert"]:text-is("${late}")`).waitFor();
      await openMenu(page, `too late ${locale}`);
      await page.click('.msg-menu .menu-edit');
      await msg.locator('.edit-form textarea').fill(`still too late ${locale}`);
      await msg.locator('.edit-form .edit-save').click();
      await msg.locator(`.msg-error:text-is("${lateEdit}")`).waitFor();
      // Nothing changed.
      await waitForTexts(page, [`too late ${locale}`]);
      assert.deepEqual(page.errors, []);
      await page.context().close();
    }
  } finally {
    await strict.dispose();
  }
});

test('typing: the header shows who is typing, until they clear the input, send, or it expires', async () => {
  const kate = await openPage(browser, server);
  await signIn(kate, 'kate');
  await joinRoom(kate, 'typing');
  const leo = await openPage(browser, server);
  await signIn(leo, 'leo');
  await joinRoom(leo, 'typing');
  const hong = await openPage(browser, server, { locale: 'zh-CN', viewport: PHONE, phone: true });
  await signIn(hong, '小红');
  await hong.fill('#join-input', 'typing');
  await hong.press('#join-input', 'Enter');
  await hong.waitForSelector('#conv-title:text-is("# typing")');
  await kate.waitForSelector('#conv-sub:text-is("3 online")');

  await leo.fill('#text', 'h');
  await kate.waitForSelector('#typing:text-is("leo is typing…")');
  await hong.waitForSelector('#typing:text-is("leo 正在输入…")');
  assert.ok(await kate.isHidden('#conv-sub'), 'in place of the online count');
  // Cleared: gone at once.
  await leo.fill('#text', '');
  await kate.waitForSelector('#typing', { state: 'hidden' });
  await kate.waitForSelector('#conv-sub:text-is("3 online")');

  // Two typing; one sends: the other is still typing.
  await leo.fill('#text', 'hello');
  await kate.fill('#text', 'hi');
  await hong.waitForSelector('#typing:text-is("kate、leo 正在输入…")');
  await leo.press('#text', 'Enter');
  await hong.waitForSelector('#typing:text-is("kate 正在输入…")');
  await waitForTexts(hong, ['hello']);
  // Kate stops typing without clearing: it expires (5 s after her signal).
  await hong.waitForSelector('#typing', { state: 'hidden', timeout: 10_000 });

  // A direct: "typing…" in the list, and in the header when it is open.
  await leo.fill('#dm-input', 'kate');
  await leo.press('#dm-input', 'Enter');
  await say(leo, 'ping');
  await kate.locator('#dm-list [data-key="u:leo"]').waitFor();
  await leo.fill('#text', 'about tomorrow');
  await kate.locator('#dm-list [data-key="u:leo"] .typing-preview:text-is("typing…")').waitFor();
  await kate.click('#dm-list [data-key="u:leo"]');
  await kate.waitForSelector('#typing:text-is("leo is typing…")');
  await leo.press('#text', 'Enter');
  await kate.waitForSelector('#typing', { state: 'hidden' });
  await waitForTexts(kate, ['ping', 'about tomorrow']);
  assert.deepEqual([...kate.errors, ...leo.errors, ...hong.errors], []);
  for (const page of [kate, leo, hong]) await page.context().close();
});
