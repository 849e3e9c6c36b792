// Browser test helpers: Debian's Chromium driven by playwright-core, pages
// loaded over http from the real binary (Chromium refuses WebSockets from
// data: pages), and small waits on what the page shows.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ROOT } from '../node/client-helpers.mjs';

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

/** Launches Chromium (playwright gives it a fresh, temporary --user-data-dir). */
export function launch() {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS });
}

export const DESKTOP = { width: 1200, height: 760 };
export const PHONE = { width: 390, height: 780 };

/**
 * A fresh browser context (own storage, like another person's browser) with
 * one page on the server's `/`. Collects uncaught exceptions and console
 * errors in `page.errors`, and any `alert()` text in `page.dialogs` (an
 * injected script would call one).
 */
export async function openPage(browser, server, { locale = 'en-US', viewport = DESKTOP, phone = false, timezoneId = 'UTC' } = {}) {
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
    if (m.type() === 'error' && !/WebSocket connection to .* failed|net::ERR_/.test(m.text())) page.errors.push(m.text());
  });
  page.on('dialog', (dialog) => { page.dialogs.push(dialog.message()); dialog.dismiss(); });
  await page.goto(`${server.url}/`);
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
