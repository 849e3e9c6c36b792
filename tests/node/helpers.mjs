// Shared helpers for the Node.js tests: start the real binary, connect with
// the independent `ws` client, await events.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import WebSocket from 'ws';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const BIN = process.env.SWITCHBOARD_BIN || path.join(root, 'target/debug/switchboard');
const TIMEOUT_MS = 10_000;

/** Starts `switchboard serve` on a free port; resolves with {addr, stop}. */
export function startServer(args = []) {
  const child = spawn(BIN, ['serve', '--listen', '127.0.0.1:0', '--store', 'memory', ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, RUST_LOG: 'warn' },
  });
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`server exited early (${code})`)));
    lines.once('line', (line) => {
      const addr = line.split('http://')[1];
      resolve({
        addr,
        stop: () => new Promise((done) => { child.once('exit', done); child.kill('SIGKILL'); }),
      });
    });
  });
}

/** Opens a WebSocket; resolves once open. */
export function connect(url, options = {}) {
  const ws = new WebSocket(url, options);
  ws.events = [];
  // The server's Sec-WebSocket-Extensions answer, parameters included.
  ws.negotiated = '';
  ws.on('upgrade', (res) => { ws.negotiated = res.headers['sec-websocket-extensions'] || ''; });
  ws.waiters = [];
  ws.on('message', (data, isBinary) => {
    const event = isBinary ? data : JSON.parse(data.toString());
    const waiter = ws.waiters.shift();
    if (waiter) waiter(event); else ws.events.push(event);
  });
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

/** The next event on a connection. */
export function next(ws) {
  if (ws.events.length) return Promise.resolve(ws.events.shift());
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('timed out waiting for an event')), TIMEOUT_MS);
    ws.waiters.push((e) => { clearTimeout(timer); resolve(e); });
  });
}

/** The next event, which must be of `type`. */
export async function expectType(ws, type) {
  const e = await next(ws);
  if (e.type !== type) throw new Error(`expected ${type}, got ${JSON.stringify(e)}`);
  return e;
}

/** Connects as `user` and consumes the welcome. */
export async function user(addr, name, options = {}) {
  const ws = await connect(`ws://${addr}/ws?user=${encodeURIComponent(name)}`, options);
  await expectType(ws, 'welcome');
  return ws;
}

let ids = 0;
/** Sends a command and returns its reply. */
export async function request(ws, command) {
  const id = `n${++ids}`;
  ws.send(JSON.stringify({ ...command, id }));
  const reply = await next(ws);
  if (reply.id !== id) throw new Error(`reply ${JSON.stringify(reply)} does not answer ${id}`);
  return reply;
}
