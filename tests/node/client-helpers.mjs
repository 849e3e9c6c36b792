// Helpers for the client.js tests (tests/node/client*.test.mjs) and the
// browser tests: start/restart the real binary on a fixed port, a TCP proxy
// that can cut or silently blackhole connections, and event waiting.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import net from 'node:net';
import http from 'node:http';
import path from 'node:path';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const BIN = process.env.SWITCHBOARD_BIN || path.join(ROOT, 'target/debug/switchboard');
export const TIMEOUT_MS = 10_000;

// Servers still running when this process exits (a failed test skipped its
// dispose, and --test-force-exit ended the file) go with it.
const running = new Set();
process.on('exit', () => { for (const child of running) child.kill('SIGKILL'); });

/**
 * A switchboard process. `start()` binds port 0 the first time and the same
 * port on every restart. Runs in its own temporary working directory, so a
 * store's default `./switchboard-data/` survives restarts of this server and
 * nothing else.
 */
export class Server {
  constructor(args = []) {
    this.args = args;
    this.port = 0;
    this.child = null;
    this.cwd = mkdtempSync(path.join(tmpdir(), 'switchboard-test-'));
  }

  get addr() { return `127.0.0.1:${this.port}`; }
  get url() { return `http://${this.addr}`; }

  async start() {
    const child = spawn(BIN, ['serve', '--listen', `127.0.0.1:${this.port}`, ...this.args], {
      cwd: this.cwd,
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
    });
    this.child = child;
    running.add(child);
    child.once('exit', () => running.delete(child));
    const line = await new Promise((resolve, reject) => {
      const lines = createInterface({ input: child.stdout });
      const onExit = (code) => reject(new Error(`server exited early (${code})`));
      child.once('error', reject);
      child.once('exit', onExit);
      lines.once('line', (l) => { child.off('exit', onExit); resolve(l); });
    });
    const addr = line.split('http://')[1];
    if (!addr) throw new Error(`unexpected first line: ${line}`);
    this.port = Number(addr.split(':').pop());
    return this;
  }

  /** kill -9: no close frames, no flush. */
  kill() { return this.#stop('SIGKILL'); }

  /** SIGTERM: graceful shutdown (close 1001). */
  terminate() { return this.#stop('SIGTERM'); }

  #stop(signal) {
    const child = this.child;
    this.child = null;
    if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
    return new Promise((done) => { child.once('exit', done); child.kill(signal); });
  }

  async dispose() {
    await this.kill();
    rmSync(this.cwd, { recursive: true, force: true });
  }
}

/** Starts a server (fresh data directory) and returns it. */
export async function startServer(args = []) {
  return new Server(args).start();
}

/**
 * A TCP proxy in front of a server. Modes for new connections: pass or
 * refuse; for open ones: cut (destroy), blackhole (keep open, forward
 * nothing, like a dead network path) or muteDown (forward only
 * client → server: the server acts, the client hears nothing).
 */
export class Proxy {
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.refusing = false;
    this.conns = new Set();
    this.accepted = 0;
    this.server = net.createServer((client) => this.#accept(client));
  }

  listen() {
    return new Promise((resolve) => this.server.listen(0, '127.0.0.1', () => {
      this.port = this.server.address().port;
      resolve(this);
    }));
  }

  get addr() { return `127.0.0.1:${this.port}`; }

  #accept(client) {
    this.accepted += 1;
    if (this.refusing) { client.destroy(); return; }
    const upstream = net.connect(this.targetPort, '127.0.0.1');
    const conn = { client, upstream, up: true, down: true };
    this.conns.add(conn);
    client.on('data', (d) => { if (conn.up) upstream.write(d); });
    upstream.on('data', (d) => { if (conn.down) client.write(d); });
    const end = () => { this.conns.delete(conn); client.destroy(); upstream.destroy(); };
    client.on('close', end);
    upstream.on('close', end);
    client.on('error', end);
    upstream.on('error', end);
  }

  /** New connections are closed at once (until `pass()`). */
  refuse() { this.refusing = true; }
  pass() { this.refusing = false; }

  /** Destroys every open connection (both ends see the TCP close). */
  cut() { for (const c of [...this.conns]) { c.client.destroy(); c.upstream.destroy(); } }

  /** Open connections stay open but carry nothing either way. */
  blackhole() { for (const c of this.conns) { c.up = false; c.down = false; } }

  /** Open connections carry client → server only. */
  muteDown() { for (const c of this.conns) c.down = false; }

  close() {
    this.cut();
    return new Promise((resolve) => this.server.close(resolve));
  }
}

/**
 * An HTTP proxy in front of a server, for the HTTP transport (SSE + POST):
 * WebSocket upgrades are refused with 403 (`upgrades = 'refuse'`, like a
 * proxy that does not do WebSockets) or passed (`'pass'`). Event streams
 * (`GET /sse`) can be cut, muted (the server's events are dropped, POSTs
 * still pass) or reopened without their `Last-Event-ID` (the server then
 * opens a new session); every connection can be cut and new ones refused.
 */
export class HttpProxy {
  constructor(targetPort, { upgrades = 'refuse' } = {}) {
    this.targetPort = targetPort;
    this.upgrades = upgrades;
    this.refusing = false;
    this.muted = false;
    this.stripLastEventId = false;
    this.streams = new Set();
    this.sockets = new Set();
    this.upgradesRefused = 0;
    this.server = http.createServer((req, res) => this.#request(req, res));
    this.server.on('upgrade', (req, socket, head) => this.#upgrade(req, socket, head));
    this.server.on('connection', (socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
    });
  }

  listen() {
    return new Promise((resolve) => this.server.listen(0, '127.0.0.1', () => {
      this.port = this.server.address().port;
      resolve(this);
    }));
  }

  get addr() { return `127.0.0.1:${this.port}`; }

  #request(req, res) {
    if (this.refusing) { req.socket.destroy(); return; }
    const headers = { ...req.headers };
    if (this.stripLastEventId) delete headers['last-event-id'];
    const stream = req.method === 'GET' && req.url.startsWith('/sse');
    const up = http.request({
      host: '127.0.0.1', port: this.targetPort, method: req.method, path: req.url, headers, agent: false,
    }, (upRes) => {
      res.writeHead(upRes.statusCode, upRes.headers);
      const entry = { req, upRes };
      if (stream) this.streams.add(entry);
      upRes.on('data', (d) => { if (!(stream && this.muted)) res.write(d); });
      upRes.on('end', () => res.end());
      upRes.on('close', () => this.streams.delete(entry));
    });
    up.on('error', () => res.destroy());
    res.on('close', () => up.destroy());
    req.pipe(up);
  }

  #upgrade(req, socket, head) {
    if (this.refusing) { socket.destroy(); return; }
    if (this.upgrades !== 'pass') {
      this.upgradesRefused += 1;
      socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
      return;
    }
    const up = net.connect(this.targetPort, '127.0.0.1', () => {
      let raw = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) raw += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      up.write(`${raw}\r\n`);
      if (head && head.length) up.write(head);
      socket.pipe(up).pipe(socket);
    });
    const end = () => { socket.destroy(); up.destroy(); };
    up.on('error', end);
    socket.on('error', end);
    up.on('close', end);
    socket.on('close', end);
  }

  /** Ends every open event stream (the client's EventSource sees it break). */
  cutStreams() { for (const s of [...this.streams]) { s.req.socket.destroy(); s.upRes.destroy(); } }

  /** Destroys every connection, streams, POSTs and WebSockets alike. */
  cut() { for (const s of [...this.sockets]) s.destroy(); }

  refuse() { this.refusing = true; }
  pass() { this.refusing = false; }

  close() {
    this.cut();
    return new Promise((resolve) => this.server.close(resolve));
  }
}

/** Resolves once `predicate()` holds (checked every 20 ms); rejects after `timeout`, naming `what`. */
export function waitUntil(predicate, what, timeout = TIMEOUT_MS) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const check = setInterval(() => {
      if (predicate()) {
        clearInterval(check);
        resolve();
      } else if (Date.now() - started > timeout) {
        clearInterval(check);
        reject(new Error(`timed out waiting until ${what}`));
      }
    }, 20);
  });
}

/** Resolves with the first `type` event of `client` that satisfies `predicate`. */
export function waitFor(client, type, predicate = () => true, timeout = TIMEOUT_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { off(); reject(new Error(`timed out waiting for ${type}`)); }, timeout);
    const off = client.on(type, (value) => {
      if (!predicate(value)) return;
      clearTimeout(timer);
      off();
      resolve(value);
    });
  });
}

/** Resolves once client.state is `state` (at once if it already is). */
export function waitState(client, state, timeout = TIMEOUT_MS) {
  if (client.state === state) return Promise.resolve({ state });
  return waitFor(client, 'state', (s) => s.state === state, timeout);
}

/** Records a room's messages; `until(n)` resolves once n have arrived. */
export function collector() {
  const items = [];
  let waiters = [];
  const fn = (m) => {
    items.push(m);
    waiters = waiters.filter((w) => (items.length >= w.n ? (w.resolve(), false) : true));
  };
  fn.items = items;
  fn.until = (n, timeout = TIMEOUT_MS) => {
    if (items.length >= n) return Promise.resolve(items);
    return new Promise((resolve, reject) => {
      const w = { n, resolve: () => { clearTimeout(timer); resolve(items); } };
      const timer = setTimeout(() => {
        waiters = waiters.filter((x) => x !== w);
        reject(new Error(`timed out: ${items.length} of ${n} items`));
      }, timeout);
      waiters.push(w);
    });
  };
  return fn;
}
