// client.js with authentication on (JWT, --jwt-secret): sign-in with a
// token, a refused token, the session renewed before the token expires,
// and an expired token ending the session; the same over the HTTP
// transport (SSE + POST: the token in the stream's query and in
// `Authorization: Bearer` on every POST).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import WebSocket from 'ws';
import { EventSource } from 'eventsource';
import { Client } from '../../web/client.js';
import { BIN, Server, waitFor, waitState } from './client-helpers.mjs';

const SECRET = 'client-test-secret';
let server;
before(async () => { server = await new Server(['--rate-limit', '0', '--jwt-secret', SECRET, '--jwt-leeway', '1ms']).start(); });
after(async () => { await server?.dispose(); });

/** A token from `switchboard token`. */
const tokenArgs = (user, ttl, secret) => ['token', '--user', user, '--secret', secret, '--ttl', ttl];
function mint(user, ttl = '1h', secret = SECRET) {
  return execFileSync(BIN, tokenArgs(user, ttl, secret), { encoding: 'utf8' }).trim();
}

/**
 * The same, for a token function: without blocking the event loop, which
 * a synchronous spawn would hold for as long as the machine is busy, eating
 * into the margin the client keeps before a short token's expiry.
 */
const execFileAsync = promisify(execFile);
async function mintLater(user, ttl) {
  const { stdout } = await execFileAsync(BIN, tokenArgs(user, ttl, SECRET), { encoding: 'utf8' });
  return stdout.trim();
}

const clients = [];
function client(options) {
  const c = new Client({ url: `ws://${server.addr}/ws`, WebSocket, reconnect: { min: 20, max: 100 }, ...options });
  clients.push(c);
  return c;
}
after(() => { for (const c of clients) c.close(); });

test('a token names the user; a bad token is refused for good', async () => {
  const ok = client({ token: mint('tina'), user: 'someone-else' });
  const welcome = await ok.connect();
  assert.equal(welcome.user, 'tina');
  await ok.join('lobby');

  const states = [];
  const bad = client({ token: mint('tina', '1h', 'wrong-secret') });
  bad.on('state', (s) => states.push(s.state));
  await assert.rejects(bad.connect(), { code: 'unauthorized' });
  assert.deepEqual(states, ['connecting', 'offline']);
  const none = client({ user: 'tina' });
  await assert.rejects(none.connect(), { code: 'unauthorized' });
});

test('a token function: the session is renewed before the token expires, without reconnecting', async () => {
  let minted = 0;
  // 3 s: `exp` counts whole seconds, so 2-3 s are left; the client renews
  // with a fifth of that to spare.
  const uma = client({ token: () => { minted += 1; return mintLater('uma', '3s'); } });
  const states = [];
  uma.on('state', (s) => states.push(s.state));
  const first = await uma.connect();
  // Two renewals: the connection outlives two tokens.
  await waitFor(uma, 'token');
  const renewed = await waitFor(uma, 'token');
  assert.ok(renewed.expires > Date.now(), 'the new token is valid');
  assert.equal(uma.session, first.session, 'same connection');
  assert.deepEqual(states, ['connecting', 'connected']);
  assert.equal(minted, 3);
  assert.ok((await uma.ping()) >= 0);
});

test('a fixed token that expires ends the session: offline, `unauthorized`', async () => {
  const vic = client({ token: mint('vic', '1s') });
  await vic.connect();
  const s = await waitState(vic, 'offline', 5_000);
  assert.equal(s.error.code, 'unauthorized');
  assert.match(s.error.message, /expired/);
  await assert.rejects(vic.publish('lobby', 'x'), { code: 'unauthorized' });
});

// Over the HTTP transport (SSE + POST).
const sse = (options) => client({ transports: ['sse'], EventSource, ...options });

test('over SSE: a token names the user; a bad token, or none, is refused for good', async () => {
  const ok = sse({ token: mint('wes'), user: 'someone-else' });
  assert.equal((await ok.connect()).user, 'wes');
  assert.equal(ok.transport, 'sse');
  await ok.join('lobby');
  assert.equal((await ok.publish('lobby', { text: 'via POST with Bearer' })).type, 'ack');

  const states = [];
  const bad = sse({ token: mint('wes', '1h', 'wrong-secret') });
  bad.on('state', (s) => states.push(s.state));
  await assert.rejects(bad.connect(), { code: 'unauthorized' });
  assert.deepEqual(states, ['connecting', 'offline']);
  // A nickname without a token: the hello POST is refused (401).
  await assert.rejects(sse({ user: 'wes' }).connect(), { code: 'unauthorized' });
});

test('over SSE: a token function renews the session before the token expires, without reconnecting', async () => {
  let minted = 0;
  const xia = sse({ token: () => { minted += 1; return mintLater('xia', '3s'); } });
  const states = [];
  xia.on('state', (s) => states.push(s.state));
  const first = await xia.connect();
  await waitFor(xia, 'token');
  await waitFor(xia, 'token');
  assert.deepEqual(states, ['connecting', 'connected']);
  assert.equal(minted, 3);
  // The POSTs carry the renewed token (the first one has expired by now).
  assert.ok((await xia.ping()) >= 0);
  assert.equal(xia.session, first.session, 'same session');
});

test('over SSE: a fixed token that expires ends the session: offline, `unauthorized`', async () => {
  const yan = sse({ token: mint('yan', '1s') });
  await yan.connect();
  const s = await waitState(yan, 'offline', 5_000);
  assert.equal(s.error.code, 'unauthorized');
  assert.match(s.error.message, /expired/);
});
