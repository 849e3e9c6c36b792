// The shipped deployment, run: nginx with deploy/nginx/switchboard.conf
// terminating TLS (a CA and a certificate made with openssl for the test)
// in front of the binary started with the ExecStart and Environment of
// deploy/switchboard.service. Only addresses, ports and paths are replaced,
// and each replacement must find what it replaces, so a reshaped file fails
// here instead of being tested as something else. The unit file itself is
// checked with systemd-analyze; systemd cannot run it here (no systemd as
// PID 1 in a CI container), so its sandbox is verified, not exercised.
//
// Needs nginx, openssl and systemd-analyze (scripts/test-deploy installs them).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createInterface } from 'node:readline';
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import path from 'node:path';
import WebSocket from 'ws';
import { ROOT, BIN, TIMEOUT_MS } from './client-helpers.mjs';
import { connect, expectType, next, request } from './helpers.mjs';
import { freePort, runNginx } from './nginx.mjs';

const UNIT = readFileSync(path.join(ROOT, 'deploy/switchboard.service'), 'utf8');
const SITE = readFileSync(path.join(ROOT, 'deploy/nginx/switchboard.conf'), 'utf8');
const DOMAIN = 'chat.example.com';
const ORIGIN = `https://${DOMAIN}`;

/** `text` with every `from` replaced by `to`; `from` must occur. */
function replaced(text, from, to) {
  assert.ok(text.includes(from), `expected ${JSON.stringify(from)} in the shipped file`);
  return text.split(from).join(to);
}

/** The unit's [Service] settings: name → values, continuation lines joined. */
function service(unit) {
  const body = unit.replace(/\\\n/g, ' ').split(/^\[/m).find((s) => s.startsWith('Service]'));
  const settings = new Map();
  for (const line of body.split('\n').slice(1)) {
    const m = line.match(/^([A-Za-z]+)=(.*)$/);
    if (!m) continue;
    if (!settings.has(m[1])) settings.set(m[1], []);
    settings.get(m[1]).push(m[2].trim());
  }
  return settings;
}

const SERVICE = service(UNIT);
const setting = (name) => {
  const values = SERVICE.get(name);
  assert.ok(values?.length, `${name}= in the unit`);
  return values[values.length - 1];
};

/** ExecStart's arguments after the binary (no quoting or specifiers in it). */
function execArgs() {
  const exec = setting('ExecStart');
  assert.doesNotMatch(exec, /["'$%]/, 'ExecStart is parsed here by splitting on spaces');
  const [bin, ...args] = exec.split(/\s+/);
  assert.equal(bin, '/usr/local/bin/switchboard');
  return args;
}

/** The value of `--flag` in ExecStart, or undefined. */
function execFlag(flag) {
  const args = execArgs();
  const i = args.indexOf(flag);
  return i < 0 ? undefined : args[i + 1];
}

/** A `serve --help` default, e.g. `[default: 25s]` of `--heartbeat`. */
function helpDefault(flag) {
  const help = execFileSync(BIN, ['serve', '--help'], { encoding: 'utf8' });
  const m = help.match(new RegExp(`${flag} <[A-Z_]+>\\n[^\\n]*\\[default: ([^\\]]+)\\]`));
  assert.ok(m, `a default for ${flag} in serve --help`);
  return m[1];
}

/** Seconds in a duration as systemd, nginx and the server write them (`5s`, `2m`, `30`). */
function seconds(value) {
  const m = String(value).match(/^(\d+)\s*(ms|s|m|min|h)?$/);
  assert.ok(m, `a duration: ${value}`);
  const unit = { ms: 0.001, s: 1, m: 60, min: 60, h: 3600 }[m[2] || 's'];
  return Number(m[1]) * unit;
}

/** The value of an nginx directive in the site file (its first occurrence). */
function directive(name) {
  const m = SITE.match(new RegExp(`^\\s*${name}\\s+([^;]+);`, 'm'));
  assert.ok(m, `${name} in the nginx configuration`);
  return m[1].trim();
}

// --- The running deployment -------------------------------------------------

let dir; // certificates, data directory, ACME webroot
let server; // { child, port, logs, waitForLog }
let nginx;
let httpPort;
let tlsPort;
let ca;

/** A test CA and a certificate for 127.0.0.1 it signed, with openssl. */
function makeCertificates() {
  const openssl = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  openssl('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2',
    '-subj', '/CN=Switchboard deploy test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign');
  openssl('req', ...ec, '-keyout', 'privkey.pem', '-out', 'server.csr', '-subj', `/CN=${DOMAIN}`);
  writeFileSync(path.join(dir, 'server.ext'),
    `subjectAltName=DNS:${DOMAIN},IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`);
  openssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
    '-days', '2', '-extfile', 'server.ext', '-out', 'fullchain.pem');
  return readFileSync(path.join(dir, 'ca.pem'));
}

/**
 * The binary with the unit's ExecStart and Environment; the listen port
 * and data directory replaced, and `extra` flags appended. Its log
 * (stderr) is kept for `waitForLog`.
 */
async function startServer(extra) {
  let args = execArgs();
  args = args.map((a) => (a === '127.0.0.1:8080' ? '127.0.0.1:0' : a));
  args = args.map((a) => (a === '/var/lib/switchboard' ? path.join(dir, 'data') : a));
  assert.ok(args.includes('127.0.0.1:0') && args.includes(path.join(dir, 'data')), 'listen address and data directory replaced');
  const env = { ...process.env };
  for (const assignment of SERVICE.get('Environment') || []) {
    const [key, ...value] = assignment.split('=');
    env[key] = value.join('=');
  }
  // Per-connection detail, the refusals with their client address included.
  env.RUST_LOG = 'info,switchboard_server::gateway=debug';
  const child = spawn(BIN, [...args, ...extra], { stdio: ['ignore', 'pipe', 'pipe'], env });
  const logs = [];
  const waiters = new Set();
  createInterface({ input: child.stderr }).on('line', (line) => {
    logs.push(line);
    if (process.env.DEPLOY_TEST_LOG) process.stderr.write(`${line}\n`);
    for (const w of waiters) w();
  });
  const [line] = await Promise.race([
    once(createInterface({ input: child.stdout }), 'line'),
    once(child, 'exit').then(([code]) => { throw new Error(`server exited (${code}):\n${logs.join('\n')}`); }),
  ]);
  const port = Number(line.match(/^switchboard listening on http:\/\/127\.0\.0\.1:(\d+)$/)?.[1]);
  assert.ok(port, line);
  return {
    child,
    port,
    logs,
    /** The first log line from index `from` on matching `re` (waits for it). */
    waitForLog(re, from = 0) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const hit = logs.slice(from).find((l) => re.test(l));
          if (!hit) return false;
          waiters.delete(check);
          clearTimeout(timer);
          resolve(hit);
          return true;
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`no log line matching ${re}:\n${logs.slice(from).join('\n')}`));
        }, TIMEOUT_MS);
        waiters.add(check);
        check();
      });
    },
  };
}

/** The site file as nginx runs it here: loopback ports, the test's paths. */
function siteForTest() {
  let site = SITE;
  site = replaced(site, 'server 127.0.0.1:8080;', `server 127.0.0.1:${server.port};`);
  site = replaced(site, 'listen 80;', `listen 127.0.0.1:${httpPort};`);
  site = replaced(site, 'listen 443 ssl http2;', `listen 127.0.0.1:${tlsPort} ssl http2;`);
  // The IPv6 twins listen on every address of the machine, which may have
  // no IPv6 at all; the IPv4 lines above carry the same settings.
  site = replaced(site, 'listen [::]:80;', '');
  site = replaced(site, 'listen [::]:443 ssl http2;', '');
  site = replaced(site, `/etc/letsencrypt/live/${DOMAIN}/`, `${dir}/`);
  site = replaced(site, 'root /var/www/letsencrypt;', `root ${dir}/webroot;`);
  site = replaced(site, 'access_log /var/log/nginx/switchboard.access.log', `access_log ${dir}/access.log`);
  return site;
}

/** GET over TLS to nginx with the test CA; resolves with {status, headers, body}. */
function httpsGet(urlPath, options = {}) {
  return new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port: tlsPort, path: urlPath, ca, agent: false, ...options }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }));
    });
    req.on('error', reject);
  });
}

/** Plain HTTP GET; resolves with {status, headers, body}. */
function httpGet(port, urlPath, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, headers, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }));
    });
    req.on('error', reject);
  });
}

const wss = (urlPath) => `wss://127.0.0.1:${tlsPort}${urlPath}`;

/** A WebSocket through nginx from the loopback address `from`. */
function wsThroughNginx(urlPath, from, headers = {}) {
  return connect(wss(urlPath), { ca, localAddress: from, headers: { Origin: ORIGIN, ...headers } });
}

/** Resolves with the HTTP status a WebSocket handshake was refused with (fails if it opens). */
function refusedStatus(url, options) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, options);
    ws.once('unexpected-response', (req, res) => { res.resume(); req.destroy(); resolve(res.statusCode); });
    ws.once('open', () => { ws.terminate(); reject(new Error(`${url} opened`)); });
    ws.once('error', reject);
  });
}

/**
 * An HTTP/2 connection to nginx from `from`, with an SSE stream: `events()`
 * yields parsed events ({event, id, data}), `post(lines)` sends commands.
 */
async function sseThroughNginx(query, from) {
  const session = http2.connect(`https://127.0.0.1:${tlsPort}`, { ca, localAddress: from });
  session.on('error', () => {});
  await once(session, 'connect');
  assert.equal(session.alpnProtocol, 'h2', 'nginx speaks HTTP/2 over TLS');
  const stream = session.request({ ':path': `/sse?${query}`, origin: ORIGIN, accept: 'text/event-stream' });
  const [headers] = await once(stream, 'response');
  const status = headers[':status'];
  if (status !== 200) {
    stream.close();
    session.close();
    return { status };
  }
  stream.setEncoding('utf8');
  const queue = [];
  const waiters = [];
  let buffer = '';
  stream.on('data', (chunk) => {
    buffer += chunk;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = { event: 'message', data: '' };
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue; // a comment (`: ping`)
        const i = line.indexOf(':');
        const field = line.slice(0, i);
        const value = line.slice(i + 1).replace(/^ /, '');
        if (field === 'data') event.data += value; else event[field] = value;
      }
      if (!event.data) continue;
      const waiter = waiters.shift();
      if (waiter) waiter(event); else queue.push(event);
    }
  });
  const nextEvent = () => (queue.length ? Promise.resolve(queue.shift()) : new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('timed out waiting for an SSE event')), TIMEOUT_MS);
    waiters.push((e) => { clearTimeout(timer); resolve(e); });
  }));
  const first = await nextEvent();
  assert.equal(first.event, 'session');
  const id = JSON.parse(first.data).session;
  return {
    status,
    headers,
    /** The next protocol event (JSON). */
    async next() { return JSON.parse((await nextEvent()).data); },
    /** POSTs commands over the same HTTP/2 connection; resolves with the status. */
    async post(...commands) {
      const req = session.request({ ':method': 'POST', ':path': `/sse/${id}`, origin: ORIGIN, 'content-type': 'text/plain' });
      req.end(commands.map((c) => JSON.stringify(c)).join('\n'));
      const [h] = await once(req, 'response');
      req.resume();
      return h[':status'];
    },
    close() { stream.close(); session.close(); },
  };
}

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'switchboard-deploy-'));
  mkdirSync(path.join(dir, 'webroot/.well-known/acme-challenge'), { recursive: true });
  ca = makeCertificates();
  // One connection per client address, so the tests below see which
  // address each connection was counted under.
  server = await startServer(['--max-connections-per-ip', '1']);
  [httpPort, tlsPort] = [await freePort(), await freePort()];
  nginx = await runNginx(siteForTest, () => httpsGet('/healthz').then(() => true, () => false));
});

after(async () => {
  await nginx?.stop();
  if (server && server.child.exitCode === null) {
    server.child.kill('SIGKILL');
    await once(server.child, 'exit');
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

// --- The files -----------------------------------------------------------------

test('the unit passes systemd-analyze verify, and its sandbox rates as exposure "OK" or better', () => {
  const unitDir = path.join(dir, 'unit');
  mkdirSync(unitDir, { recursive: true });
  const file = path.join(unitDir, 'switchboard.service');
  // verify checks that ExecStart's binary exists: the one under test.
  writeFileSync(file, replaced(UNIT, 'ExecStart=/usr/local/bin/switchboard ', `ExecStart=${BIN} `));
  const verify = spawnSync('systemd-analyze', ['verify', '--man=no', file], { encoding: 'utf8' });
  assert.equal(verify.error, undefined, 'systemd-analyze runs (scripts/test-deploy installs systemd)');
  // It exits 0 on unknown settings too, with a warning: any output fails.
  assert.equal(verify.status, 0, verify.stderr);
  assert.equal(`${verify.stdout}${verify.stderr}`, '');
  // systemd's own rating of the sandbox options, shown from 0 (best) to
  // 10; 1.5 when written, "OK". --threshold counts in tenths: above 2.0
  // fails, as when a sandbox option is dropped.
  const security = spawnSync('systemd-analyze', ['security', '--offline=yes', '--threshold=20', file], { encoding: 'utf8' });
  assert.equal(security.status, 0, `${security.stdout}${security.stderr}`);
});

test('the unit, the nginx configuration and the server agree', () => {
  // nginx proxies to where the service listens, and connects from the
  // loopback address the service trusts as its proxy.
  assert.equal(directive('server'), execFlag('--listen'));
  assert.match(execFlag('--listen'), /^127\.0\.0\.1:/);
  assert.ok(execFlag('--trusted-proxies').split(',').includes('127.0.0.1'));
  // The only origin allowed is the site nginx serves.
  assert.equal(execFlag('--allowed-origins'), `https://${directive('server_name')}`);
  // The data directory is the one systemd creates and owns for the user.
  assert.equal(execFlag('--data-dir'), `/var/lib/${setting('StateDirectory')}`);
  // systemd waits for the graceful shutdown before it kills.
  const shutdown = seconds(execFlag('--shutdown-timeout') ?? helpDefault('--shutdown-timeout'));
  assert.ok(seconds(setting('TimeoutStopSec')) > shutdown, 'TimeoutStopSec above --shutdown-timeout');
  assert.equal(setting('KillSignal'), 'SIGTERM');
  // nginx keeps a quiet connection longer than the server's liveness rule
  // (two heartbeats): only dead ones are cut, by the server.
  const heartbeat = seconds(execFlag('--heartbeat') ?? helpDefault('--heartbeat'));
  assert.ok(seconds(directive('proxy_read_timeout')) > 2 * heartbeat, 'proxy_read_timeout above two heartbeats');
  assert.ok(seconds(directive('proxy_send_timeout')) > 2 * heartbeat, 'proxy_send_timeout above two heartbeats');
  // A descriptor for each connection the server may hold.
  const maxConnections = Number(execFlag('--max-connections') ?? helpDefault('--max-connections'));
  assert.ok(Number(setting('LimitNOFILE')) > maxConnections, 'LimitNOFILE above --max-connections');
});

// --- Through nginx -------------------------------------------------------------

test('plain HTTP: certbot\'s challenge files are served, everything else is redirected to HTTPS', async () => {
  writeFileSync(path.join(dir, 'webroot/.well-known/acme-challenge/token-1'), 'token-1.thumbprint');
  const challenge = await httpGet(httpPort, '/.well-known/acme-challenge/token-1', { Host: DOMAIN });
  assert.equal(challenge.status, 200);
  assert.equal(challenge.body, 'token-1.thumbprint');
  const page = await httpGet(httpPort, '/ws?user=ann', { Host: DOMAIN });
  assert.equal(page.status, 301);
  assert.equal(page.headers.location, `https://${DOMAIN}/ws?user=ann`);
});

test('over TLS: the chat app and /healthz pass; /metrics only on the host', async () => {
  const health = await httpsGet('/healthz');
  assert.equal(health.status, 200);
  assert.equal(health.body, 'ok\n');
  const app = await httpsGet('/');
  assert.equal(app.status, 200);
  assert.match(app.headers['content-type'], /text\/html/);
  assert.equal((await httpsGet('/metrics')).status, 403);
  const scrape = await httpGet(server.port, '/metrics');
  assert.equal(scrape.status, 200);
  assert.match(scrape.body, /switchboard_connections /);
});

test('wss:// and the SSE stream over HTTP/2 through nginx: a WebSocket user and an SSE user chat both ways', async () => {
  const ann = await wsThroughNginx('/ws?user=ann', '127.0.0.10');
  await expectType(ann, 'welcome');
  assert.equal((await request(ann, { type: 'join', room: 'lobby' })).type, 'joined');

  const ben = await sseThroughNginx('user=ben', '127.0.0.11');
  assert.equal(ben.status, 200);
  assert.equal(ben.headers['content-type'], 'text/event-stream');
  assert.equal((await ben.next()).type, 'welcome');
  assert.equal(await ben.post({ type: 'join', room: 'lobby', id: 'j' }), 204);
  assert.equal((await ben.next()).type, 'joined');
  assert.deepEqual(await next(ann), { type: 'presence', room: 'lobby', event: 'join', user: 'ben', online: 2 });

  // Each event reaches the stream while it stays open (nginx 1.22 passes
  // small chunks on at once even with proxy_buffering on, so this does not
  // tell the configuration's `proxy_buffering off` from its absence).
  const ack = await request(ann, { type: 'publish', room: 'lobby', body: { text: 'over wss 你好' } });
  assert.equal(ack.type, 'ack');
  const got = await ben.next();
  assert.equal(got.type, 'message');
  assert.deepEqual(got.body, { text: 'over wss 你好' });
  assert.equal(got.from, 'ann');
  assert.equal(await ben.post({ type: 'publish', room: 'lobby', body: { text: 'over SSE' }, id: 'p' }), 204);
  assert.equal((await ben.next()).type, 'ack');
  const back = await next(ann);
  assert.equal(back.type, 'message');
  assert.deepEqual(back.body, { text: 'over SSE' });
  assert.equal(back.from, 'ben');

  // The unit's --allowed-origins, through nginx: another site's page is refused.
  assert.equal(await refusedStatus(wss('/ws?user=eve'), { ca, localAddress: '127.0.0.12', headers: { Origin: 'https://evil.example' } }), 403);

  ann.close();
  await once(ann, 'close');
  ben.close();

  // The access log has the paths, never the query strings (tokens go there).
  // nginx writes a line when its request ends, so wait for the stream's.
  const access = await logged(path.join(dir, 'access.log'), /"GET \/sse HTTP\/2\.0" 200/);
  assert.match(access, /"GET \/ws HTTP\/1\.1" 403/);
  assert.ok(!/user=|token=/.test(access), `query strings logged:\n${access}`);
});

/** The file's text once it matches `re` (polled: nginx writes it on its own time). */
async function logged(file, re) {
  const deadline = Date.now() + 10_000;
  for (;;) {
    let text = '';
    try { text = readFileSync(file, 'utf8'); } catch { /* not written yet */ }
    if (re.test(text)) return text;
    if (Date.now() > deadline) throw new Error(`${file} never matched ${re}:\n${text}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

test('behind nginx, the per-IP limits count the client address from X-Forwarded-For, and the log names it', async () => {
  // --max-connections-per-ip 1. Every connection reaches the server from
  // nginx (127.0.0.1, trusted); each WebSocket counts under its client.
  const a = await wsThroughNginx('/ws?user=a', '127.0.0.2');
  await expectType(a, 'welcome');
  const b = await wsThroughNginx('/ws?user=b', '127.0.0.3');
  await expectType(b, 'welcome');

  let mark = server.logs.length;
  assert.equal(await refusedStatus(wss('/ws?user=a2'), { ca, localAddress: '127.0.0.2', headers: { Origin: ORIGIN } }), 429);
  const refusal = await server.waitForLog(/WebSocket refused/, mark);
  assert.match(refusal, / client=127\.0\.0\.2 /);
  assert.match(refusal, / peer=127\.0\.0\.1:\d+ /, 'from nginx');
  assert.match(refusal, /too many connections from this address/);

  // A client that sends X-Forwarded-For itself does not choose its
  // address: nginx appends the one it sees, and the server takes the
  // right-most address that is not a trusted proxy.
  mark = server.logs.length;
  const forged = { ca, localAddress: '127.0.0.2', headers: { Origin: ORIGIN, 'X-Forwarded-For': '198.51.100.7' } };
  assert.equal(await refusedStatus(wss('/ws?user=a3'), forged), 429);
  assert.match(await server.waitForLog(/WebSocket refused/, mark), / client=127\.0\.0\.2 /);

  // SSE sessions count the same way: 127.0.0.3 holds its one connection.
  mark = server.logs.length;
  assert.equal((await sseThroughNginx('user=b2', '127.0.0.3')).status, 429);
  assert.match(await server.waitForLog(/SSE session refused/, mark), / client=127\.0\.0\.3 /);

  // The count goes with the WebSocket: closed, the address may connect again.
  a.close();
  await once(a, 'close');
  const again = await wsThroughNginx('/ws?user=a4', '127.0.0.2');
  await expectType(again, 'welcome');

  assert.ok(!server.logs.some((l) => l.includes('198.51.100.7')), 'the forged address is nowhere in the log');
  for (const ws of [b, again]) { ws.close(); await once(ws, 'close'); }
});

test('straight to the server, a peer that is not a trusted proxy cannot choose its address with X-Forwarded-For', async () => {
  const direct = (user) => `ws://127.0.0.1:${server.port}/ws?user=${user}`;
  const d1 = await connect(direct('d1'), { localAddress: '127.0.0.4' });
  await expectType(d1, 'welcome');

  // Counted under its real address at accept, whatever it claims.
  const mark = server.logs.length;
  const forged = { localAddress: '127.0.0.4', headers: { 'X-Forwarded-For': '127.0.0.5' } };
  assert.equal(await refusedStatus(direct('d2'), forged), 429);
  const refusal = await server.waitForLog(/connection refused at accept/, mark);
  assert.match(refusal, / client=127\.0\.0\.4 /);

  // Nor can it put itself under someone else's address: claiming to be
  // 127.0.0.4 (full) from 127.0.0.5 changes nothing.
  const d3 = await connect(direct('d3'), { localAddress: '127.0.0.5', headers: { 'X-Forwarded-For': '127.0.0.4' } });
  await expectType(d3, 'welcome');

  for (const ws of [d1, d3]) { ws.close(); await once(ws, 'close'); }
});
