// Screenshots of the main screens for the README (docs/screenshots/), taken
// from a real conversation. Also checks what they show. Uses history and
// read receipts, so it needs the persistence build.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { Client } from '../../web/client.js';
import {
  launch, openPage, signIn, joinRoom, say, waitForTexts, screenshot, Server, Proxy, PHONE,
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
