// Type declarations for client.js, the Switchboard JavaScript client.
// Reference: docs/CLIENT.md. Wire protocol: docs/PROTOCOL.md.

/** Any JSON value: what `publish` and `send` carry as `body`. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A command id: echoed in the reply. */
export type Id = string | number;

export type ConnectionState = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'offline' | 'closed';

export type ErrorCode =
  | 'bad_request'
  | 'unauthorized'
  | 'forbidden'
  | 'not_joined'
  | 'not_found'
  | 'too_large'
  | 'rate_limited'
  | 'unavailable'
  // raised by the client itself:
  | 'timeout'
  | 'closed'
  | 'queue_full'
  | 'left'
  /** closed by the server with 4003 (an operator disconnected the user): no reconnect */
  | 'kicked';

/** The minimal WHATWG WebSocket surface the client uses (browsers, Node 22+, the `ws` package). */
export interface WebSocketLike {
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: any }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** How the client reaches the server: a WebSocket, or the HTTP transport (Server-Sent Events + POST). */
export type Transport = 'websocket' | 'sse';

/** The minimal WHATWG EventSource surface the HTTP transport uses (browsers, the `eventsource` package). */
export interface EventSourceLike {
  readonly readyState: number;
  onmessage: ((event: { data: string }) => void) | null;
  onerror: ((event: any) => void) | null;
  addEventListener(type: string, listener: (event: { data: string }) => void): void;
  close(): void;
}
export type EventSourceConstructor = new (url: string) => EventSourceLike;
export type FetchLike = (url: string, init: { method?: string; headers?: Record<string, string>; body?: string; signal?: any }) =>
  Promise<{ ok: boolean; status: number; body?: { cancel(): Promise<void> } | null }>;

export interface BackoffOptions {
  /** First delay cap in ms (default 500). */
  min?: number;
  /** Largest delay cap in ms (default 30000). */
  max?: number;
  /** Growth per attempt (default 2). */
  factor?: number;
}

export interface ClientOptions {
  /** `ws://host/ws`, `wss://…`, or `http(s)://host` (mapped to `/ws`). Default in a browser: this page's host. */
  url?: string | URL;
  /** The user id to connect as (auth off). Neither user nor token: a guest id. */
  user?: string;
  /**
   * A JWT (auth on), sent in the `hello` command over a WebSocket; over the
   * HTTP transport in the event stream's URL (`?token=`, as an EventSource
   * cannot set headers) and in `Authorization: Bearer` on every POST. A
   * function is asked for a token before every connection and, when the
   * JWT has an `exp`, shortly before it expires (the session is renewed
   * with a `hello`, without reconnecting).
   */
  token?: string | (() => string | Promise<string>);
  /** A display name, sent in `hello`. */
  name?: string;
  /**
   * A stable id of this device (sent in `hello`): the server tracks inbox
   * delivery per device, so each device gets every direct message once.
   * Keep it across restarts (e.g. in localStorage). Default: none (all
   * device-less connections of a user share one inbox cursor).
   */
  device?: string;
  /** WebSocket implementation; default `globalThis.WebSocket`. On Node < 22 pass the `ws` package's export. */
  WebSocket?: WebSocketConstructor;
  /**
   * The transports to use, in order of preference (default
   * `['websocket', 'sse']`). When one cannot get a connection as far as
   * `welcome` (a proxy answering the upgrade with 400/403/426, a timeout),
   * the next is tried at once; the client stays on the one that worked and,
   * while that is not the first, tries the first again every
   * `transportRetry` ms, switching back when it opens. A transport this
   * runtime lacks (no EventSource on Node) is left out.
   */
  transports?: Transport[];
  /** Ms between tries of the first transport while on a fallback (default 60000; 0: never). */
  transportRetry?: number;
  /** EventSource implementation for the `sse` transport; default `globalThis.EventSource` (Node: the `eventsource` package). */
  EventSource?: EventSourceConstructor;
  /** fetch implementation for the `sse` transport's POSTs; default `globalThis.fetch`. */
  fetch?: FetchLike;
  /** Ms to wait for the reply to a command once it was sent (default 10000). */
  ackTimeout?: number;
  /** Ms to wait for a new connection's `welcome` (default 10000). */
  connectTimeout?: number;
  /** Send a `ping` after this many ms without any frame (default: the server's heartbeat interval). */
  pingInterval?: number;
  /** Ms without any frame after a `ping` before the connection is declared dead (default 10000). */
  pingTimeout?: number;
  /** At most this many commands wait for a connection; more reject with `queue_full` (default 1000). */
  maxQueue?: number;
  /** Ms a connection must stay up before the backoff starts again from its first step (default 5000). */
  stableAfter?: number;
  /** Backoff settings, or `false` to never reconnect. */
  reconnect?: BackoffOptions | false;
  /** Random source in [0, 1) for the jitter (tests); default Math.random. */
  random?: () => number;
}

export interface Welcome { type: 'welcome'; user: string; session: string; heartbeat: number; id?: Id }
export interface Joined { type: 'joined'; room: string; online: number; seq: number; id?: Id }
export interface Left { type: 'left'; room: string; id?: Id }
/** `duplicate`: the id repeated an earlier command; `seq` is the original's and nothing was delivered again. */
export interface PublishAck { type: 'ack'; room: string; seq: number; delivered: number; duplicate?: true; id?: Id }
export interface SendAck { type: 'ack'; to: string; seq: number; gid?: number; delivered: number; stored: boolean; duplicate?: true; id?: Id }
/**
 * A room message. `edited`: when its sender last edited it (ms; `body` is the
 * new one); `recalled`: when it was recalled (`body` is then null). Both
 * describe its current state, in replays and history.
 */
export interface Message<B = Json> { type: 'message'; room: string; seq: number; from: string; ts: number; body: B; edited?: number; recalled?: number }
/** `seq`: the recipient's inbox seq. `gid`: store-wide id ordering a conversation (the `before` cursor of history with `with`). `edited`/`recalled` as in Message. */
export interface Direct<B = Json> { type: 'direct'; from: string; to: string; seq: number; gid: number; ts: number; body: B; edited?: number; recalled?: number }
/** A change to a room message: `seq` is the change's own room seq, `target` the message's seq. */
export interface RoomEdit<B = Json> { type: 'edit'; room: string; seq: number; target: number; from: string; ts: number; body: B }
/** A change to a direct: `seq`/`gid` are the change's own (an entry of `to`'s inbox), `target` the message's gid. */
export interface DirectEdit<B = Json> { type: 'edit'; from: string; to: string; seq: number; gid: number; target: number; ts: number; body: B }
export interface RoomRecall { type: 'recall'; room: string; seq: number; target: number; from: string; ts: number }
export interface DirectRecall { type: 'recall'; from: string; to: string; seq: number; gid: number; target: number; ts: number }
/** Apply to the message named by `target` (room seq, or gid): applying one it already shows changes nothing. */
export type Edit<B = Json> = RoomEdit<B> | DirectEdit<B>;
export type Recall = RoomRecall | DirectRecall;
/** The ack of an edit/recall: as for publish (room) or send (direct). */
export type ChangeAck = PublishAck | SendAck;
/**
 * What edit()/recall() change: a room message `{room, seq}` or a direct
 * `{to, gid}` you sent — the `message`/`direct` event itself, the `ack` of
 * its publish/send, or an earlier `edit` event of it.
 */
export type ChangeTarget =
  | { room: string; seq: number }
  | { to: string; gid: number }
  | Edit | Recall;
/** Where a signal goes: a joined room's other members, or a user's live connections (`with` is taken for `to`). */
export type SignalTarget = { room: string } | { to: string } | { with: string };
/** A conversation: a room, or the direct conversation with a user. */
export type ConversationRef = { room: string } | { with: string };
/** An ephemeral signal (typing…): never stored or replayed. Room signals name `room`; directs `to` (you). */
export interface Signal<B = Json> { type: 'signal'; room?: string; from: string; to?: string; body: B }
/** Who is typing in a conversation, after every change (a user started, stopped, sent a message, or 5 s passed). */
export type TypingEvent = ({ room: string } | { with: string }) & { users: string[] };
/** A user's first connection joined or last one left. `batched`: taken from a {@link PresenceBatch} (the room's count is then as of the batch). */
export interface PresenceEvent { type: 'presence'; room: string; event: 'join' | 'leave'; user: string; online: number; batched?: true }
/**
 * A big room's net presence changes over one interval (rooms above the server's `--presence-batch-above`,
 * default 8 users online): at most 32 names in each list, `more` counts the changes not listed (0 when none).
 */
export interface PresenceBatch { type: 'presence'; room: string; online: number; joined: string[]; left: string[]; more: number }
export interface PresenceList { type: 'presence'; room: string; online: number; users: string[]; id?: Id }
/** Part of a stream cannot be replayed: everything up to `seq` is skipped, what follows continues from `seq + 1`. A room's (`room`) or this device's inbox (`inbox: true`). */
export interface Reset { type: 'reset'; room?: string; inbox?: true; seq: number }
/**
 * `by` read `from`'s direct messages up to `from`'s inbox seq `upto` (the
 * `seq` of the send acks). As a receipt (`from` is you) it is an entry of
 * your inbox (`seq`).
 */
export interface ReadReceipt { type: 'read'; by: string; from?: string; upto: number; seq?: number }
/** You read a conversation on another device: the direct conversation with `from` (up to your inbox seq `upto`), or `room` (up to its seq). */
export type ReadMark =
  | { type: 'read'; by: string; from: string; upto: number; seq?: number }
  | { type: 'read'; by: string; room: string; upto: number };
/**
 * Reply to `history`: `message` events (room) or `direct` events (conversation), oldest first. `truncated`: the page was cut to fit the connection's queue; older messages remain (ask again with `before`).
 * `read`: your stored read position (room seq, or your inbox seq); `peer_read` (with `with`): how far the peer read your messages (their inbox seq).
 */
export interface History<B = Json> { type: 'history'; room?: string; with?: string; messages: Array<Message<B> | Direct<B>>; truncated?: boolean; read?: number; peer_read?: number; id?: Id }
/** An entry of the conversation list. `read`: your stored position; `unread`: messages after it from others, not recalled. */
export type Conversation<B = Json> =
  | { with: string; last: Direct<B>; unread: number; read: number; peer_read: number }
  | { room: string; last: Message<B>; unread: number; read: number };
/** Reply to `conversations`: newest first; `next`: pass as `before` for the next page. */
export interface Conversations<B = Json> { type: 'conversations'; conversations: Array<Conversation<B>>; next?: string; id?: Id }
export interface ConversationsQuery {
  /** 1–100 (default 50). */
  limit?: number;
  /** The `next` of the previous page. */
  before?: string;
}
export interface ServerError { type: 'error'; code: ErrorCode; message: string; id?: Id }

export interface StateChange {
  state: ConnectionState;
  /** Why the connection was lost (reconnecting / offline). */
  reason?: string;
  /** Reconnect attempt number, from 1 (reconnecting). */
  attempt?: number;
  /** Ms until that attempt (reconnecting). */
  delay?: number;
  /** The fatal error (offline after the server refused the identity). */
  error?: SwitchboardError;
  user?: string;
  session?: string;
  /** The transport of the new connection (connected). */
  transport?: Transport;
}

export interface JoinOptions {
  /** Every message of the room, once, in seq order (replayed ones after a reconnect included). */
  onMessage?: (message: Message) => void;
  /** A user's first connection joined or last one left. */
  onPresence?: (event: PresenceEvent) => void;
  /** A big room's presence changes batched over an interval (its named users also reach `onPresence`, with `batched: true`). */
  onPresenceBatch?: (event: PresenceBatch) => void;
  /** The server could not replay what was missed (history does not reach back far enough). */
  onReset?: (event: Reset) => void;
  /** A message of the room was edited (once per change, replays included). */
  onEdit?: (event: RoomEdit) => void;
  /** A message of the room was recalled. */
  onRecall?: (event: RoomRecall) => void;
  /** A signal in the room (typing…). */
  onSignal?: (event: Signal) => void;
  /** Resume after this seq (for example one saved before a page reload). */
  since?: number;
}

export type HistoryQuery =
  /** A room's messages with seq < `before`, the newest `limit` (1–100, default 50). */
  | { room: string; before?: number; limit?: number }
  /** The conversation with a user: directs with gid < `before`. */
  | { with: string; before?: number; limit?: number };

export interface ClientEvents {
  state: StateChange;
  welcome: Welcome;
  joined: Joined;
  message: Message;
  presence: PresenceEvent;
  presenceBatch: PresenceBatch;
  direct: Direct;
  /** A read receipt: someone read your direct messages. */
  read: ReadReceipt;
  /** You read a conversation on another device: clear its unread badge up to `upto`. */
  myread: ReadMark;
  edit: Edit;
  recall: Recall;
  signal: Signal;
  typing: TypingEvent;
  reset: Reset;
  /** A server error not tied to a command of yours (e.g. `rate_limited`), or a fatal one. */
  error: SwitchboardError;
  /** Every event the server sends, after the client processed it. */
  event: { type: string; [field: string]: unknown };
  /** The session was renewed with a fresh token; `expires`: its `exp` in ms. */
  token: { expires?: number };
}

export declare class SwitchboardError extends Error {
  name: 'SwitchboardError';
  code: ErrorCode | string;
  /** The server's `error` event, when there was one. */
  event?: ServerError;
  constructor(code: string, message?: string, event?: ServerError);
}

export declare class Client {
  constructor(options?: ClientOptions);
  readonly state: ConnectionState;
  readonly user: string | undefined;
  readonly session: string | undefined;
  /** The transport of the current connection, or of the one being tried; undefined before the first. */
  readonly transport: Transport | undefined;
  readonly rooms: string[];
  /** Commands not yet answered (sent, or waiting for a connection). */
  readonly pendingCount: number;
  /** The last seq seen (contiguously) in `room`. */
  lastSeq(room: string): number | undefined;
  /** Resolves on `welcome`; rejects only when the identity is refused or close() is called. */
  connect(): Promise<Welcome>;
  /** Closes for good; unanswered commands reject with `closed`. */
  close(): void;
  on<K extends keyof ClientEvents>(type: K, listener: (value: ClientEvents[K]) => void): () => void;
  off<K extends keyof ClientEvents>(type: K, listener: (value: ClientEvents[K]) => void): void;
  join(room: string, options?: JoinOptions): Promise<Joined>;
  leave(room: string): Promise<Left>;
  publish(room: string, body: Json, options?: { id?: Id }): Promise<PublishAck>;
  send(user: string, body: Json, options?: { id?: Id }): Promise<SendAck>;
  history(query: HistoryQuery): Promise<History>;
  presence(room: string): Promise<PresenceList>;
  /** Marks the conversation with `from` read up to your inbox seq `upto`: stored; `from` gets a receipt, your other devices a `myread`. */
  read(from: string, upto: number): void;
  /** Marks `room` read up to its seq `upto`: stored; your other devices get a `myread`. */
  readRoom(room: string, upto: number): void;
  /** Replaces the body of a message you sent; resolves with the ack of the change. */
  edit(target: ChangeTarget, body: Json, options?: { id?: Id }): Promise<ChangeAck>;
  /** Withdraws a message you sent (its body is erased); resolves with the ack of the change. */
  recall(target: ChangeTarget, options?: { id?: Id }): Promise<ChangeAck>;
  /** An ephemeral signal: no ack, not stored, not queued. False when not connected (nothing sent). */
  signal(target: SignalTarget, body: Json): boolean;
  /** Typing indicator: true on keystrokes (sent at most every 3 s), false when stopped (sent if true was). Returns whether a signal went out. */
  typing(target: SignalTarget, on?: boolean): boolean;
  /** Who is typing in a conversation now (sorted). */
  typingUsers(conversation: ConversationRef | { to: string }): string[];
  /** The conversation list with unread counts and read positions. */
  conversations(query?: ConversationsQuery): Promise<Conversations>;
  /** Application ping; resolves with the round-trip time in ms. */
  ping(): Promise<number>;
  /**
   * Renews the session with a fresh token (auth on). `token` replaces the
   * option; when connected it is sent in a `hello` at once (resolves with the
   * new `welcome`), otherwise the next connection uses it (resolves undefined).
   */
  refreshToken(token?: string | (() => string | Promise<string>)): Promise<Welcome | undefined>;
  /** The reconnect delay in ms before attempt `n` (0-based), jitter included. */
  backoff(n: number): number;
}
