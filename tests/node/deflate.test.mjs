// permessage-deflate (RFC 7692) with an independent client: Node's `ws`.
// Covers the offers kosoku cannot drive (client_no_context_takeover,
// client_max_window_bits) and mixed compressed/plain rooms.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, connect, user, request, next, expectType } from './helpers.mjs';

let server;
before(async () => { server = await startServer(['--rate-limit', '0', '--max-body', '64KiB']); });
after(async () => { await server.stop(); });

async function metric(name) {
  const text = await (await fetch(`http://${server.addr}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return Number(line.split(' ')[1]);
}

// Bodies that compress well, and differ per message so a broken context
// (a back-reference into a previous message) would corrupt them.
const bodyFor = (i) => ({ text: `message ${i} `.repeat(400), n: i });

const offers = {
  'default offer': {},
  client_no_context_takeover: { clientNoContextTakeover: true },
  'client_max_window_bits=8': { clientMaxWindowBits: 8 },
  'client_max_window_bits=15': { clientMaxWindowBits: 15 },
  'client_no_context_takeover + client_max_window_bits=8': { clientNoContextTakeover: true, clientMaxWindowBits: 8 },
  server_no_context_takeover: { serverNoContextTakeover: true },
  'server_max_window_bits=10': { serverMaxWindowBits: 10 },
  'server_max_window_bits=9 + client_max_window_bits=9': { serverMaxWindowBits: 9, clientMaxWindowBits: 9 },
};

let room = 0;
for (const [name, options] of Object.entries(offers)) {
  test(`room traffic with ${name}`, async () => {
    const r = `deflate-${++room}`;
    const perMessageDeflate = { ...options, threshold: 0 };
    const sender = await user(server.addr, `s${room}`, { perMessageDeflate });
    const plain = await user(server.addr, `p${room}`, { perMessageDeflate: false });
    const other = await user(server.addr, `o${room}`, { perMessageDeflate: { threshold: 0 } });
    assert.match(sender.negotiated, /permessage-deflate/);
    assert.match(sender.negotiated, /server_no_context_takeover/);
    assert.match(sender.negotiated, /client_no_context_takeover/);
    if (options.serverMaxWindowBits) {
      assert.match(sender.negotiated, new RegExp(`server_max_window_bits=${options.serverMaxWindowBits}`));
    }
    assert.equal(plain.negotiated, '');
    for (const ws of [sender, plain, other]) assert.equal((await request(ws, { type: 'join', room: r })).type, 'joined');
    await expectType(sender, 'presence'); await expectType(sender, 'presence'); await expectType(plain, 'presence');
    for (let i = 0; i < 5; i++) {
      const ack = await request(sender, { type: 'publish', room: r, body: bodyFor(i) });
      assert.equal(ack.type, 'ack');
      assert.equal(ack.delivered, 2);
      for (const ws of [plain, other]) {
        const m = await expectType(ws, 'message');
        assert.deepEqual(m.body, bodyFor(i));
        assert.equal(m.seq, i + 1);
      }
    }
    // And the other direction: the compressed client receives compressed frames.
    await request(other, { type: 'publish', room: r, body: bodyFor(99) });
    assert.deepEqual((await expectType(sender, 'message')).body, bodyFor(99));
    assert.deepEqual((await expectType(plain, 'message')).body, bodyFor(99));
    for (const ws of [sender, plain, other]) ws.close();
  });
}

test('server_max_window_bits=8 is declined and the connection works uncompressed', async () => {
  const ws = await user(server.addr, 'eight', { perMessageDeflate: { serverMaxWindowBits: 8 } });
  assert.equal(ws.negotiated, '');
  assert.equal((await request(ws, { type: 'ping' })).type, 'pong');
  ws.close();
});

test('compressed recipients really get compressed frames', async () => {
  const r = 'bytes';
  const sender = await user(server.addr, 'bs', { perMessageDeflate: false });
  const zipped = await user(server.addr, 'bz', { perMessageDeflate: { threshold: 0 } });
  await request(sender, { type: 'join', room: r });
  await request(zipped, { type: 'join', room: r });
  await expectType(sender, 'presence');
  const body = { text: 'a'.repeat(60_000) };
  const before = await metric('switchboard_bytes_out_total');
  await request(sender, { type: 'publish', room: r, body });
  assert.deepEqual((await expectType(zipped, 'message')).body, body);
  const sent = (await metric('switchboard_bytes_out_total')) - before;
  // 60 kB of 'a' deflates to well under 1 kB; the ack is tiny.
  assert.ok(sent < 2_000, `server wrote ${sent} bytes for a 60 kB compressible message`);
  sender.close(); zipped.close();
});

test('relay echoes large compressed binary and text messages unchanged', async () => {
  const ws = await connect(`ws://${server.addr}/relay/zip?echo=true`, { perMessageDeflate: { threshold: 0 } });
  assert.match(ws.negotiated, /permessage-deflate/);
  const binary = Buffer.alloc(60_000);
  for (let i = 0; i < binary.length; i++) binary[i] = (i * 7) % 251;
  ws.send(binary);
  const echoed = await next(ws);
  assert.ok(Buffer.isBuffer(echoed));
  assert.ok(echoed.equals(binary));
  ws.close();
});
