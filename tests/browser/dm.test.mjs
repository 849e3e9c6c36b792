// Direct messages in the chat app: unread badge, then a read receipt; a
// user's second device shows the whole conversation.
// Needs the persistence build: `read` receipts (SPEC §3) arrive with it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launch, openPage, signIn, say, messageTexts, waitForTexts, Server } from './lib.mjs';

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

test('a direct message: unread badge for the recipient, then "Read" for the sender', async () => {
  const alice = await openPage(browser, server);
  await signIn(alice, 'alice');
  const bob = await openPage(browser, server);
  await signIn(bob, 'bob');

  // Bob opens a conversation with Alice from the lobby's member list.
  await bob.click('#member-list button:has(.member-name:text-is("alice"))');
  await bob.waitForSelector('#conv-title:text-is("alice")');
  await say(bob, 'psst, alice');
  const mine = bob.locator('#messages .msg.own', { hasText: 'psst, alice' });
  await mine.locator('.status:text-is("Delivered")').waitFor();

  // Alice is reading the lobby: the conversation appears with a badge.
  const entry = alice.locator('#dm-list [data-key="u:bob"]');
  await entry.locator('.badge:text-is("1")').waitFor();
  assert.equal(await alice.title(), '(1) Switchboard');
  assert.equal(await alice.textContent('#conv-title'), '# lobby');

  // She opens it: the badge goes, Bob sees "Read".
  await entry.click();
  await waitForTexts(alice, ['psst, alice']);
  assert.equal(await entry.locator('.badge').count(), 0);
  assert.equal(await alice.title(), 'Switchboard');
  await mine.locator('.status:text-is("Read")').waitFor();

  // While she has the conversation open, new messages are read at once.
  await say(bob, 'are you there?');
  await waitForTexts(alice, ['psst, alice', 'are you there?']);
  await bob.locator('#messages .msg.own', { hasText: 'are you there?' }).locator('.status:text-is("Read")').waitFor();
  assert.equal(await entry.locator('.badge').count(), 0);

  // Alice answers; Bob, back in the lobby, gets the badge.
  await bob.click('#room-list [data-key="r:lobby"]');
  await say(alice, 'yes!');
  await bob.locator('#dm-list [data-key="u:alice"] .badge:text-is("1")').waitFor();
  await bob.click('#dm-list [data-key="u:alice"]');
  await waitForTexts(bob, ['psst, alice', 'are you there?', 'yes!']);
  assert.deepEqual(await messageTexts(alice), ['psst, alice', 'are you there?', 'yes!']);
  await alice.locator('#messages .msg.own .status:text-is("Read")').waitFor();
  assert.deepEqual([...alice.errors, ...bob.errors], []);
  await alice.context().close();
  await bob.context().close();
});

test('a second device shows the whole conversation, my replies from the first device included', async () => {
  const lee = await openPage(browser, server);
  await signIn(lee, 'lee');
  const phone = await openPage(browser, server);
  await signIn(phone, 'kim');

  await lee.fill('#dm-input', 'kim');
  await lee.press('#dm-input', 'Enter');
  await say(lee, 'q1: lunch?');
  // Kim answers from her phone.
  await phone.locator('#dm-list [data-key="u:lee"] .badge').waitFor();
  await phone.click('#dm-list [data-key="u:lee"]');
  await waitForTexts(phone, ['q1: lunch?']);
  await say(phone, 'a1: yes, at noon');
  await phone.locator('#messages .msg.own .status:text-is("Read")').waitFor();
  await say(lee, 'q2: the usual place?');
  await waitForTexts(phone, ['q1: lunch?', 'a1: yes, at noon', 'q2: the usual place?']);

  // Her laptop, a device that has seen none of it: Lee's messages come
  // from its inbox, her own reply only from history.
  const laptop = await openPage(browser, server);
  await signIn(laptop, 'kim');
  // She read all of it on her phone: listed, without a badge (the server's count).
  await laptop.locator('#dm-list [data-key="u:lee"] .preview:text-is("q2: the usual place?")').waitFor();
  await laptop.click('#dm-list [data-key="u:lee"]');
  const all = ['q1: lunch?', 'a1: yes, at noon', 'q2: the usual place?'];
  await waitForTexts(laptop, all);
  assert.deepEqual(await messageTexts(laptop), all, 'each once, in order');
  const reply = laptop.locator('#messages .msg', { hasText: 'a1: yes, at noon' });
  assert.match(await reply.getAttribute('class'), /\bown\b/);
  await laptop.waitForSelector('#history-state:text-is("This is the beginning of the conversation.")');
  assert.deepEqual([...lee.errors, ...phone.errors, ...laptop.errors], []);
  for (const page of [lee, phone, laptop]) await page.context().close();
});
