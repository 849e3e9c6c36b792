// The operator dashboard at /admin in headless Chromium: the key prompt
// (a wrong key refused, the right one kept for the tab only), then live
// charts and the busiest rooms while WebSocket clients make traffic. Writes
// docs/screenshots/admin.png with UPDATE_SCREENSHOTS=1.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { Client } from '../../web/client.js';
import { launch, openPage, screenshot, Server } from './lib.mjs';

const KEY = 'ops-7f3a-dashboard';

let browser;
let server;
before(async () => {
  server = await new Server(['--api-key', KEY, '--rate-limit', '0']).start();
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await server?.dispose();
});

// What Chromium logs by itself for a fetch answered 401 (the wrong key).
const REFUSED_FETCH = /status of 401/;

async function enterKey(page, key) {
  await page.fill('#key', key);
  await page.click('#login-submit');
}

test('the key prompt: a wrong key is refused, the right one opens the dashboard for this tab only', async () => {
  const page = await openPage(browser, server, { path: '/admin' });
  await page.waitForSelector('#login:not([hidden])');
  assert.equal(await page.isHidden('#dash'), true);

  await enterKey(page, 'not-the-key');
  await page.waitForSelector('#login-error:text-is("That key was not accepted.")');
  assert.equal(await page.evaluate(() => sessionStorage.length), 0, 'a refused key is not kept');

  await enterKey(page, KEY);
  await page.waitForSelector('#dash:not([hidden])');
  await page.waitForSelector('#status[data-state="live"]');
  assert.equal(await page.isHidden('#login'), true);
  // Kept in sessionStorage (this tab), not localStorage, and not on the page.
  assert.deepEqual(await page.evaluate(() => Object.values(sessionStorage)), [KEY]);
  assert.equal(await page.evaluate(() => localStorage.length), 0);
  assert.equal(await page.inputValue('#key'), '');
  assert.ok(!(await page.content()).includes(KEY));

  // A reload keeps the tab's key: straight to the charts.
  await page.reload();
  await page.waitForSelector('#dash:not([hidden])');
  await page.waitForSelector('#status[data-state="live"]');
  await page.waitForFunction(() => Number(document.querySelector('[data-chart="connections"]').dataset.points) >= 2);

  // "Forget key" drops it and asks again.
  await page.click('#forget');
  await page.waitForSelector('#login:not([hidden])');
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);

  assert.deepEqual(page.errors.filter((e) => !REFUSED_FETCH.test(e)), []);
  await page.context().close();
});

/**
 * Paced traffic until `stop()`: members of each room publish a varying
 * number of messages every 100 ms (each batch waits for its acks), bounded
 * by a deadline so a failing test cannot run it forever.
 */
function traffic(rooms, deadlineMs) {
  let running = true;
  const done = (async () => {
    const end = Date.now() + deadlineMs;
    for (let tick = 0; running && Date.now() < end; tick++) {
      const batch = [];
      for (const { room, members, per } of rooms) {
        // A slow swell, so the rate chart has a shape.
        const n = Math.round(per * (1.2 + Math.sin(tick / 12)));
        for (let i = 0; i < n; i++) {
          const from = members[(tick + i) % members.length];
          batch.push(from.publish(room, { text: `m${tick}.${i}` }));
        }
      }
      await Promise.all([...batch, new Promise((r) => setTimeout(r, 100))]);
    }
  })();
  return { stop: () => { running = false; return done; } };
}

test('live charts and the busiest rooms from WebSocket traffic (screenshot)', async () => {
  const page = await openPage(browser, server, { path: '/admin' });
  await page.waitForSelector('#login:not([hidden])');
  await enterKey(page, KEY);
  await page.waitForSelector('#status[data-state="live"]');
  await page.waitForSelector('#rooms-empty:not([hidden])');

  const url = `ws://${server.addr}/ws`;
  const clients = [];
  const member = async (user, room) => {
    const c = new Client({ url, user, WebSocket });
    clients.push(c);
    await c.join(room);
    return c;
  };
  const rooms = [
    { room: 'launch-day', members: [], per: 3 },
    { room: 'support', members: [], per: 1 },
  ];
  rooms[0].members.push(await member('ana', 'launch-day'), await member('ben', 'launch-day'));
  rooms[1].members.push(await member('chen', 'support'));
  const load = traffic(rooms, 90_000);
  try {
    // People keep arriving while the charts run: the connection chart climbs.
    for (const [user, at] of [['dev', 0], ['eve', 0], ['fay', 1], ['gus', 0], ['hana', 1], ['ivo', 0]]) {
      const room = rooms[at];
      room.members.push(await member(user, room.room));
      await page.waitForFunction(
        (n) => Number(document.querySelector('[data-chart="connections"] [data-series="connections"]')?.dataset.value) === n,
        clients.length,
      );
    }
    await member('kim', 'random');

    // A client that sends a bad command: errors by code.
    const bad = new WebSocket(`${url}?user=mallory`);
    await new Promise((resolve, reject) => { bad.once('open', resolve); bad.once('error', reject); });
    const answers = [];
    bad.on('message', (data) => answers.push(JSON.parse(data)));
    bad.send(JSON.stringify({ type: 'join' }));

    await page.waitForSelector('[data-chart="errors"] [data-series="bad_request"]');
    await page.waitForSelector('[data-chart="fanout"] [data-series="p99"]:not([data-value=""])');
    await page.waitForFunction(() => Number(document.querySelector('[data-chart="messages"] [data-series="out"]')?.dataset.value) > 0);
    // The busiest room first, with its online count and a message rate.
    await page.waitForSelector('#rooms tbody tr:first-child[data-room="launch-day"] .online:text-is("6")');
    await page.waitForFunction(() => Number(document.querySelector('#rooms tr[data-room="launch-day"] .rate')?.textContent) > 0);
    // Enough history that the charts show a shape (one point a second).
    await page.waitForFunction(() => Number(document.querySelector('[data-chart="messages"]').dataset.points) >= 20, null, { timeout: 40_000 });
    assert.ok(answers.some((a) => a.type === 'error' && a.code === 'bad_request'), JSON.stringify(answers));

    const table = await page.$$eval('#rooms tbody tr', (rows) => rows.map((r) => [r.dataset.room, r.querySelector('.online').textContent]));
    assert.deepEqual(table, [['launch-day', '6'], ['support', '3'], ['random', '1']]);
    assert.equal(await page.textContent('[data-chart="users"] [data-series="users"] .value'), '11');
    assert.equal(await page.textContent('[data-chart="rooms"] [data-series="rooms"] .value'), '3');
    // Every chart has drawn a line.
    const drawn = await page.$$eval('.chart', (charts) => charts.map((c) => [c.dataset.chart, c.querySelectorAll('path.line[d^="M"]').length > 0]));
    for (const [chart, line] of drawn) assert.ok(line, `${chart} has a line`);
    await screenshot(page, 'admin');
    bad.close();
  } finally {
    await load.stop();
    for (const c of clients) c.close();
  }
  assert.deepEqual(page.errors, []);
  await page.context().close();
});
