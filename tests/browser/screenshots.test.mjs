// Screenshots of the main screens for the README (docs/screenshots/), taken
// from a real conversation. Also checks what they show. Uses history and
// read receipts, so it needs the persistence build.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { Client } from '../../web/client.js';
import {
  launch, openPage, signIn, joinRoom, say, waitForTexts, screenshot, ownMessage, Server, Proxy, PHONE,
} from './lib.mjs';

let browser;
let server;
let proxy;
before(async () => {
  server = await new Server(['--rate-limit', '0']).start();
  proxy = await new Proxy(server.port).listen();
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await proxy?.close();
  await server?.dispose();
});

test('screenshots: sign-in, room, direct messages, phone, Chinese UI (wide and phone), reconnecting', async () => {
  const room = 'launch';
  // Two teammates who wrote earlier (history) and stay online (members).
  const bots = ['dave', 'erin'].map((user) => new Client({ url: `ws://${server.addr}/ws`, user, WebSocket }));
  await Promise.all(bots.map((b) => b.join(room)));
  await bots[0].publish(room, { text: 'Morning all! The release checklist is in the doc.' });
  await bots[1].publish(room, { text: "I'll take the changelog." });

  const look = { timezoneId: 'Asia/Shanghai' };
  const signin = await openPage(browser, server, look);
  await signin.fill('#nickname', 'alice');
  await screenshot(signin, 'signin');
  await signin.context().close();

  const alice = await openPage(browser, { url: `http://${proxy.addr}` }, look);
  await signIn(alice, 'alice');
  await joinRoom(alice, room);
  const bob = await openPage(browser, server, { ...look, viewport: PHONE, phone: true });
  await signIn(bob, 'bob');
  await bob.fill('#join-input', room);
  await bob.press('#join-input', 'Enter');
  const hong = await openPage(browser, server, { ...look, locale: 'zh-CN' });
  await signIn(hong, '小红');
  await joinRoom(hong, room);

  await say(bob, 'Did the new build go out?');
  await waitForTexts(alice, ['Did the new build go out?']);
  await say(alice, 'Yes, deployed at 9:00. All checks are green.');
  await waitForTexts(hong, ['Yes, deployed at 9:00. All checks are green.']);
  await say(hong, '太好了！我来更新发布说明。');
  await waitForTexts(bob, ['太好了！我来更新发布说明。']);
  await say(bob, 'Nice work, everyone!');
  await waitForTexts(alice, ['Nice work, everyone!']);
  await waitForTexts(hong, ['Nice work, everyone!']);

  // Bob sends Alice a direct message: she gets an unread badge.
  const bobClient = bob; // phone: list → conversation
  await bobClient.click('#back');
  await bobClient.fill('#dm-input', 'alice');
  await bobClient.press('#dm-input', 'Enter');
  await say(bobClient, 'Lunch at 12:30?');
  await alice.locator('#dm-list [data-key="u:bob"] .badge').waitFor();
  await alice.waitForSelector('#conv-sub:text-is("5 online")');
  await alice.waitForSelector('#member-list .member-name:text-is("小红")');
  await screenshot(alice, 'chat');

  await alice.click('#dm-list [data-key="u:bob"]');
  await say(alice, 'Sure, see you at the usual place');
  await waitForTexts(bob, ['Lunch at 12:30?', 'Sure, see you at the usual place']);
  await alice.locator('#messages .msg.own .status:text-is("Read")').waitFor();
  await screenshot(alice, 'direct');

  await bob.click('#back');
  await bob.click(`#room-list [data-key="r:${room}"]`);
  await waitForTexts(bob, ['Nice work, everyone!']);
  await screenshot(bob, 'phone');

  await hong.waitForSelector('#conv-sub:text-is("5 人在线")');
  await screenshot(hong, 'chat-zh');

  // 小红 on her phone too (the same user, a second device), in Chinese.
  const hongPhone = await openPage(browser, server, { ...look, locale: 'zh-CN', viewport: PHONE, phone: true });
  await signIn(hongPhone, '小红');
  await hongPhone.fill('#join-input', room);
  await hongPhone.press('#join-input', 'Enter');
  await waitForTexts(hongPhone, ['太好了！我来更新发布说明。', 'Nice work, everyone!']);
  await hongPhone.waitForSelector('#conv-sub:text-is("5 人在线")');
  assert.equal(await hongPhone.textContent('#me'), '小红');
  await screenshot(hongPhone, 'phone-zh');

  // The network drops: the indicator says so and the message waits.
  await alice.click(`#room-list [data-key="r:${room}"]`);
  proxy.refuse();
  proxy.cut();
  await alice.waitForSelector('#conn[data-state="reconnecting"]');
  await say(alice, 'Running 5 minutes late for the demo');
  await alice.waitForSelector('#conn[data-unsent="1"]');
  await screenshot(alice, 'reconnecting');
  proxy.pass();
  await alice.waitForSelector('#conn[data-state="connected"][data-unsent="0"]', { timeout: 20_000 });
  await waitForTexts(hong, ['Running 5 minutes late for the demo']);

  for (const page of [alice, bob, hong, hongPhone]) assert.deepEqual(page.errors, []);
  for (const b of bots) b.close();
});

// The messenger features, in English and Chinese, wide and on a phone:
// the conversation list with unread badges and previews, one and two
// ticks, "(edited)", a recalled message, "typing…", the menu of a message.
const SCENES = [
  {
    lang: 'en', locale: 'en-US', me: 'maya', peer: 'noah', other: 'olivia', room: 'design',
    text: {
      kickoff: 'Kickoff notes are in the doc.', hi: 'Hi Noah, the slides are attached.', reply: 'Thanks, they look great!',
      typo: 'Lunch at noon?', fixed: 'Lunch at 12:30?', oops: 'Oops, wrong chat', last: 'The review moved to 3 pm',
      room1: 'New mockups are up', room2: 'Feedback by Friday, please', dm: 'Can you look at my PR?',
    },
  },
  {
    lang: 'zh', locale: 'zh-CN', me: '小丽', peer: '小王', other: '小陈', room: '设计',
    text: {
      kickoff: '启动会议纪要在文档里。', hi: '小王，幻灯片发你了。', reply: '收到，做得很好！',
      typo: '中午一起吃饭？', fixed: '12:30 一起吃饭？', oops: '发错了', last: '评审改到下午 3 点',
      room1: '新的设计稿已上传', room2: '请在周五前反馈', dm: '能帮我看一下代码吗？',
    },
  },
];

const ownItem = ownMessage;

for (const scene of SCENES) {
  test(`screenshots: messenger (${scene.lang}): badges, ticks, edited, recalled, typing, message menu; wide and phone`, async () => {
    const { me, peer, other, room, text } = scene;
    const look = { timezoneId: 'Asia/Shanghai', locale: scene.locale };
    const bot = (user) => new Client({ url: `ws://${server.addr}/ws`, user, WebSocket });
    const peerBot = bot(peer);
    const otherBot = bot(other);
    // Closed whatever happens: an open client would keep the run alive.
    after(() => { peerBot.close(); otherBot.close(); });
    await otherBot.join(room);
    await otherBot.publish(room, { text: text.kickoff });
    // The peer reads what comes, until told to stop.
    let reading = true;
    peerBot.on('direct', (d) => { if (reading && d.from === me) peerBot.read(me, d.seq); });
    await peerBot.connect();

    const desk = await openPage(browser, server, look);
    await signIn(desk, me);
    await joinRoom(desk, room);
    await waitForTexts(desk, [text.kickoff]);
    await desk.fill('#dm-input', peer);
    await desk.press('#dm-input', 'Enter');
    await say(desk, text.hi);
    await (await ownItem(desk, text.hi)).locator('.status[data-ticks="2"]').waitFor();
    await peerBot.send(me, { text: text.reply });
    await waitForTexts(desk, [text.hi, text.reply]);
    // A typo, edited from the message's menu.
    await say(desk, text.typo);
    const typo = await ownItem(desk, text.typo);
    await typo.locator('.status[data-ticks="2"]').waitFor();
    await typo.hover();
    await typo.locator('.msg-menu-button').click();
    await desk.click('.msg-menu .menu-edit');
    await typo.locator('.edit-form textarea').fill(text.fixed);
    await typo.locator('.edit-form textarea').press('Enter');
    await typo.locator('.edited').waitFor();
    // A message to the wrong person, recalled.
    await say(desk, text.oops);
    const oops = await ownItem(desk, text.oops);
    await oops.locator('.status[data-ticks]').waitFor();
    await oops.hover();
    await oops.locator('.msg-menu-button').click();
    await desk.click('.msg-menu .menu-recall');
    await desk.locator('#messages .recalled').waitFor();
    // The last one is not read yet: one tick.
    reading = false;
    await say(desk, text.last);
    const last = await ownItem(desk, text.last);
    await last.locator('.status[data-ticks="1"]').waitFor();

    // Elsewhere: two new messages in the room, a direct from someone else.
    await otherBot.publish(room, { text: text.room1 });
    await otherBot.publish(room, { text: text.room2 });
    await otherBot.send(me, { text: text.dm });
    await desk.locator(`#room-list [data-key="r:${room}"] .badge:text-is("2")`).waitFor();
    await desk.locator(`#dm-list [data-key="u:${other}"] .badge:text-is("1")`).waitFor();
    // The peer types; I open the menu of my last message.
    peerBot.signal({ to: me }, { typing: true });
    await desk.waitForSelector('#typing:not([hidden])');
    await last.hover();
    await last.locator('.msg-menu-button').click();
    await desk.locator('.msg-menu .menu-recall').waitFor();
    await screenshot(desk, scene.lang === 'en' ? 'messenger' : 'messenger-zh');
    await desk.keyboard.press('Escape');

    // My phone (a second device, first visit): the list from the server.
    const phone = await openPage(browser, server, { ...look, viewport: PHONE, phone: true });
    await signIn(phone, me);
    await phone.locator(`#room-list [data-key="r:${room}"] .badge:text-is("2")`).waitFor();
    await phone.locator(`#dm-list [data-key="u:${other}"] .badge:text-is("1")`).waitFor();
    if (scene.lang === 'en') {
      peerBot.signal({ to: me }, { typing: true });
      await phone.locator(`#dm-list [data-key="u:${peer}"] .typing-preview`).waitFor();
      await screenshot(phone, 'messenger-phone');
    } else {
      await phone.click(`#dm-list [data-key="u:${peer}"]`);
      await waitForTexts(phone, [text.hi, text.reply, text.fixed, text.last]);
      await phone.locator('#messages .recalled').waitFor();
      await (await ownItem(phone, text.hi)).locator('.status[data-ticks="2"]').waitFor();
      peerBot.signal({ to: me }, { typing: true });
      await phone.waitForSelector('#typing:not([hidden])');
      const mine = await ownItem(phone, text.last);
      await mine.locator('.msg-menu-button').click();
      await phone.locator('.msg-menu .menu-edit').waitFor();
      await screenshot(phone, 'messenger-phone-zh');
    }
    for (const page of [desk, phone]) assert.deepEqual(page.errors, []);
    for (const page of [desk, phone]) await page.context().close();
    peerBot.close();
    otherBot.close();
  });
}
