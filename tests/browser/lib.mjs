// Browser test helpers: Debian's Chromium driven by playwright-core, pages
// loaded over http from the real binary (Chromium refuses WebSockets from
// data: pages), and small waits on what the page shows.
import { chromium } from 'playwright-core';
import { mkdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import http from 'node:http';
import path from 'node:path';
import { ROOT } from '../node/client-helpers.mjs';
import { freePort, runNginx } from '../node/nginx.mjs';

export { Server, Proxy, ROOT } from '../node/client-helpers.mjs';

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
// The README's screenshots are rewritten only on request
// (UPDATE_SCREENSHOTS=1), so a test run leaves the work tree clean.
export const SCREENSHOTS = process.env.SCREENSHOT_DIR
  || (process.env.UPDATE_SCREENSHOTS ? path.join(ROOT, 'docs/screenshots') : path.join(tmpdir(), 'switchboard-screenshots'));

const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

// What Chromium logs by itself about connection attempts that fail while
// the client reconnects: a refused WebSocket, a network error, and behind a
// proxy whose upstream is down its 502 answers (to an EventSource too).
const BROWSER_NETWORK_REPORT = new RegExp([
  'WebSocket connection to .* failed',
  'net::ERR_',
  'Failed to load resource: the server responded with a status of 502',
  "EventSource's response has a MIME type",
].join('|'));

/** Launches Chromium (playwright gives it a fresh, temporary --user-data-dir). */
export function launch() {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS });
}

export const DESKTOP = { width: 1200, height: 760 };
export const PHONE = { width: 390, height: 780 };

/**
 * A fresh browser context (own storage, like another person's browser) with
 * one page on the server's `/` (or `path`). Collects uncaught exceptions and
 * console errors in `page.errors`, and any `alert()` text in `page.dialogs`
 * (an injected script would call one).
 */
export async function openPage(browser, server, { locale = 'en-US', viewport = DESKTOP, phone = false, timezoneId = 'UTC', path: at = '/' } = {}) {
  const context = await browser.newContext({
    locale,
    viewport,
    deviceScaleFactor: phone ? 2 : 1,
    isMobile: phone,
    hasTouch: phone,
    timezoneId,
  });
  const page = await context.newPage();
  page.errors = [];
  page.dialogs = [];
  page.on('pageerror', (err) => page.errors.push(err.message));
  // Console errors too (a CSP violation shows up there), except the
  // browser's own reports of failed connection attempts while reconnecting.
  page.on('console', (m) => {
    if (m.type() === 'error' && !BROWSER_NETWORK_REPORT.test(m.text())) page.errors.push(m.text());
  });
  page.on('dialog', (dialog) => { page.dialogs.push(dialog.message()); dialog.dismiss(); });
  await page.goto(`${server.url}${at}`);
  return page;
}

/** Signs in with a nickname and waits until connected. */
export async function signIn(page, nickname) {
  await page.fill('#nickname', nickname);
  await page.click('#signin-submit');
  await page.waitForSelector('#chat:not([hidden])');
  await page.waitForSelector('#conn[data-state="connected"]');
}

/** Opens (joining if needed) a room from the sidebar form. */
export async function joinRoom(page, room) {
  await page.fill('#join-input', room);
  await page.press('#join-input', 'Enter');
  await page.waitForSelector(`#conv-title:text-is("# ${room}")`);
}

/** Types a message and sends it with Enter (it shows at once, pending until acked). */
export async function say(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

/**
 * My message with `text` in the open conversation, once stored: by its key,
 * which the app changes when the ack arrives (`p:…` while pending), so a
 * locator made earlier would lose it; by key, not text, because an open
 * editor holds the text in a textarea.
 */
export async function ownMessage(page, text) {
  const stored = page.locator('#messages .msg.own:not([data-key^="p:"])', { hasText: text });
  await stored.waitFor();
  const key = await stored.getAttribute('data-key');
  return page.locator(`#messages [data-key="${key}"]`);
}

/** The texts of the chat messages (not notices) in the open conversation. */
export function messageTexts(page) {
  return page.$$eval('#messages .msg .text', (nodes) => nodes.map((n) => n.textContent));
}

/** Waits until the open conversation shows exactly `texts` as its last messages. */
export async function waitForTexts(page, texts, timeout = 15_000) {
  await page.waitForFunction(
    (want) => {
      const got = [...document.querySelectorAll('#messages .msg .text')].map((n) => n.textContent);
      return got.length >= want.length && want.every((t, i) => got[got.length - want.length + i] === t);
    },
    texts,
    { timeout },
  );
}

/** Waits until no message of the page waits for its ack. */
export function allSent(page) {
  return page.waitForSelector('#conn[data-unsent="0"]');
}

export async function screenshot(page, name) {
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`) });
}

/**
 * The nginx configuration of docs/OPERATIONS.md ("Behind nginx"), as
 * written there, with `listen` and the `proxy_pass` address changed.
 * `websockets: false` drops its two upgrade lines: a proxy that does not do
 * WebSockets (it answers the upgrade request with the server's refusal).
 */
export function documentedNginx(listen, backend, { websockets = true } = {}) {
  const doc = readFileSync(path.join(ROOT, 'docs/OPERATIONS.md'), 'utf8');
  const section = doc.slice(doc.indexOf('## Behind nginx'));
  const block = section.match(/```nginx\n([\s\S]*?)```/);
  if (!block) throw new Error('no nginx block in docs/OPERATIONS.md, "Behind nginx"');
  let conf = block[1]
    .replace(/listen 80;/, `listen ${listen};`)
    .replace(/proxy_pass http:\/\/127\.0\.0\.1:8080;/, `proxy_pass http://${backend};`);
  if (!conf.includes(`listen ${listen};`) || !conf.includes(backend)) throw new Error('the documented block changed shape');
  if (!websockets) conf = conf.split('\n').filter((l) => !/proxy_set_header (Upgrade|Connection)/.test(l)).join('\n');
  return conf;
}

/** Whether `url` answers (any status). */
function answers(url) {
  return new Promise((resolve) => {
    const req = http.get(url, (res) => { res.resume(); resolve(true); });
    req.on('error', () => resolve(false));
  });
}

/**
 * Starts a real nginx (Debian's package) in front of `server` with the
 * documented configuration, in the foreground as one process with its own
 * temporary prefix; `stop()` kills it and removes the prefix.
 */
export async function startNginx(server, options = {}) {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const nginx = await runNginx(
    () => documentedNginx(`127.0.0.1:${port}`, server.addr, options),
    () => answers(`${url}/healthz`),
  );
  return { url, addr: `127.0.0.1:${port}`, errorLog: nginx.errorLog, stop: nginx.stop };
}
