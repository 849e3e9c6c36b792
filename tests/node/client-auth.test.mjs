// client.js with authentication on (JWT, --jwt-secret): sign-in with a
// token, a refused token, the session renewed before the token expires,
// and an expired token ending the session.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import WebSocket from 'ws';
import { Client } from '../../web/client.js';
import { BIN, Server, waitFor, waitState } from './client-helpers.mjs';

const SECRET = 'client-test-secret';
let server;
before(async () => { server = await new Server(['--rate-limit', '0', '--jwt-secret', SECRET, '--jwt-leeway', '1ms']).start(); });
after(async () => { await server?.dispose(); });

/** A token from `switchboard token`. */
function mint(user, ttl = '1h', secret = SECRET) {
  return execFileSync(BIN, ['token', '--user', user, '--secret', secret, '--ttl', ttl], { encoding: 'utf8' }).trim();
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
  const uma = client({ token: () => { minted += 1; return mint('uma', '2s'); } });
  const states = [];
  uma.on('state', (s) => states.push(s.state));
  const first = await uma.connect();
  // Two renewals: the connection outlives two 2-second tokens.
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
