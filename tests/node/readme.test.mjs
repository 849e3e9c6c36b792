// The README's JavaScript examples, run as they are against the real
// binary: each must print what a reader expects when run alone. (Its shell
// and terminal examples run in crates/cli/tests/readme.rs.)
//
// Differences from a reader's run, and why:
// - `127.0.0.1:8080` becomes the address of a fresh server on a free port.
// - The client.js example imports `http://…/client.js`, which a page can do
//   and Node cannot (no imports over HTTP): it imports the same file from
//   web/client.js. A page has a global WebSocket; Node before 22 does not,
//   so that example gets the `ws` package's as the global (CLIENT.md: the
//   `WebSocket` option does the same).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';
import fs from 'node:fs';
import path from 'node:path';
import { startServer, user, request, next } from './helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const TIMEOUT_MS = 10_000;

/** The README's ```js blocks. */
function jsBlocks() {
  const blocks = [];
  let open = null;
  for (const line of fs.readFileSync(path.join(root, 'README.md'), 'utf8').split('\n')) {
    if (open === null && line.startsWith('```js')) open = [];
    else if (open !== null && line.startsWith('```')) { blocks.push(open.join('\n')); open = null; }
    else if (open !== null) open.push(line);
  }
  return blocks;
}

/**
 * Runs `source` as an ES module (from this directory, so that `ws` is
 * found) until every line of `expected` was printed, in order (then it is
 * stopped: the examples stay connected, as a chat does). `during` runs once
 * the line `after` was printed; `until`, a promise, is awaited before the
 * stop (what the example does after its last line).
 */
async function run(source, expected, { after, during, until } = {}) {
  const dir = fs.mkdtempSync(path.join(here, '.readme-'));
  const file = path.join(dir, 'example.mjs');
  fs.writeFileSync(file, source);
  const child = spawn(process.execPath, [file], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const printed = [];
  try {
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(
        `expected ${JSON.stringify(expected)}; printed ${JSON.stringify(printed)}\n${stderr}`)), TIMEOUT_MS);
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`exited (${code}) after printing ${JSON.stringify(printed)}\n${stderr}`));
      });
      let next = 0;
      createInterface({ input: child.stdout }).on('line', (line) => {
        printed.push(line);
        if (line === after && during) during().catch(reject);
        if (next < expected.length && line === expected[next]) next += 1;
        if (next === expected.length) { clearTimeout(timer); resolve(); }
      });
    });
    await until;
  } finally {
    child.removeAllListeners('exit');
    child.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return printed;
}

const blocks = jsBlocks();

test('the README has the JavaScript examples this test knows', () => {
  // A new example needs its expected output here.
  assert.equal(blocks.length, 2, 'README ```js blocks: add the new one to tests/node/readme.test.mjs');
  assert.match(blocks[0], /import \{ Client \} from 'http:\/\/127\.0\.0\.1:8080\/client\.js'/);
  assert.match(blocks[1], /new WebSocket\('ws:\/\/127\.0\.0\.1:8080\/ws\?user=alice'\)/);
});

test('the client.js example connects, joins, publishes and sends', async () => {
  const server = await startServer();
  try {
    const clientJs = pathToFileURL(path.join(root, 'web/client.js')).href;
    const source = "globalThis.WebSocket ??= (await import('ws')).default;\n" + blocks[0]
      .replace(`'http://127.0.0.1:8080/client.js'`, `'${clientJs}'`)
      .replaceAll('127.0.0.1:8080', server.addr);
    const bob = await user(server.addr, 'bob');
    await request(bob, { type: 'join', room: 'lobby' });
    // Bob sees Alice join, her message, and her direct one, in that order.
    const got = [];
    const bobSees = (async () => {
      while (!got.some((e) => e.type === 'direct')) got.push(await next(bob));
    })();
    bobSees.catch(() => {}); // awaited by run(); not unhandled meanwhile
    const printed = await run(source, [
      'connection: connecting',
      'connection: connected',
      'stored as #1',
    ], { until: bobSees });
    assert.ok(!printed.some((l) => l.includes('undefined')), printed.join('\n'));
    assert.deepEqual(got.map((e) => e.type), ['presence', 'message', 'direct']);
    assert.deepEqual([got[1].body, got[2].body], [{ text: 'hello' }, { text: 'psst' }]);
    bob.close();
  } finally {
    await server.stop();
  }
});

test('the raw WebSocket example prints when run alone, and shows directs', async () => {
  const server = await startServer();
  try {
    const source = blocks[1].replaceAll('127.0.0.1:8080', server.addr);
    let bob;
    await run(source, ['joined lobby: 1 online', 'stored as #1', 'bob (direct): psst'], {
      after: 'stored as #1',
      during: async () => {
        bob = await user(server.addr, 'bob');
        const ack = await request(bob, { type: 'send', to: 'alice', body: { text: 'psst' } });
        assert.equal(ack.type, 'ack');
      },
    });
    bob.close();
  } finally {
    await server.stop();
  }
});
