// Compiled (never run) by types.test.mjs: the declarations in web/client.d.ts
// describe the API as documented, and catch misuse.
import { Client, SwitchboardError } from '../../web/client.js';
import type {
  Message, PublishAck, SendAck, History, StateChange, Direct, Transport, Conversations, Edit, Recall, Signal, ChangeAck,
} from '../../web/client.js';

const client = new Client({ url: 'ws://127.0.0.1:8080/ws', user: 'alice', device: 'laptop', reconnect: { min: 500, max: 30_000 } });
client.on('state', (s: StateChange) => console.log(s.state, s.attempt, s.delay));
client.on('direct', (d: Direct) => console.log(d.from, d.gid, d.body));
client.on('read', (r) => console.log(r.by, r.upto, r.from, r.seq));
client.on('myread', (r) => console.log('room' in r ? r.room : r.from, r.upto));
client.on('edit', (e: Edit) => console.log(e.target, e.body, 'room' in e ? e.room : e.gid));
client.on('recall', (e: Recall) => console.log(e.target, e.seq));
client.on('signal', (s: Signal) => console.log(s.from, s.room, s.to, s.body));
client.on('typing', (t) => console.log('room' in t ? t.room : t.with, t.users.join(', ')));
client.on('error', (e: SwitchboardError) => console.log(e.code));

async function main(): Promise<void> {
  const welcome = await client.connect();
  const user: string = welcome.user;
  const joined = await client.join('lobby', {
    onMessage: (m: Message) => console.log(m.seq, m.from, m.ts, m.body),
    onPresence: (p) => console.log(p.event, p.user, p.online, p.batched === true),
    onPresenceBatch: (b) => console.log(b.online, b.joined.join(), b.left.length, b.more + 1),
    onReset: (r) => console.log(r.seq),
    onEdit: (e) => console.log(e.room, e.target, e.body),
    onRecall: (e) => console.log(e.room, e.target),
    onSignal: (s) => console.log(s.from, s.body),
  });
  const online: number = joined.online;
  const ack: PublishAck = await client.publish('lobby', { text: 'hi', n: [1, 2] });
  const dm: SendAck = await client.send('bob', 'psst', { id: 'retry-1' });
  const stored: boolean = dm.stored;
  const page: History = await client.history({ room: 'lobby', before: ack.seq, limit: 20 });
  await client.history({ with: 'bob' });
  const who: string[] = (await client.presence('lobby')).users;
  client.on('presenceBatch', (b) => console.log(b.room, b.joined.length));
  client.read('bob', dm.seq);
  client.readRoom('lobby', ack.seq);
  const edited: ChangeAck = await client.edit(ack, { text: 'hi!' });
  await client.edit({ room: 'lobby', seq: ack.seq }, 'again', { id: 'edit-1' });
  if (dm.gid !== undefined) await client.recall({ to: 'bob', gid: dm.gid });
  page.messages.forEach((m) => { if (m.recalled === undefined && m.edited !== undefined) console.log(m.edited); });
  console.log(edited.seq, page.read, page.peer_read);
  const sent: boolean = client.signal({ room: 'lobby' }, { cursor: 3 });
  client.typing({ to: 'bob' }, true);
  client.typing({ room: 'lobby' }, false);
  const typing: string[] = client.typingUsers({ room: 'lobby' });
  const list: Conversations = await client.conversations({ limit: 20 });
  for (const c of list.conversations) console.log('with' in c ? [c.with, c.peer_read] : c.room, c.unread, c.read, c.last.ts);
  if (list.next) await client.conversations({ limit: 20, before: list.next });
  console.log(sent, typing);
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
// @ts-expect-error a room message is named by its seq
client.recall({ room: 'lobby' });
// @ts-expect-error a signal needs a room or a user
client.signal({}, { typing: true });
// @ts-expect-error the conversations cursor is a string (`next`)
client.conversations({ before: 5 });
