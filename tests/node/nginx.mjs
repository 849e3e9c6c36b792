// A real nginx (Debian's package) for a test: in the foreground as one
// process, with its own temporary prefix, killed and removed by `stop()`.
// Used by the browser tests (the nginx block of docs/OPERATIONS.md) and by
// the deployment test (deploy/nginx/switchboard.conf).
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import net from 'node:net';
import path from 'node:path';

export const NGINX = process.env.NGINX || '/usr/sbin/nginx';

/** A free TCP port on `host` (bound and released). */
export function freePort(host = '127.0.0.1') {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, host, () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

/**
 * Starts nginx with `http` (a function of the temporary prefix directory,
 * returning the contents of the `http { }` block) and resolves once
 * `ready()` (an async probe) answers true. The process runs until `stop()`.
 */
export async function runNginx(http, ready, timeout = 10_000) {
  const dir = mkdtempSync(path.join(tmpdir(), 'switchboard-nginx-'));
  const conf = `daemon off;
master_process off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 512; }
http {
    access_log off;
    client_body_temp_path ${dir}/body;
    proxy_temp_path ${dir}/proxy;
    fastcgi_temp_path ${dir}/fastcgi;
    uwsgi_temp_path ${dir}/uwsgi;
    scgi_temp_path ${dir}/scgi;
${http(dir)}
}
`;
  writeFileSync(path.join(dir, 'nginx.conf'), conf);
  const child = spawn(NGINX, ['-p', dir, '-c', path.join(dir, 'nginx.conf'), '-e', path.join(dir, 'error.log')], { stdio: ['ignore', 'inherit', 'inherit'] });
  const nginx = {
    dir,
    errorLog: () => { try { return readFileSync(path.join(dir, 'error.log'), 'utf8'); } catch { return ''; } },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        await new Promise((done) => { child.once('exit', done); child.kill('SIGKILL'); });
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    // Until it accepts (or exits: a bad configuration).
    const deadline = Date.now() + timeout;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`nginx exited (${child.exitCode})`);
      if (await ready()) break;
      if (Date.now() > deadline) throw new Error('nginx did not answer');
      await new Promise((resolve) => { child.once('exit', resolve); setTimeout(resolve, 50); });
    }
  } catch (err) {
    const log = nginx.errorLog();
    await nginx.stop();
    throw new Error(`${err.message}\n${log}`);
  }
  return nginx;
}
