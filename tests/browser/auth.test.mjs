// The chat app on a server with authentication on (--jwt-secret): signing
// in without a token asks for one; with a token the user is the token's.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { launch, openPage, say, waitForTexts, Server } from './lib.mjs';
import { BIN } from '../node/client-helpers.mjs';

const SECRET = 'browser-test-secret';
let browser;
let server;
before(async () => {
  server = await new Server(['--rate-limit', '0', '--jwt-secret', SECRET]).start();
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await server?.dispose();
});

test('sign-in needs a token when auth is on; the token decides who you are', async () => {
  const page = await openPage(browser, server);
  assert.equal(await page.getAttribute('#token-box', 'open'), null, 'the token field starts folded');
  await page.fill('#nickname', 'walter');
  await page.click('#signin-submit');
  await page.waitForSelector('#signin-error:text-is("This server needs an access token.")');
  assert.equal(await page.getAttribute('#token-box', 'open'), '');
  assert.ok(await page.isVisible('#token'));

  const token = execFileSync(BIN, ['token', '--user', 'wanda', '--secret', SECRET], { encoding: 'utf8' }).trim();
  await page.fill('#token', token);
  await page.click('#signin-submit');
  await page.waitForSelector('#conn[data-state="connected"]');
  assert.equal(await page.textContent('#me'), 'wanda');
  await say(page, 'signed in with a token');
  await waitForTexts(page, ['signed in with a token']);
  assert.equal(await page.locator('#messages .msg .from').last().textContent(), 'You');
  // The token is kept for this tab only, never in localStorage.
  const stored = await page.evaluate(() => ({ local: JSON.stringify(localStorage), session: sessionStorage.getItem('sb.token') }));
  assert.ok(!stored.local.includes(token));
  assert.equal(stored.session, token);
  assert.deepEqual(page.errors, []);
  await page.context().close();
});
