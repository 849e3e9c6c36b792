// Compiled (never run) by types.test.mjs: the declarations in web/client.d.ts
// describe the API as documented, and catch misuse.
import { Client, SwitchboardError } from '../../web/client.js';
import type { Message, PublishAck, SendAck, History, StateChange, Direct, Transport } from '../../web/client.js';

const client = new Client({ url: 'ws://127.0.0.1:8080/ws', user: 'alice', device: 'laptop', reconnect: { min: 500, max: 30_000 } });
client.on('state', (s: StateChange) => console.log(s.state, s.attempt, s.delay));
client.on('direct', (d: Direct) => console.log(d.from, d.gid, d.body));
client.on('read', (r) => console.log(r.by, r.upto));
client.on('error', (e: SwitchboardError) => console.log(e.code));

async function main(): Promise<void> {
  const welcome = await client.connect();
  const user: string = welcome.user;
  const joined = await client.join('lobby', {
    onMessage: (m: Message) => console.log(m.seq, m.from, m.ts, m.body),
    onPresence: (p) => console.log(p.event, p.user, p.online),
    onReset: (r) => console.log(r.seq),
  });
  const online: number = joined.online;
  const ack: PublishAck = await client.publish('lobby', { text: 'hi', n: [1, 2] });
  const dm: SendAck = await client.send('bob', 'psst', { id: 'retry-1' });
  const stored: boolean = dm.stored;
  const page: History = await client.history({ room: 'lobby', before: ack.seq, limit: 20 });
  await client.history({ with: 'bob' });
  const who: string[] = (await client.presence('lobby')).users;
  client.read('bob', dm.seq);
  const rtt: number = await client.ping();
  const renewed = await client.refreshToken(async () => 'fresh.jwt.token');
  if (renewed) console.log(renewed.session);
  const withFn = new Client({ token: () => Promise.resolve('jwt'), WebSocket: undefined });
  withFn.on('token', ({ expires }) => console.log(expires));
  const http = new Client({ transports: ['sse', 'websocket'], transportRetry: 30_000, EventSource: undefined, fetch: undefined });
  const transport: Transport | undefined = http.transport;
  http.on('state', (s) => { if (s.state === 'connected') console.log(s.transport === 'sse' ? 'HTTP fallback' : 'WebSocket', transport); });
  console.log(user, online, stored, page.messages.length, who, rtt, client.lastSeq('lobby'), client.pendingCount);
  await client.leave('lobby');
  client.close();
}
main().catch((err: unknown) => { if (err instanceof SwitchboardError) console.log(err.code); });

// Misuse the declarations must reject:
// @ts-expect-error a body must be JSON
client.publish('lobby', () => 1);
// @ts-expect-error history needs `room` or `with`
client.history({ limit: 5 });
// @ts-expect-error no such event
client.on('nope', () => {});
// @ts-expect-error no such transport
new Client({ transports: ['long-polling'] });
// @ts-expect-error state is read-only
client.state = 'connected';
