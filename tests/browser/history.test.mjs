// History in the chat app: older messages load when scrolling up, and a
// reload brings rooms and conversations back from the server.
// Needs the persistence build (`history`, SPEC §3).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { Client } from '../../web/client.js';
import { launch, openPage, signIn, joinRoom, say, messageTexts, waitForTexts, Server } from './lib.mjs';

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

test('scrolling up loads earlier messages until the beginning, each once and in order', async () => {
  const writer = new Client({ url: `ws://${server.addr}/ws`, user: 'archivist', WebSocket });
  await writer.join('archive');
  const texts = Array.from({ length: 130 }, (_, i) => `m${i + 1}`);
  await Promise.all(texts.map((t) => writer.publish('archive', { text: t })));
  writer.close();

  const page = await openPage(browser, server);
  await signIn(page, 'reader');
  await joinRoom(page, 'archive');
  // The newest page first, scrolled to the bottom.
  await waitForTexts(page, texts.slice(-50));
  let shown = await messageTexts(page);
  assert.deepEqual(shown, texts.slice(-shown.length));
  assert.ok(shown.length < texts.length);
  const atBottom = await page.$eval('#scroller', (s) => s.scrollHeight - s.scrollTop - s.clientHeight < 2);
  assert.ok(atBottom, 'opens at the newest message');

  // Scroll to the top until the beginning is reached.
  while (!(await page.isVisible('#history-state:text-is("This is the beginning of the conversation.")'))) {
    const before = shown.length;
    await page.$eval('#scroller', (s) => { s.scrollTop = 0; });
    await page.waitForFunction((n) => {
      const count = document.querySelectorAll('#messages .msg').length;
      const state = document.getElementById('history-state').textContent;
      return count > n || state.startsWith('This is the beginning');
    }, before);
    const previousTop = shown[0];
    shown = await messageTexts(page);
    if (shown.length > before) {
      // Loading kept the reader's place: the message that was on top has not moved.
      const offset = await page.evaluate((text) => {
        const node = [...document.querySelectorAll('#messages .msg')].find((n) => n.querySelector('.text').textContent === text);
        return node.getBoundingClientRect().top - document.getElementById('scroller').getBoundingClientRect().top;
      }, previousTop);
      assert.ok(offset >= 0 && offset < 150, `${previousTop} is ${offset}px below the top`);
    }
  }
  assert.deepEqual(shown, texts);
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('after a reload the rooms and conversations come back, with their history', async () => {
  const dora = await openPage(browser, server);
  await signIn(dora, 'dora');
  await joinRoom(dora, 'book-club');
  const eli = await openPage(browser, server);
  await signIn(eli, 'eli');
  await joinRoom(eli, 'book-club');
  await say(eli, 'chapter 3 tonight?');
  await waitForTexts(dora, ['chapter 3 tonight?']);
  await say(dora, 'yes');
  await waitForTexts(eli, ['chapter 3 tonight?', 'yes']);
  await dora.fill('#dm-input', 'eli');
  await dora.press('#dm-input', 'Enter');
  await say(dora, 'bring the snacks');
  await dora.locator('#messages .msg.own .status:text-is("Delivered")').waitFor();

  await dora.reload();
  await dora.waitForSelector('#conn[data-state="connected"]');
  // She was in the conversation with Eli: it reopens with its history.
  await dora.waitForSelector('#conv-title:text-is("eli")');
  await waitForTexts(dora, ['bring the snacks']);
  assert.match(await dora.locator('#messages .msg').last().getAttribute('class'), /\bown\b/);
  await dora.click('#room-list [data-key="r:book-club"]');
  await waitForTexts(dora, ['chapter 3 tonight?', 'yes']);
  assert.deepEqual(await messageTexts(dora), ['chapter 3 tonight?', 'yes']);
  assert.deepEqual(await dora.$$eval('#room-list .name', (n) => n.map((x) => x.textContent)), ['# book-club', '# lobby']);
  assert.deepEqual([...dora.errors, ...eli.errors], []);
  await dora.context().close();
  await eli.context().close();
});
