// Switchboard client: a dependency-free ES module for browsers and Node.js 18+.
//
//   import { Client } from './client.js';
//   const client = new Client({ url: 'ws://127.0.0.1:8080/ws', user: 'alice' });
//   await client.join('lobby', { onMessage: (m) => console.log(m.from, m.body) });
//   await client.publish('lobby', { text: 'hi' });
//
// What it does for you: reconnects with exponential backoff and jitter,
// rejoins rooms with `since` = the last seq it saw, delivers every room
// message once (dedupe by room + seq), queues commands while offline and
// resends them with the same `id` (the server's dedupe makes a resent
// publish/send exactly-once), confirms inbox delivery with `received`, and
// notices a dead connection with an application-level ping. It also marks
// conversations read (resending a read mark the connection may have lost),
// edits and recalls messages, sends signals (throttled typing) and tracks
// who is typing. Where a
// WebSocket cannot open (a proxy that drops `Upgrade`) it falls back to the
// HTTP transport (Server-Sent Events + POST) with the same guarantees, and
// tries the WebSocket again every `transportRetry` ms.
// Reference: docs/CLIENT.md. Wire protocol: docs/PROTOCOL.md.

/** An `error` event from the server, or a client-side failure (`timeout`, `closed`, `queue_full`). */
export class SwitchboardError extends Error {
  constructor(code, message, event) {
    super(message || code);
    this.name = 'SwitchboardError';
    this.code = code;
    if (event !== undefined) this.event = event;
  }
}

const DEFAULTS = {
  ackTimeout: 10_000,
  connectTimeout: 10_000,
  pingInterval: 0, // 0: the server's heartbeat interval (from `welcome`)
  pingTimeout: 10_000,
  maxQueue: 1000,
  stableAfter: 5_000,
  reconnect: { min: 500, max: 30_000, factor: 2 },
  transports: ['websocket', 'sse'],
  transportRetry: 60_000,
};
const TRANSPORTS = ['websocket', 'sse'];
// Commands per POST of the HTTP transport (the server takes at most 16).
const SSE_BATCH = 16;

// Close codes after which the client does not reconnect: the server refused
// the identity, or an operator disconnected the user (HTTP API).
const FATAL_CLOSE = new Map([[4001, 'unauthorized'], [4003, 'kicked']]);
// How many direct-message identities (and seqs of our resent sends) are
// remembered for dedupe.
const DIRECT_MEMORY = 4096;
// A room's out-of-order seqs kept above its contiguous watermark.
const SEEN_LIMIT = 10_000;
// Typing (docs/PROTOCOL.md, `signal`): `{"typing":true}` at most this often
// while typing; someone else's "typing" expires this long after their last signal.
const TYPING_EVERY = 3_000;
const TYPING_TTL = 5_000;
// After read marks were sent, a ping confirms them this much later (the
// server runs a connection's commands in order: its reply proves they ran).
const READ_CONFIRM_DELAY = 250;

export class Client {
  #o;
  #WS;
  #ES;
  #fetch;
  #url;
  #sseUrl;
  #ws = null;
  // Transports, in order of preference; the index of the one in use (or
  // being tried), of the last that reached `welcome`, and when the first
  // one last failed.
  #transports;
  #tIdx = 0;
  #preferred = 0;
  #firstFailedAt = 0;
  #welcomed = false;
  #probe = null;
  #probeTimer = null;
  #state = 'idle';
  #closed = false;
  #fatal = null;
  #attempt = 0;
  #reconnectTimer = null;
  #stableTimer = null;
  #connectTimer = null;
  #heartbeatTimer = null;
  #lastRx = 0;
  #pingSentAt = 0;
  #heartbeatMs = 25_000;
  #welcome = null;
  #listeners = new Map();
  #rooms = new Map();
  #pending = new Map();
  #fireQueue = new Map();
  // Read marks sent on this connection and not yet proven to have run
  // (key → {command, order}); resent on the next connection if it drops.
  #readsSent = new Map();
  #readConfirmTimer = null;
  // Commands written to connections so far, and the count up to which a
  // reply proved the server ran them (replies come in command order).
  #txCount = 0;
  #txConfirmed = 0;
  // Typing: when `{"typing":true}` was last sent per conversation key, and
  // who is typing where (key → {conv, users: Map(user → expiry timer)}).
  #typingOut = new Map();
  #typingIn = new Map();
  #directSeen = new Set();
  // Publishes and sends written to a connection that was lost before their
  // reply: the server may have stored them (only the ack was lost). Such a
  // message can come back to this client as an event: live, when the
  // server reads the lost connection's last command after this one joined
  // (a sender's other connections get its messages), or in a rejoin's
  // replay. The resend's ack (a duplicate's, with the original seq) says
  // which one it was; until then that room's (or, for a send, that peer's
  // copies') events wait here, in order. Key `r:<room>` or `u:<peer>` →
  // {count: such commands unanswered, events}.
  #holds = new Map();
  // `${to}\0${seq}` of sends acked after a resend: their copies are ours.
  #ownSends = new Set();
  #inboxUpto = 0;
  #receivedSent = 0;
  #receivedTimer = null;
  #idPrefix;
  #nextId = 0;
  #connectWaiters = [];
  #onlineListener = null;
  #offlineListener = null;
  #pageHideListener = null;
  #refreshTimer = null;
  #helloToken = null;

  /**
   * @param {object} options see client.d.ts (ClientOptions)
   */
  constructor(options = {}) {
    this.#o = { ...DEFAULTS, ...options };
    this.#o.reconnect = options.reconnect === false ? false : { ...DEFAULTS.reconnect, ...(options.reconnect || {}) };
    this.#WS = options.WebSocket || globalThis.WebSocket;
    this.#ES = options.EventSource || globalThis.EventSource;
    this.#fetch = options.fetch || (typeof globalThis.fetch === 'function' ? globalThis.fetch.bind(globalThis) : undefined);
    const wanted = this.#o.transports;
    if (!Array.isArray(wanted) || !wanted.length || wanted.some((t) => !TRANSPORTS.includes(t))) {
      throw new TypeError(`options.transports: a non-empty list of ${TRANSPORTS.map((t) => `'${t}'`).join(', ')}`);
    }
    // A transport this runtime cannot carry is left out (Node.js without an
    // EventSource: WebSocket only).
    this.#transports = wanted.filter((t) => (t === 'websocket'
      ? typeof this.#WS === 'function'
      : typeof this.#ES === 'function' && typeof this.#fetch === 'function'));
    if (!this.#transports.length) {
      throw new TypeError(wanted.includes('websocket')
        ? 'no WebSocket implementation: pass options.WebSocket (e.g. the `ws` package) on Node.js < 22'
        : 'no EventSource implementation: pass options.EventSource (e.g. the `eventsource` package) on Node.js');
    }
    this.#url = wsUrl(options.url);
    this.#sseUrl = sseUrl(this.#url);
    this.#idPrefix = `${randomToken()}:`;
    const g = globalThis;
    if (typeof g.addEventListener === 'function' && g.navigator && 'onLine' in g.navigator) {
      this.#onlineListener = () => this.#networkOnline();
      this.#offlineListener = () => this.#networkOffline();
      g.addEventListener('online', this.#onlineListener);
      g.addEventListener('offline', this.#offlineListener);
      // A page that goes away on the HTTP transport ends its session (a
      // DELETE that outlives the page): the browser drops the event stream,
      // but the server keeps the session for a reattach, its user online,
      // for two heartbeats (50 s by default). A WebSocket's close is seen at
      // once. A page kept for back/forward (`persisted`) may come back, and
      // its stream then reattaches: left alone.
      this.#pageHideListener = (e) => {
        if (!e.persisted && this.#ws instanceof SseTransport) this.#ws.close();
      };
      g.addEventListener('pagehide', this.#pageHideListener);
    }
  }

  // ---- public API --------------------------------------------------------

  /** 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'offline' | 'closed' */
  get state() { return this.#state; }
  /** The user id the server assigned (in the last `welcome`). */
  get user() { return this.#welcome ? this.#welcome.user : undefined; }
  /**
   * The transport of the current connection, or of the one being tried:
   * 'websocket' or 'sse' (undefined before the first connection).
   */
  get transport() { return this.#state === 'idle' ? undefined : this.#transports[this.#tIdx]; }
  /** The server's session id of the current (or last) connection. */
  get session() { return this.#welcome ? this.#welcome.session : undefined; }
  /** Rooms this client is a member of (it rejoins them after a reconnect). */
  get rooms() { return [...this.#rooms.keys()]; }
  /** Commands not yet answered (sent or waiting for a connection). */
  get pendingCount() { return this.#pending.size; }

  /** The last seq seen (contiguously) in `room`, or undefined if unknown. */
  lastSeq(room) {
    const r = this.#rooms.get(room);
    return r && r.lastSeq != null ? r.lastSeq : undefined;
  }

  /**
   * Starts connecting (also implied by every other command). Resolves with
   * the `welcome` event once connected; rejects only if the server refuses
   * the identity or close() is called: network failures are retried.
   */
  connect() {
    if (this.#closed) return Promise.reject(new SwitchboardError('closed', 'client closed'));
    if (this.#fatal) return Promise.reject(this.#fatal);
    if (this.#state === 'connected') return Promise.resolve(this.#welcome);
    const p = new Promise((resolve, reject) => this.#connectWaiters.push({ resolve, reject }));
    if (this.#state === 'idle') this.#open();
    return p;
  }

  /** Closes the connection for good: no reconnect; unanswered commands reject with `closed`. */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#clearTimers();
    this.#dropProbe();
    const ws = this.#ws;
    this.#ws = null;
    if (ws) {
      detach(ws);
      try { ws.close(1000, 'client closed'); } catch { /* already closed */ }
    }
    this.#clearTyping();
    const err = new SwitchboardError('closed', 'client closed');
    this.#failAll(err);
    for (const w of this.#connectWaiters.splice(0)) w.reject(err);
    const g = globalThis;
    if (this.#onlineListener) {
      g.removeEventListener('online', this.#onlineListener);
      g.removeEventListener('offline', this.#offlineListener);
      g.removeEventListener('pagehide', this.#pageHideListener);
    }
    this.#setState('closed', {});
  }

  /**
   * Subscribes to a client event: 'state', 'welcome', 'message', 'presence', 'presenceBatch',
   * 'direct', 'read' (a receipt: someone read your messages), 'myread' (you
   * read a conversation on another device), 'edit', 'recall', 'signal',
   * 'typing', 'reset', 'joined', 'error', 'event' (every server event).
   * Returns a function that unsubscribes.
   */
  on(type, fn) {
    let set = this.#listeners.get(type);
    if (!set) this.#listeners.set(type, (set = new Set()));
    set.add(fn);
    return () => set.delete(fn);
  }

  off(type, fn) {
    const set = this.#listeners.get(type);
    if (set) set.delete(fn);
  }

  /**
   * Joins `room` (and rejoins it after every reconnect, with `since`).
   * Resolves with the `joined` event. `since`: resume after this seq (for
   * example one saved before a page reload); the server replays what follows.
   */
  join(room, { onMessage, onPresence, onPresenceBatch, onReset, onEdit, onRecall, onSignal, since } = {}) {
    let r = this.#rooms.get(room);
    if (!r) {
      r = { name: room, lastSeq: since != null ? since : null, seen: new Set(), online: 0, waiters: [], handlers: {} };
      this.#rooms.set(room, r);
    }
    r.handlers = { onMessage, onPresence, onPresenceBatch, onReset, onEdit, onRecall, onSignal };
    const p = new Promise((resolve, reject) => r.waiters.push({ resolve, reject }));
    if (this.#state === 'connected') this.#sendJoin(r);
    else this.#ensureConnecting();
    return p;
  }

  /** Leaves `room`: no more messages, no rejoin. Resolves with `left`. */
  async leave(room) {
    const r = this.#rooms.get(room);
    this.#rooms.delete(room);
    if (r) for (const w of r.waiters.splice(0)) w.reject(new SwitchboardError('left', `left room ${room}`));
    // Commands queued for the room would only fail with not_joined.
    if (this.#state !== 'connected') return { type: 'left', room };
    try {
      return await this.#request({ type: 'leave', room });
    } catch (err) {
      if (err.code === 'not_joined') return { type: 'left', room };
      throw err;
    }
  }

  /**
   * Publishes `body` (any JSON value) to a joined room. Resolves with the
   * `ack` {seq, delivered}. While offline the command waits and is sent on
   * reconnect; `options.id` reuses an id (a safe retry of a failed publish).
   */
  publish(room, body, options = {}) {
    // Receivers clear our "typing" when the message arrives: the next
    // keystroke may say so again at once.
    this.#typingOut.delete(`r:${room}`);
    return this.#request({ type: 'publish', room, body: body === undefined ? null : body }, options.id);
  }

  /** Sends a direct message to every connection of `user`. Resolves with the `ack` {seq, delivered, stored}. */
  send(user, body, options = {}) {
    this.#typingOut.delete(`u:${user}`);
    return this.#request({ type: 'send', to: user, body: body === undefined ? null : body }, options.id);
  }

  /**
   * Replaces the body of a message you sent. `target`: a room message
   * `{room, seq}` or a direct `{to, gid}` — the `message`/`direct` event
   * itself, or the `ack` of its publish/send. Resolves with the `ack`
   * {seq, delivered} (the change is stored and sequenced like a message);
   * queued and resent with its id like `publish`.
   */
  edit(target, body, options = {}) {
    let where;
    try { where = changeTarget(target); } catch (err) { return Promise.reject(err); }
    return this.#request({ type: 'edit', ...where, body: body === undefined ? null : body }, options.id);
  }

  /** Withdraws a message you sent (its body is erased). `target` as for edit(). Resolves with the `ack`. */
  recall(target, options = {}) {
    let where;
    try { where = changeTarget(target); } catch (err) { return Promise.reject(err); }
    return this.#request({ type: 'recall', ...where }, options.id);
  }

  /**
   * Sends an ephemeral signal (not stored, no ack, not queued): `target` is
   * `{room}` (a joined room's other members) or `{to: user}` (that user's
   * live connections). Returns false when not connected (nothing was sent).
   */
  signal(target, body) {
    const where = signalTarget(target);
    if (this.#state !== 'connected') return false;
    return !!this.#rawSend({ type: 'signal', ...where, body: body === undefined ? null : body });
  }

  /**
   * Typing indicator for `target` ({room} or {to}): call with true on every
   * keystroke — `{"typing":true}` goes out at most once per 3 s — and with
   * false when the user stops or clears the input (sent only if true was).
   * publish()/send() to the same target reset the throttle. Returns whether
   * a signal was sent.
   */
  typing(target, on = true) {
    const key = convKey(signalTarget(target));
    const last = this.#typingOut.get(key);
    if (on) {
      if (last !== undefined && Date.now() - last < TYPING_EVERY) return false;
      if (!this.signal(target, { typing: true })) return false;
      this.#typingOut.set(key, Date.now());
      return true;
    }
    if (last === undefined) return false;
    this.#typingOut.delete(key);
    return this.signal(target, { typing: false });
  }

  /**
   * Who is typing in `conv` ({room} or {with: user}) now, sorted: users whose
   * last `{"typing":true}` signal is less than 5 s old and who did not stop
   * or send a message since.
   */
  typingUsers(conv) {
    const entry = this.#typingIn.get(convKey(conv));
    return entry ? [...entry.users.keys()].sort() : [];
  }

  /**
   * The conversation list: direct conversations and rooms, newest first,
   * with `unread`, `read` and (directs) `peer_read`. Resolves with the
   * `conversations` event; page on with `before` set to its `next`.
   */
  conversations({ limit, before } = {}) {
    return this.#request({ type: 'conversations', limit, before });
  }

  /** Past messages: {room} or {with: user}, optional before, limit (≤ 100). Resolves with the `history` event. */
  history(query) {
    return this.#request({ ...query, type: 'history' });
  }

  /** Who is in `room` now. Resolves with {room, online, users}. */
  presence(room) {
    return this.#request({ type: 'presence', room });
  }

  /**
   * Marks the direct conversation with `from` read up to your inbox seq
   * `upto` (the `seq` of their `direct` events): stored, so your other
   * devices clear their badge, and `from` gets a receipt. No reply.
   */
  read(from, upto) {
    this.#markRead(`read\u0000u\u0000${from}`, { type: 'read', from, upto });
  }

  /** Marks `room` read up to its seq `upto`: stored; your other devices are told. No reply. */
  readRoom(room, upto) {
    this.#markRead(`read\u0000r\u0000${room}`, { type: 'read', room, upto });
  }

  /**
   * Renews the session with a fresh token (auth on): `token` (a string, or a
   * function returning one) replaces the one in the options; when connected
   * it is sent in a `hello` at once, which resolves with the new `welcome`.
   * With a token function this happens by itself before the JWT expires.
   */
  async refreshToken(token) {
    if (token !== undefined) this.#o.token = token;
    if (this.#state !== 'connected') return undefined;
    const fresh = await this.#currentToken();
    const welcome = await this.#request({ type: 'hello', token: fresh });
    this.#armRefresh(fresh);
    this.#emit('token', { expires: jwtExpiry(fresh) });
    return welcome;
  }

  /** Sends an application ping; resolves with the round-trip time in ms. */
  async ping() {
    const start = Date.now();
    await this.#request({ type: 'ping' });
    return Date.now() - start;
  }

  // ---- connection --------------------------------------------------------

  #ensureConnecting() {
    if (this.#state === 'idle' && !this.#closed) this.#open();
  }

  /**
   * Opens a connection on transport `index` (default: the preferred one,
   * or the first again once `transportRetry` passed since it failed).
   */
  #open(index = this.#startIndex()) {
    if (this.#closed || this.#fatal) return;
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    this.#tIdx = index;
    if (this.#state === 'idle') this.#setState('connecting', {});
    let ws;
    try {
      ws = this.#create(index);
    } catch (err) {
      this.#failed(index, `cannot connect: ${err && err.message}`);
      return;
    }
    this.#attach(ws);
  }

  #startIndex() {
    const retry = this.#o.transportRetry;
    if (this.#preferred > 0 && retry > 0 && Date.now() - this.#firstFailedAt >= retry) return 0;
    return this.#preferred;
  }

  /** A new connection object on transport `index`: a WebSocket, or one that looks like it. */
  #create(index) {
    if (this.#transports[index] === 'websocket') return new this.#WS(this.#url);
    return new SseTransport(this.#sseUrl, {
      EventSource: this.#ES,
      fetch: this.#fetch,
      token: this.#currentToken(),
      user: this.#o.user,
      device: this.#o.device,
    });
  }

  /** Drives `ws` as the connection; `open`: it is open already (a probe). */
  #attach(ws, open = false) {
    this.#ws = ws;
    this.#welcomed = false;
    this.#connectTimer = setTimeout(() => this.#drop(ws, 'connect timeout'), this.#o.connectTimeout);
    ws.onopen = () => {
      if (ws !== this.#ws) return;
      this.#lastRx = Date.now();
      // The HTTP transport opened its stream with a token: that one.
      const opened = ws instanceof SseTransport;
      if (opened && ws.identified) {
        // Identified by the stream's query already: `welcome` is on its way.
        this.#helloToken = ws.openedWith;
        return;
      }
      (opened ? Promise.resolve(ws.openedWith) : this.#currentToken()).then((token) => {
        if (ws !== this.#ws) return;
        this.#helloToken = token;
        const hello = { type: 'hello', id: `${this.#idPrefix}hello` };
        if (this.#o.user != null) hello.user = this.#o.user;
        if (token != null) hello.token = token;
        if (this.#o.name != null) hello.name = this.#o.name;
        if (this.#o.device != null) hello.device = this.#o.device;
        ws.send(JSON.stringify(hello));
      }, (err) => this.#drop(ws, `no token: ${err && err.message}`));
    };
    ws.onmessage = (e) => {
      if (ws !== this.#ws) return;
      this.#lastRx = Date.now();
      this.#pingSentAt = 0;
      let event;
      try {
        event = JSON.parse(typeof e.data === 'string' ? e.data : new TextDecoder().decode(e.data));
      } catch {
        return;
      }
      if (event && typeof event === 'object') this.#handle(ws, event);
    };
    ws.onclose = (e) => this.#drop(ws, e.reason || `closed (${e.code})`, e.code);
    ws.onerror = () => { /* a close event follows */ };
    if (open) ws.onopen();
  }

  /** Lets the connection `ws` go: what was sent on it and not answered is sent again on the next. */
  #release(ws) {
    detach(ws);
    try {
      if (typeof ws.terminate === 'function') ws.terminate();
      else ws.close(1000, 'client closed');
    } catch { /* ignore */ }
    this.#ws = null;
    clearTimeout(this.#connectTimer);
    clearTimeout(this.#heartbeatTimer);
    clearTimeout(this.#stableTimer);
    clearTimeout(this.#refreshTimer);
    clearTimeout(this.#receivedTimer);
    this.#receivedTimer = null;
    this.#receivedSent = 0; // confirm again on the next connection
    // Read marks this connection may have lost go out again on the next
    // (a repeated position changes nothing on the server).
    clearTimeout(this.#readConfirmTimer);
    this.#readConfirmTimer = null;
    for (const [key, sent] of this.#readsSent) {
      const queued = this.#fireQueue.get(key);
      if (sent.order > this.#txConfirmed && !(queued && queued.upto >= sent.command.upto)) {
        this.#fireQueue.set(key, sent.command);
      }
    }
    this.#readsSent.clear();
    // Our "typing" expires at the receivers; say it again at once.
    this.#typingOut.clear();
    // A room's held events come again in the rejoin's replay (`since` did
    // not pass them); a peer's copies do not (they are live only).
    for (const [key, h] of this.#holds) if (key.startsWith('r:')) h.events = [];
    // Everything sent on this socket and not answered is sent again on the
    // next one (same ids); joins are redone by the rejoin.
    for (const [id, p] of this.#pending) {
      clearTimeout(p.timer);
      p.timer = null;
      if (p.sent && !p.inDoubt) this.#doubt(p);
      p.sent = false;
      if (p.once) {
        // Joins are redone by the rejoin; a token refresh by the next hello.
        this.#pending.delete(id);
        if (p.command.type === 'hello') p.resolve(undefined);
      }
    }
  }

  /** The connection `ws` is gone (or must go): clean up and maybe reconnect. */
  #drop(ws, reason, code) {
    if (ws !== this.#ws) return;
    const early = !this.#welcomed;
    this.#release(ws);
    this.#dropProbe();
    const renewable = code === 4001 && typeof this.#o.token === 'function';
    if (code !== undefined && FATAL_CLOSE.has(code) && !renewable) {
      const kind = FATAL_CLOSE.get(code);
      this.#fail(new SwitchboardError(kind, reason || kind));
      return;
    }
    if (this.#fatal) return;
    if (early) this.#failed(this.#tIdx, reason);
    else this.#scheduleReconnect(reason);
  }

  /** Transport `index` did not get as far as `welcome`: the next one at once, else backoff. */
  #failed(index, reason) {
    if (index === 0) this.#firstFailedAt = Date.now();
    if (index + 1 < this.#transports.length && !this.#closed && !this.#fatal) this.#open(index + 1);
    else this.#scheduleReconnect(reason);
  }

  // ---- back to the first transport ----------------------------------------

  /** While connected on a fallback, tries the first transport every `transportRetry` ms. */
  #armProbe() {
    clearTimeout(this.#probeTimer);
    this.#probeTimer = null;
    if (this.#tIdx === 0 || !(this.#o.transportRetry > 0)) return;
    this.#probeTimer = setTimeout(() => this.#runProbe(), this.#o.transportRetry);
  }

  #runProbe() {
    this.#probeTimer = null;
    if (this.#state !== 'connected' || this.#tIdx === 0 || this.#probe) return;
    let probe;
    try {
      probe = this.#create(0);
    } catch {
      this.#firstFailedAt = Date.now();
      this.#armProbe();
      return;
    }
    this.#probe = probe;
    const timer = setTimeout(() => failed(), this.#o.connectTimeout);
    const failed = () => {
      clearTimeout(timer);
      if (this.#probe !== probe) return;
      this.#dropProbe();
      this.#firstFailedAt = Date.now();
      this.#armProbe();
    };
    probe.onopen = () => {
      clearTimeout(timer);
      if (this.#probe !== probe) return;
      this.#probe = null;
      this.#switchTo(probe, 0);
    };
    probe.onclose = failed;
    probe.onerror = () => {};
  }

  #dropProbe() {
    clearTimeout(this.#probeTimer);
    this.#probeTimer = null;
    const probe = this.#probe;
    this.#probe = null;
    if (probe) {
      detach(probe);
      try { probe.close(1000, 'probe'); } catch { /* ignore */ }
    }
  }

  /**
   * Moves to `ws` (open, on transport `index`): the current connection goes
   * as in a reconnect (its unanswered commands are resent on `ws` with their
   * ids, rooms rejoined with `since`), without the backoff.
   */
  #switchTo(ws, index) {
    const old = this.#ws;
    if (!old || this.#state !== 'connected' || this.#closed || this.#fatal) {
      detach(ws);
      try { ws.close(1000, 'not needed'); } catch { /* ignore */ }
      return;
    }
    this.#release(old);
    this.#tIdx = index;
    this.#setState('reconnecting', { reason: `switching to ${this.#transports[index]}`, attempt: 0, delay: 0 });
    this.#attach(ws, true);
  }

  #scheduleReconnect(reason) {
    if (this.#closed || this.#fatal) return;
    if (this.#o.reconnect === false) {
      this.#setState('offline', { reason });
      return;
    }
    const nav = globalThis.navigator;
    if (this.#onlineListener && nav && nav.onLine === false) {
      // Wait for the browser's `online` event instead of polling.
      this.#setState('offline', { reason });
      return;
    }
    const delay = this.backoff(this.#attempt);
    this.#attempt += 1;
    this.#setState('reconnecting', { reason, attempt: this.#attempt, delay });
    this.#reconnectTimer = setTimeout(() => this.#open(), delay);
  }

  /**
   * Delay before reconnect attempt `n` (0-based): exponential, capped, with
   * "equal jitter" — uniformly random in [cap/2, cap] — so a server restart
   * does not bring every client back in the same instant.
   */
  backoff(n) {
    const { min, max, factor } = this.#o.reconnect || DEFAULTS.reconnect;
    const cap = Math.min(max, min * factor ** n);
    const random = this.#o.random || Math.random;
    return Math.round(cap / 2 + random() * (cap / 2));
  }

  #networkOnline() {
    if (this.#closed || this.#fatal || this.#state === 'connected' || this.#ws) return;
    if (this.#state === 'offline' || this.#state === 'reconnecting') {
      this.#attempt = 0;
      this.#open();
    }
  }

  #networkOffline() {
    // The socket may look open for a long time: probe it now.
    if (this.#state === 'connected' && this.#ws) {
      this.#pingSentAt = Date.now();
      this.#rawSend({ type: 'ping' });
      this.#armHeartbeat();
    } else if (this.#state === 'reconnecting') {
      clearTimeout(this.#reconnectTimer);
      this.#setState('offline', { reason: 'network offline' });
    }
  }

  #onWelcome(ws, welcome) {
    clearTimeout(this.#connectTimer);
    this.#welcome = welcome;
    this.#welcomed = true;
    this.#preferred = this.#tIdx;
    this.#armProbe();
    if (welcome.heartbeat > 0) this.#heartbeatMs = welcome.heartbeat * 1000;
    this.#stableTimer = setTimeout(() => { this.#attempt = 0; }, this.#o.stableAfter);
    this.#setState('connected', { user: welcome.user, session: welcome.session, transport: this.#transports[this.#tIdx] });
    this.#emit('welcome', welcome);
    // Order on the new connection: rejoin rooms, then everything that waited.
    for (const r of this.#rooms.values()) this.#sendJoin(r);
    for (const p of this.#pending.values()) if (!p.sent) this.#transmit(p);
    const fired = [...this.#fireQueue];
    this.#fireQueue.clear();
    for (const [key, cmd] of fired) this.#fire(key, cmd);
    if (this.#inboxUpto > this.#receivedSent) this.#scheduleReceived();
    this.#armHeartbeat();
    this.#armRefresh(this.#helloToken);
    for (const w of this.#connectWaiters.splice(0)) w.resolve(welcome);
  }

  #currentToken() {
    const t = this.#o.token;
    return new Promise((resolve) => resolve(typeof t === 'function' ? t() : t));
  }

  /** With a token function, renews the session shortly before the JWT's `exp`. */
  #armRefresh(token) {
    clearTimeout(this.#refreshTimer);
    const expires = jwtExpiry(token);
    if (expires === undefined || typeof this.#o.token !== 'function') return;
    const left = expires - Date.now();
    const delay = Math.max(1000, left - Math.min(60_000, left / 5));
    this.#refreshTimer = setTimeout(() => {
      this.refreshToken().catch((err) => this.#emit('error', err));
    }, delay);
  }

  #armHeartbeat() {
    clearTimeout(this.#heartbeatTimer);
    const ws = this.#ws;
    if (!ws || this.#state !== 'connected') return;
    const interval = this.#o.pingInterval || this.#heartbeatMs;
    const now = Date.now();
    let wait;
    if (this.#pingSentAt) {
      const deadline = this.#pingSentAt + this.#o.pingTimeout;
      if (now >= deadline) {
        this.#drop(ws, 'heartbeat timeout: no reply to ping');
        return;
      }
      wait = deadline - now;
    } else {
      const due = this.#lastRx + interval;
      if (now >= due) {
        this.#pingSentAt = now;
        this.#rawSend({ type: 'ping' });
        wait = this.#o.pingTimeout;
      } else {
        wait = due - now;
      }
    }
    this.#heartbeatTimer = setTimeout(() => this.#armHeartbeat(), wait);
  }

  #fail(err) {
    this.#fatal = err;
    this.#clearTimers();
    this.#dropProbe();
    const ws = this.#ws;
    this.#ws = null;
    if (ws) {
      detach(ws);
      try { ws.close(1000); } catch { /* ignore */ }
    }
    this.#failAll(err);
    this.#clearTyping();
    for (const w of this.#connectWaiters.splice(0)) w.reject(err);
    this.#setState('offline', { reason: err.message, error: err });
    this.#emit('error', err);
  }

  #failAll(err) {
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.#pending.clear();
    this.#holds.clear();
    for (const r of this.#rooms.values()) for (const w of r.waiters.splice(0)) w.reject(err);
  }

  #clearTimers() {
    clearTimeout(this.#refreshTimer);
    clearTimeout(this.#reconnectTimer);
    clearTimeout(this.#stableTimer);
    clearTimeout(this.#connectTimer);
    clearTimeout(this.#heartbeatTimer);
    clearTimeout(this.#receivedTimer);
    clearTimeout(this.#readConfirmTimer);
  }

  #setState(state, detail) {
    if (this.#state === state && state !== 'reconnecting') return;
    this.#state = state;
    this.#emit('state', { state, ...detail });
  }

  #emit(type, value) {
    const set = this.#listeners.get(type);
    if (!set) return;
    for (const fn of [...set]) callSafely(fn, value);
  }

  // ---- sending -----------------------------------------------------------

  /** Writes `command` to the connection; returns its number in the write order (truthy), or 0 if not sent. */
  #rawSend(command) {
    const ws = this.#ws;
    if (!ws || this.#state !== 'connected') return 0;
    try {
      // Confirm the inbox before anything else goes out.
      if (this.#inboxUpto > this.#receivedSent && command.type !== 'received') {
        ws.send(JSON.stringify({ type: 'received', upto: this.#inboxUpto }));
        this.#receivedSent = this.#inboxUpto;
        this.#txCount += 1;
      }
      ws.send(JSON.stringify(command));
      this.#txCount += 1;
      return this.#txCount;
    } catch {
      return 0;
    }
  }

  #request(command, id) {
    if (this.#closed) return Promise.reject(new SwitchboardError('closed', 'client closed'));
    if (this.#fatal) return Promise.reject(this.#fatal);
    let unsent = 0;
    for (const p of this.#pending.values()) if (!p.sent) unsent += 1;
    if (unsent >= this.#o.maxQueue) {
      return Promise.reject(new SwitchboardError('queue_full', `more than ${this.#o.maxQueue} commands wait for a connection`));
    }
    const full = { ...command, id: id != null ? id : `${this.#idPrefix}${++this.#nextId}` };
    return new Promise((resolve, reject) => {
      const p = { command: full, resolve, reject, timer: null, sent: false, once: command.type === 'join' || command.type === 'hello' };
      const earlier = this.#pending.get(full.id);
      if (earlier) {
        // The same id again (a retry) while the first is unanswered: one
        // command, whose reply settles both promises; the first's doubt
        // (see #holds) and not its timer go on with it.
        clearTimeout(earlier.timer);
        p.inDoubt = earlier.inDoubt;
        p.resolve = (v) => { earlier.resolve(v); resolve(v); };
        p.reject = (e) => { earlier.reject(e); reject(e); };
      }
      this.#pending.set(full.id, p);
      if (this.#state === 'connected') this.#transmit(p);
      else this.#ensureConnecting();
    });
  }

  #transmit(p) {
    const order = this.#rawSend(p.command);
    if (!order) return;
    p.sent = true;
    p.order = order;
    clearTimeout(p.timer);
    p.timer = setTimeout(() => {
      this.#pending.delete(p.command.id);
      if (p.inDoubt) this.#settle(p, null);
      p.reject(new SwitchboardError('timeout', `no reply to ${p.command.type} within ${this.#o.ackTimeout} ms`));
    }, this.#o.ackTimeout);
  }

  #sendJoin(r) {
    const join = { type: 'join', room: r.name };
    if (r.lastSeq != null) join.since = r.lastSeq;
    this.#request(join).then(
      () => {},
      (err) => {
        // A refused join (forbidden, bad name) ends the membership; a
        // timeout or lost connection does not (the rejoin retries).
        if (this.#rooms.get(r.name) !== r) return;
        if (err.code !== 'timeout' && err.code !== 'closed') this.#rooms.delete(r.name);
        for (const w of r.waiters.splice(0)) w.reject(err);
      },
    );
  }

  #fire(key, command) {
    const order = this.#state === 'connected' ? this.#rawSend(command) : 0;
    if (order) {
      if (command.type === 'read') this.#readSent(key, command, order);
      return;
    }
    this.#fireQueue.set(key, command);
    this.#ensureConnecting();
  }

  /** A read mark, unless the same or a later one for `key` waits or is in flight. */
  #markRead(key, command) {
    if (typeof command.upto !== 'number') throw new TypeError('read: upto must be a number');
    const queued = this.#fireQueue.get(key);
    if (queued && queued.upto >= command.upto) return;
    const sent = this.#readsSent.get(key);
    if (sent && sent.command.upto >= command.upto) return;
    this.#fireQueue.delete(key);
    this.#fire(key, command);
  }

  /**
   * A read mark went out as write number `order`. Until a reply to a later
   * command proves the server ran it, a lost connection sends it again; a
   * ping shortly after provides that reply when nothing else does.
   */
  #readSent(key, command, order) {
    this.#readsSent.set(key, { command, order });
    if (this.#readConfirmTimer) return;
    this.#readConfirmTimer = setTimeout(() => {
      this.#readConfirmTimer = null;
      let waiting = false;
      for (const sent of this.#readsSent.values()) if (sent.order > this.#txConfirmed) waiting = true;
      if (waiting && this.#state === 'connected') this.#request({ type: 'ping' }).catch(() => {});
    }, READ_CONFIRM_DELAY);
  }

  /** The server answered write number `order`: it ran everything written before it. */
  #confirmed(order) {
    if (!(order > this.#txConfirmed)) return;
    this.#txConfirmed = order;
    for (const [key, sent] of this.#readsSent) if (sent.order <= order) this.#readsSent.delete(key);
  }

  #scheduleReceived() {
    if (this.#receivedTimer) return;
    this.#receivedTimer = setTimeout(() => {
      this.#receivedTimer = null;
      const upto = this.#inboxUpto;
      if (upto > this.#receivedSent && this.#rawSend({ type: 'received', upto })) this.#receivedSent = upto;
    }, 0);
  }

  // ---- receiving ---------------------------------------------------------

  #handle(ws, event) {
    const pending = event.id != null ? this.#pending.get(event.id) : undefined;
    switch (event.type) {
      case 'welcome':
        // A `welcome` answering a refresh (it has a pending id) is no new connection.
        if (!pending) this.#onWelcome(ws, event);
        break;
      case 'message':
      case 'direct':
      case 'edit':
      case 'recall':
      case 'reset':
        if (!this.#hold(event)) this.#route(event);
        break;
      case 'presence':
        if (event.event) {
          const r = this.#rooms.get(event.room);
          if (r) {
            if (typeof event.online === 'number') r.online = event.online;
            if (r.handlers.onPresence) callSafely(r.handlers.onPresence, event);
            this.#emit('presence', event);
          }
        } else if (Array.isArray(event.joined) || Array.isArray(event.left)) {
          this.#onPresenceBatch(event);
        }
        break;
      case 'joined':
        this.#onJoined(event);
        break;
      case 'ack':
        if (event.room != null) {
          const r = this.#rooms.get(event.room);
          // Our own message: the replay after a reconnect must not deliver it.
          if (r && r.lastSeq != null) this.#accept(r, event.seq);
        }
        break;
      case 'read':
        this.#onRead(event);
        break;
      case 'signal':
        this.#onSignal(event);
        break;
      case 'error':
        if (event.id === `${this.#idPrefix}hello`) {
          this.#fail(new SwitchboardError(event.code, event.message, event));
          return;
        }
        if (!pending) this.#emit('error', new SwitchboardError(event.code, event.message, event));
        break;
      default:
        break;
    }
    this.#emit('event', event);
    if (pending) {
      this.#pending.delete(event.id);
      clearTimeout(pending.timer);
      if (pending.inDoubt) this.#settle(pending, event);
      if (pending.order && ws === this.#ws) this.#confirmed(pending.order);
      if (event.type === 'error') pending.reject(new SwitchboardError(event.code, event.message, event));
      else pending.resolve(event);
    }
  }

  /** A room's or a conversation's event, in its turn. */
  #route(event) {
    switch (event.type) {
      case 'message':
        this.#onMessage(event);
        break;
      case 'direct':
        this.#onDirect(event);
        break;
      case 'edit':
      case 'recall':
        this.#onChange(event);
        break;
      case 'reset':
        if (event.inbox) {
          // Inbox entries up to `seq` are gone (retention): confirm past them.
          if (event.seq > this.#inboxUpto) this.#inboxUpto = event.seq;
          if (this.#inboxUpto > this.#receivedSent) this.#scheduleReceived();
          this.#emit('reset', event);
        } else {
          const r = this.#rooms.get(event.room);
          if (r) this.#reset(r, event);
        }
        break;
      default:
        break;
    }
  }

  /**
   * The key of the hold a publish or send `command` in doubt opens, or null
   * (a send to oneself comes back as one's own inbox entry: nothing to hold).
   */
  #holdKey(command) {
    if (command.type === 'publish') return `r:${command.room}`;
    if (command.type === 'send' && command.to !== this.user) return `u:${command.to}`;
    return null;
  }

  /** `p` was written to a connection now lost, unanswered: the server may have it (see #holds). */
  #doubt(p) {
    const key = this.#holdKey(p.command);
    if (!key) return;
    p.inDoubt = key;
    const h = this.#holds.get(key);
    if (h) h.count += 1;
    else this.#holds.set(key, { count: 1, events: [], own: new Set() });
  }

  /** Keeps `event` back if its room (or, a copy of our send, its peer) has a command in doubt. */
  #hold(event) {
    if (this.#holds.size === 0) return false;
    let key = null;
    if (event.room != null) key = `r:${event.room}`;
    else if (event.type === 'direct' && event.from === this.user && event.to !== this.user) key = `u:${event.to}`;
    const h = key && this.#holds.get(key);
    if (!h) return false;
    h.events.push(event);
    return true;
  }

  /**
   * The command `p` in doubt is answered (`reply`) or given up (null). Its
   * ack tells which seq it was: a room's is accepted on arrival (so a
   * replay of it is dropped), a send's is remembered (so its copy is). Once
   * nothing is in doubt for the key, the events held for it go on, in order.
   */
  #settle(p, reply) {
    const key = p.inDoubt;
    p.inDoubt = null;
    const h = this.#holds.get(key);
    const acked = reply && reply.type === 'ack' && typeof reply.seq === 'number';
    if (acked && p.command.type === 'send') {
      remember(this.#ownSends, `${p.command.to}\u0000${reply.seq}`);
    }
    // Also kept here: a held `reset` clears the room's dedupe, ack included.
    if (acked && h) h.own.add(reply.seq);
    if (!h || --h.count > 0) return;
    this.#holds.delete(key);
    for (const event of h.events) {
      if (event.type === 'message' && h.own.has(event.seq)) {
        // Ours: counted as seen (the resume position passes it), not delivered.
        const r = this.#rooms.get(event.room);
        if (r && r.lastSeq != null) this.#accept(r, event.seq);
        continue;
      }
      this.#route(event);
    }
  }

  /**
   * A big room's presence changes over one interval, as one delta. The
   * users it names are also given out as single changes (`batched: true`),
   * so code written for single changes keeps working; those beyond the 32
   * names of each list are only counted (`more`): ask `presence(room)` for
   * the exact list.
   */
  #onPresenceBatch(event) {
    const r = this.#rooms.get(event.room);
    if (!r) return;
    if (typeof event.online === 'number') r.online = event.online;
    for (const [kind, users] of [['join', event.joined], ['leave', event.left]]) {
      if (!Array.isArray(users)) continue;
      for (const user of users) {
        const single = { type: 'presence', room: event.room, event: kind, user, online: event.online, batched: true };
        if (r.handlers.onPresence) callSafely(r.handlers.onPresence, single);
        this.#emit('presence', single);
      }
    }
    const batch = { ...event, joined: event.joined || [], left: event.left || [], more: event.more || 0 };
    if (r.handlers.onPresenceBatch) callSafely(r.handlers.onPresenceBatch, batch);
    this.#emit('presenceBatch', batch);
  }

  #onJoined(event) {
    const r = this.#rooms.get(event.room);
    if (!r) return;
    if (typeof event.online === 'number') r.online = event.online;
    if (r.lastSeq == null) {
      r.lastSeq = event.seq;
    } else if (event.seq < r.lastSeq) {
      // The room's seq went backwards: the server lost its history (a
      // restart without a store). Start over from its numbering.
      this.#reset(r, { type: 'reset', room: r.name, seq: event.seq });
    }
    for (const w of r.waiters.splice(0)) w.resolve(event);
    this.#emit('joined', event);
  }

  #reset(r, event) {
    r.lastSeq = event.seq;
    r.seen.clear();
    if (r.handlers.onReset) callSafely(r.handlers.onReset, event);
    this.#emit('reset', event);
  }

  #onMessage(event) {
    const r = this.#rooms.get(event.room);
    if (!r || typeof event.seq !== 'number') return;
    if (r.lastSeq == null) r.lastSeq = event.seq - 1;
    if (!this.#accept(r, event.seq)) return;
    this.#typingStopped(`r:${event.room}`, event.from);
    if (r.handlers.onMessage) callSafely(r.handlers.onMessage, event);
    this.#emit('message', event);
  }

  /** Records `seq` as seen in room `r`; false if it was seen before. */
  #accept(r, seq) {
    if (seq <= r.lastSeq || r.seen.has(seq)) return false;
    if (seq === r.lastSeq + 1) {
      r.lastSeq = seq;
      while (r.seen.delete(r.lastSeq + 1)) r.lastSeq += 1;
    } else {
      // Ahead of the watermark (a gap the replay will fill, or our own
      // message acked before others' arrived).
      r.seen.add(seq);
      if (r.seen.size > SEEN_LIMIT) {
        // Give up waiting for the gap: move the watermark to the oldest seen.
        const min = Math.min(...r.seen);
        r.lastSeq = min;
        r.seen.delete(min);
        while (r.seen.delete(r.lastSeq + 1)) r.lastSeq += 1;
      }
    }
    return true;
  }

  #onDirect(event) {
    // A copy of a send of ours whose first ack was lost (see #holds).
    if (event.from === this.user && event.to !== this.user && this.#ownSends.has(`${event.to}\u0000${event.seq}`)) return;
    if (event.to === this.user) this.#inboxEntry(event.seq);
    if (!this.#firstInboxSight(event.to, event.seq, event.ts)) return;
    if (event.to === this.user) this.#typingStopped(`u:${event.from}`, event.from);
    this.#emit('direct', event);
  }

  /**
   * `seq` of this user's inbox arrived (a `direct`, an `edit`/`recall` of a
   * direct, a read receipt): confirmed with `received` — even when it is a
   * duplicate, as the server redelivers until it hears `received`.
   * Only events addressed to this user carry its inbox seqs: copies of what
   * it did on another device carry the peer's.
   */
  #inboxEntry(seq) {
    if (typeof seq !== 'number') return;
    if (seq > this.#inboxUpto) this.#inboxUpto = seq;
    if (this.#inboxUpto > this.#receivedSent) this.#scheduleReceived();
  }

  /**
   * True the first time an inbox entry is seen. An entry is identified by
   * its inbox (`owner`) and seq; `tag` (its ts) guards against a server that
   * lost its inbox numbering (restart without store).
   */
  #firstInboxSight(owner, seq, tag) {
    const key = `${owner}\u0000${seq}\u0000${tag}`;
    if (this.#directSeen.has(key)) return false;
    remember(this.#directSeen, key);
    return true;
  }

  /** An `edit` or `recall`: of a room message (a room seq, like a message) or of a direct (an inbox entry). */
  #onChange(event) {
    const kind = event.type;
    if (event.room != null) {
      const r = this.#rooms.get(event.room);
      if (!r || typeof event.seq !== 'number') return;
      if (r.lastSeq == null) r.lastSeq = event.seq - 1;
      if (!this.#accept(r, event.seq)) return;
      const handler = kind === 'edit' ? r.handlers.onEdit : r.handlers.onRecall;
      if (handler) callSafely(handler, event);
      this.#emit(kind, event);
      return;
    }
    if (event.to === this.user) this.#inboxEntry(event.seq);
    if (!this.#firstInboxSight(event.to, event.seq, event.ts)) return;
    this.#emit(kind, event);
  }

  /**
   * A `read` event: a receipt for your messages (`from` is you; stored in
   * your inbox, with its `seq`), or your own read on another device (`by`
   * is you: `from` is the peer, or `room`).
   */
  #onRead(event) {
    const me = this.user;
    if (event.room == null && event.from === me && typeof event.seq === 'number') {
      this.#inboxEntry(event.seq);
      if (!this.#firstInboxSight(me, event.seq, `read:${event.by}:${event.upto}`)) return;
    }
    if (event.by === me) this.#emit('myread', event);
    // A receipt (from a server that does not say `from`, every `read` is one).
    if (event.room == null && (event.from === me || (event.from == null && event.by !== me))) this.#emit('read', event);
  }

  #onSignal(event) {
    if (event.room != null) {
      const r = this.#rooms.get(event.room);
      if (r && r.handlers.onSignal) callSafely(r.handlers.onSignal, event);
    }
    this.#emit('signal', event);
    const body = event.body;
    if (event.from == null || event.from === this.user) return;
    if (!body || typeof body !== 'object' || typeof body.typing !== 'boolean') return;
    const key = event.room != null ? `r:${event.room}` : `u:${event.from}`;
    if (!body.typing) {
      this.#typingStopped(key, event.from);
      return;
    }
    let entry = this.#typingIn.get(key);
    if (!entry) {
      entry = { conv: event.room != null ? { room: event.room } : { with: event.from }, users: new Map() };
      this.#typingIn.set(key, entry);
    }
    const known = entry.users.has(event.from);
    clearTimeout(entry.users.get(event.from));
    entry.users.set(event.from, setTimeout(() => this.#typingStopped(key, event.from), TYPING_TTL));
    if (!known) this.#emitTyping(entry);
  }

  #typingStopped(key, user) {
    const entry = this.#typingIn.get(key);
    if (!entry || !entry.users.has(user)) return;
    clearTimeout(entry.users.get(user));
    entry.users.delete(user);
    if (!entry.users.size) this.#typingIn.delete(key);
    this.#emitTyping(entry);
  }

  #emitTyping(entry) {
    this.#emit('typing', { ...entry.conv, users: [...entry.users.keys()].sort() });
  }

  #clearTyping() {
    for (const entry of this.#typingIn.values()) for (const timer of entry.users.values()) clearTimeout(timer);
    this.#typingIn.clear();
  }
}

/** What an edit/recall changes: a room message {room, seq} or a direct {to, gid} (an event, or an ack). */
function changeTarget(t) {
  if (t && typeof t === 'object') {
    // A change event names its message in `target`.
    const change = t.type === 'edit' || t.type === 'recall';
    if (t.room != null && typeof (change ? t.target : t.seq) === 'number') return { room: t.room, target: change ? t.target : t.seq };
    if (t.to != null && typeof (change ? t.target : t.gid) === 'number') return { to: t.to, target: change ? t.target : t.gid };
  }
  throw new TypeError('edit/recall target: a room message {room, seq} or a direct {to, gid}');
}

/** Where a signal goes: {room} or {to} ({with} is taken for {to}). */
function signalTarget(t) {
  if (t && typeof t === 'object') {
    if (t.room != null) return { room: t.room };
    if (t.to != null) return { to: t.to };
    if (t.with != null) return { to: t.with };
  }
  throw new TypeError('signal target: {room} or {to: user}');
}

/** A conversation's key: `r:ROOM` or `u:USER`. */
function convKey(t) {
  if (t && t.room != null) return `r:${t.room}`;
  const user = t && (t.to != null ? t.to : t.with);
  if (user == null) throw new TypeError('a conversation: {room} or {with: user}');
  return `u:${user}`;
}

function wsUrl(url) {
  if (url == null) {
    const loc = globalThis.location;
    if (!loc) throw new TypeError('options.url is required outside a browser');
    url = new URL('/ws', loc.href);
  }
  const u = new URL(String(url), globalThis.location ? globalThis.location.href : undefined);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  else if (u.protocol === 'https:') u.protocol = 'wss:';
  if (u.pathname === '/' || u.pathname === '') u.pathname = '/ws';
  return u.toString();
}

/** The HTTP transport's URL next to the WebSocket's: `ws://host/ws` → `http://host/sse`. */
function sseUrl(ws) {
  const u = new URL(ws);
  u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
  u.pathname = /\/ws\/?$/.test(u.pathname) ? u.pathname.replace(/\/ws\/?$/, '/sse') : `${u.pathname.replace(/\/$/, '')}/sse`;
  return u.toString();
}

/**
 * The HTTP transport (docs/PROTOCOL.md, "HTTP transport"), shaped like the
 * WebSocket the client drives: `send(text)`, `close()`, and `onopen`,
 * `onmessage({data})`, `onclose({code, reason})`. Events come over an
 * EventSource on `GET /sse?user&device&token` (an EventSource cannot set
 * headers); commands go up in `POST /sse/SESSION`, one per line, batched
 * while a POST is in flight, with `Authorization: Bearer` when there is a
 * token. A broken stream is left to the EventSource, which reattaches by
 * `Last-Event-ID` with nothing lost or repeated; if the server opened a new
 * session instead, or a POST finds the session gone, this reports a close
 * and the client resumes as after any reconnect. `close()` ends the
 * session with `DELETE /sse/SESSION`.
 */
class SseTransport {
  onopen = null;
  onmessage = null;
  onclose = null;
  onerror = null;
  /** The token the stream was opened with (from `options.token`). */
  openedWith = undefined;
  /** The opening request identified the session: no `hello` needed. */
  identified = false;
  session = null;
  #ES;
  #fetch;
  #url;
  #user;
  #device;
  #es = null;
  #bearer = null;
  #postUrl = null;
  #queue = [];
  #posting = false;
  #lastPost = 0;
  #heartbeat = 25_000;
  #pingTimer = null;
  #done = false;
  #reported = false;
  /** The id of the last event received: POSTs confirm it, so the server can forget what it kept for a reattach. */
  #lastEventId = '';

  constructor(url, { EventSource, fetch, token, user, device }) {
    this.#ES = EventSource;
    this.#fetch = fetch;
    this.#url = url;
    this.#user = user;
    this.#device = device;
    Promise.resolve(token).then((t) => this.#start(t), (err) => this.#finish(1006, `no token: ${err && err.message}`));
  }

  #start(token) {
    if (this.#done) return;
    this.openedWith = token;
    this.#bearer = token == null ? null : String(token);
    const u = new URL(this.#url);
    if (this.#user != null) u.searchParams.set('user', this.#user);
    if (this.#device != null) u.searchParams.set('device', this.#device);
    if (this.#bearer != null) u.searchParams.set('token', this.#bearer);
    let es;
    try {
      es = new this.#ES(u.toString());
    } catch (err) {
      this.#finish(1006, `cannot open the event stream: ${err && err.message}`);
      return;
    }
    this.#es = es;
    es.addEventListener('session', (e) => this.#onSession(e));
    es.addEventListener('close', (e) => {
      let data = {};
      try { data = JSON.parse(e.data); } catch { /* keep the defaults */ }
      this.#finish(typeof data.code === 'number' ? data.code : 1006, data.reason || 'stream closed');
    });
    es.onmessage = (e) => {
      if (e.lastEventId) this.#lastEventId = e.lastEventId;
      if (!this.#done && this.session && this.onmessage) this.onmessage({ data: e.data });
    };
    es.onerror = (e) => {
      if (this.#done) return;
      if (!this.session) {
        this.#refused(u.toString(), e);
        return;
      }
      if (es.readyState === 2) {
        this.#finish(1006, 'event stream failed');
        return;
      }
      // The stream broke and the EventSource reattaches by itself. Is the
      // session still there? A POST tells at once (a failure closes).
      this.send('{"type":"ping"}');
    };
  }

  /**
   * The stream did not open. A refused token (401) must end the session
   * like close 4001 on a WebSocket, not be retried for ever: Node's
   * EventSource tells the status, a browser's does not, so it is asked once.
   */
  #refused(url, e) {
    this.#stop();
    const answer = (status) => this.#finish(
      status === 401 ? 4001 : 1006,
      status === 401 ? 'unauthorized: missing, invalid or expired token'
        : status ? `GET /sse answered ${status}` : 'cannot open the event stream',
    );
    if (e && typeof e.code === 'number') {
      answer(e.code);
      return;
    }
    const abort = typeof AbortController === 'function' ? new AbortController() : null;
    this.#fetch(url, { headers: { Accept: 'text/event-stream' }, signal: abort ? abort.signal : undefined }).then((res) => {
      if (abort) abort.abort();
      answer(res.status);
    }, () => answer(0));
  }

  #onSession(e) {
    let data;
    try { data = JSON.parse(e.data); } catch { return; }
    if (this.#done || !data || typeof data.session !== 'string') return;
    if (!this.session) {
      this.session = data.session;
      this.identified = typeof data.user === 'string';
      if (data.heartbeat > 0) this.#heartbeat = data.heartbeat;
      const u = new URL(this.#url);
      u.search = '';
      u.pathname = `${u.pathname.replace(/\/$/, '')}/${data.session}`;
      this.#postUrl = u.toString();
      this.#lastPost = Date.now();
      // The server wants a POST at least once per heartbeat: one every half.
      const every = Math.max(250, Math.floor(this.#heartbeat / 4));
      this.#pingTimer = setInterval(() => {
        if (Date.now() - this.#lastPost >= this.#heartbeat / 2) this.send('{"type":"ping"}');
      }, every);
      if (this.onopen) this.onopen();
      return;
    }
    // Reattached to the same session: events go on where they stopped.
    if (data.session === this.session && data.resumed) return;
    this.#finish(1006, 'session lost');
  }

  send(text) {
    if (this.#done || !this.#postUrl) throw new Error('not open');
    // A hello with a fresh token: the POSTs carry it from now on.
    if (text.startsWith('{"type":"hello"')) {
      try {
        const { token } = JSON.parse(text);
        if (typeof token === 'string') this.#bearer = token;
      } catch { /* not JSON: the server says so */ }
    }
    this.#queue.push(text);
    this.#post();
  }

  #post() {
    if (this.#done || this.#posting || !this.#queue.length) return;
    const lines = this.#queue.splice(0, SSE_BATCH);
    this.#posting = true;
    this.#lastPost = Date.now();
    const headers = { 'Content-Type': 'text/plain;charset=UTF-8' };
    if (this.#bearer != null) headers.Authorization = `Bearer ${this.#bearer}`;
    if (this.#lastEventId) headers['Last-Event-ID'] = this.#lastEventId;
    this.#fetch(this.#postUrl, { method: 'POST', headers, body: `${lines.join('\n')}\n` }).then((res) => {
      this.#posting = false;
      if (res.body && typeof res.body.cancel === 'function') res.body.cancel().catch(() => {});
      if (res.ok) this.#post();
      else if (res.status === 401) this.#finish(4001, 'unauthorized: the token was refused');
      else if (res.status === 404) this.#finish(1006, 'session ended');
      else this.#finish(1011, `POST answered ${res.status}`);
    }, (err) => {
      this.#posting = false;
      this.#finish(1006, `POST failed: ${err && err.message}`);
    });
  }

  /** Ends the session on the server too (`DELETE`), so its rooms are left now, not after two heartbeats. */
  close() {
    const open = !this.#done && this.#postUrl;
    this.#reported = true;
    this.#stop();
    if (!open) return;
    const headers = {};
    if (this.#bearer != null) headers.Authorization = `Bearer ${this.#bearer}`;
    try {
      this.#fetch(this.#postUrl, { method: 'DELETE', headers, keepalive: true }).then((res) => {
        if (res.body && typeof res.body.cancel === 'function') res.body.cancel().catch(() => {});
      }, () => { /* the session ends by itself */ });
    } catch { /* the session ends by itself */ }
  }

  #stop() {
    this.#done = true;
    clearInterval(this.#pingTimer);
    this.#queue = [];
    if (this.#es) this.#es.close();
  }

  #finish(code, reason) {
    this.#stop();
    if (this.#reported) return;
    this.#reported = true;
    if (this.onclose) this.onclose({ code, reason, wasClean: false });
  }
}

/** The `exp` of a JWT in ms since the epoch, or undefined. The signature is the server's business. */
function jwtExpiry(token) {
  if (typeof token !== 'string') return undefined;
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const claims = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), '=')));
    return typeof claims.exp === 'number' ? claims.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

function detach(ws) {
  ws.onopen = null;
  ws.onmessage = null;
  ws.onclose = null;
  // Keep an error handler: `ws` (Node) throws on an unhandled 'error'.
  ws.onerror = () => {};
}

/** Adds `key` to `set`, forgetting the oldest once it holds more than DIRECT_MEMORY. */
function remember(set, key) {
  set.add(key);
  if (set.size > DIRECT_MEMORY) set.delete(set.values().next().value);
}

function callSafely(fn, value) {
  try {
    fn(value);
  } catch (err) {
    // A throwing handler must not break the client; report it asynchronously.
    setTimeout(() => { throw err; }, 0);
  }
}

function randomToken() {
  const c = globalThis.crypto;
  if (c && typeof c.getRandomValues === 'function') {
    const bytes = c.getRandomValues(new Uint8Array(8));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }
  return Math.random().toString(16).slice(2, 18).padEnd(16, '0');
}
