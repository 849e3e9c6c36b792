// The Switchboard chat app, built on client.js. Every piece of user or
// server text goes into the page through textContent / attributes: never
// through innerHTML, so a message cannot inject markup.
import { Client } from './client.js';
import { LANGUAGES, describeError, pickLanguage, translate } from './i18n.js';

const $ = (id) => document.getElementById(id);
const HISTORY_PAGE = 50;
// The server's limits on names, in bytes of UTF-8 (docs/PROTOCOL.md, Identity).
const MAX_BYTES = { user: 64, room: 128 };
// After a reconnect, how long a member who was shown as present may take to
// come back before "left" is announced (a server restart sends no leaves;
// clients come back within their reconnect backoff).
const AWAY_GRACE = 30_000;

// ---- storage (localStorage may be unavailable: private mode, quotas) ----
const storage = {
  get(key, area = localStorage) {
    try { return area.getItem(key); } catch { return null; }
  },
  set(key, value, area = localStorage) {
    try { area.setItem(key, value); } catch { /* ignore */ }
  },
  del(key, area = localStorage) {
    try { area.removeItem(key); } catch { /* ignore */ }
  },
  json(key, fallback) {
    try { return JSON.parse(storage.get(key)) ?? fallback; } catch { return fallback; }
  },
};

function randomId(bytes = 12) {
  const a = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(a, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** A stable id for this browser, so the server tracks inbox delivery per device. */
function deviceId() {
  let id = storage.get('sb.device');
  if (!id) { id = `web-${randomId(8)}`; storage.set('sb.device', id); }
  return id;
}

// ---- i18n ----
let lang = pickLanguage(storage.get('sb.lang'), navigator.languages || [navigator.language]);
const t = (key, params) => translate(lang, key, params);
const errorText = (err) => describeError(lang, err);

function applyStaticText() {
  document.documentElement.lang = lang;
  for (const node of document.querySelectorAll('[data-i18n]')) node.textContent = t(node.dataset.i18n);
  for (const node of document.querySelectorAll('[data-i18n-placeholder]')) node.placeholder = t(node.dataset.i18nPlaceholder);
  for (const node of document.querySelectorAll('[data-i18n-label]')) {
    node.setAttribute('aria-label', t(node.dataset.i18nLabel));
    node.title = t(node.dataset.i18nLabel);
  }
  for (const node of document.querySelectorAll('[data-icon]')) {
    if (!node.firstChild) node.append(icon(node.dataset.icon));
  }
  for (const select of [$('lang'), $('lang-signin')]) {
    if (!select.options.length) {
      for (const [code, name] of LANGUAGES) select.append(new Option(name, code));
    }
    select.value = lang;
  }
}

function setLanguage(next) {
  lang = next;
  storage.set('sb.lang', next);
  applyStaticText();
  if (me) renderAll();
  else renderSigninError();
}

// ---- DOM helper: text only ----
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v == null || v === false) continue;
    if (k === 'text') node.textContent = v;
    else if (k === 'className') node.className = v;
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}

// Line icons (24×24, stroked with the text colour), built as DOM nodes: the
// page's Content-Security-Policy allows no data: images.
const ICONS = {
  people: ['M9 11.5a3.5 3.5 0 1 0 0-7 3.5 3.5 0 0 0 0 7z', 'M2.5 20c0-3.6 2.9-6 6.5-6s6.5 2.4 6.5 6',
    'M16.5 11a2.75 2.75 0 1 0 0-5.5', 'M17.5 14.2c2.4.4 4 2.5 4 5.8'],
  person: ['M12 11a4 4 0 1 0 0-8 4 4 0 0 0 0 8z', 'M4 21c0-4.4 3.6-7 8-7s8 2.6 8 7'],
  exit: ['M10 4H6a2 2 0 0 0-2 2v12a2 2 0 0 0 2 2h4', 'M15 8l4 4-4 4', 'M19 12H9'],
};
const SVG = 'http://www.w3.org/2000/svg';
function icon(name) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('class', `icon icon-${name}`);
  svg.setAttribute('aria-hidden', 'true');
  for (const d of ICONS[name] || []) {
    const path = document.createElementNS(SVG, 'path');
    path.setAttribute('d', d);
    svg.append(path);
  }
  return svg;
}

const utf8Length = (text) => new TextEncoder().encode(text).length;

/**
 * What the server would refuse in a name (docs/PROTOCOL.md, Identity), as
 * an error for describeError(), or null: checked before sending, in bytes
 * of UTF-8 (a Chinese character is 3), not in characters.
 */
function nameProblem(kind, value) {
  const what = t(`what.${kind}`);
  if (!value) return { key: 'error.empty', params: { what } };
  const bytes = utf8Length(value);
  if (bytes > MAX_BYTES[kind]) return { key: 'error.tooLongBytes', params: { what, bytes, max: MAX_BYTES[kind] } };
  if (/\p{Cc}/u.test(value)) return { key: 'error.control', params: { what } };
  if (/^\s|\s$/u.test(value)) return { key: 'error.space', params: { what } };
  return null;
}

// http(s) URLs in message text become links; the rest stays text. The URL
// ends at whitespace, quotes, angle brackets and CJK punctuation; trailing
// sentence punctuation, and a closing bracket without its opening one, are
// left out of it.
const URL_PATTERN = /\bhttps?:\/\/[^\s<>"'`\u3000-\u303f\uff00-\uffef]+/gi;
function trimUrl(url) {
  for (;;) {
    const last = url.at(-1);
    const unbalanced = (open, close) => last === close && url.split(open).length < url.split(close).length;
    if ('.,;:!?*'.includes(last) || unbalanced('(', ')') || unbalanced('[', ']')) url = url.slice(0, -1);
    else return url;
  }
}
function linkify(text) {
  const parts = [];
  let last = 0;
  for (const match of text.matchAll(URL_PATTERN)) {
    const url = trimUrl(match[0]);
    let href;
    try {
      const parsed = new URL(url);
      if ((parsed.protocol !== 'http:' && parsed.protocol !== 'https:') || !parsed.hostname) continue;
      href = parsed.href;
    } catch { continue; }
    if (match.index > last) parts.push(text.slice(last, match.index));
    parts.push(el('a', { href, target: '_blank', rel: 'noopener noreferrer', text: url }));
    last = match.index + url.length;
  }
  if (last < text.length) parts.push(text.slice(last));
  return parts;
}

// ---- state ----
let client = null;
let me = null;
let active = null; // key of the open conversation
const convs = new Map(); // 'r:<room>' | 'u:<user>' -> conversation
let order = 0; // tie-breaker for items without a seq

const userKey = (suffix) => `sb.u.${me}.${suffix}`;

function makeConv(kind, name) {
  const key = (kind === 'room' ? 'r:' : 'u:') + name;
  const saved = kind === 'dm' ? storage.json(userKey(`dm.${name}`), {}) : {};
  return {
    key, kind, name,
    items: [], keys: new Set(),
    unread: 0,
    online: null, // null until the server said (joined / presence)
    members: new Set(), // who is shown as present
    membersKnown: false, // members came from a presence reply at least once
    away: new Set(), // shown before a reconnect, not back yet (see AWAY_GRACE)
    awayTimer: null,
    history: 'idle', // idle | loading | done
    loadedOnce: false, // the newest page was fetched
    stale: false, // dm: the newest page must be fetched again (after a reconnect)
    cursor: null, // seq (room) / gid (dm) of the oldest message history returned
    maxSeq: 0, maxGid: 0,
    lastInbox: 0, // dm: highest inbox seq of their messages to me
    lastRead: saved.lastRead || 0, // dm: what I reported read
    readUpto: saved.readUpto || 0, // dm: their receipt for my messages
  };
}

function saveConvList() {
  const rooms = []; const dms = [];
  for (const c of convs.values()) (c.kind === 'room' ? rooms : dms).push(c.name);
  storage.set(userKey('rooms'), JSON.stringify(rooms));
  storage.set(userKey('dms'), JSON.stringify(dms));
}

function saveDm(conv) {
  storage.set(userKey(`dm.${conv.name}`), JSON.stringify({ lastRead: conv.lastRead, readUpto: conv.readUpto }));
}

const isWide = () => window.matchMedia('(min-width: 721px)').matches;
function isViewing(conv) {
  return conv.key === active && document.visibilityState === 'visible' && (isWide() || $('chat').dataset.view === 'conv');
}

// ---- items ----
const cmp = (a, b) => (a.sort[0] - b.sort[0]) || (a.sort[1] - b.sort[1]);

function insertItem(conv, item) {
  let i = conv.items.length;
  while (i > 0 && cmp(conv.items[i - 1], item) > 0) i -= 1;
  conv.items.splice(i, 0, item);
  if (item.key) conv.keys.add(item.key);
  if (conv.key === active) {
    item.el = renderItem(conv, item);
    const next = conv.items[i + 1];
    $('messages').insertBefore(item.el, next ? next.el : null);
  }
}

function removeItem(conv, item) {
  const i = conv.items.indexOf(item);
  if (i >= 0) conv.items.splice(i, 1);
  if (item.key) conv.keys.delete(item.key);
  if (item.el) item.el.remove();
}

function reposition(conv, item) {
  removeItem(conv, item);
  insertItem(conv, item);
}

function refreshItem(conv, item) {
  if (conv.key !== active || !item.el) return;
  const fresh = renderItem(conv, item);
  item.el.replaceWith(fresh);
  item.el = fresh;
}

function bodyText(body) {
  if (typeof body === 'string') return body;
  if (body && typeof body.text === 'string') return body.text;
  return JSON.stringify(body);
}

const timeFormat = () => new Intl.DateTimeFormat(lang, { hour: '2-digit', minute: '2-digit' });
const dayTimeFormat = () => new Intl.DateTimeFormat(lang, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
const fullFormat = () => new Intl.DateTimeFormat(lang, { dateStyle: 'full', timeStyle: 'medium' });

function formatTime(ts) {
  const d = new Date(ts);
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  return (sameDay ? timeFormat() : dayTimeFormat()).format(d);
}

function statusOf(conv, item) {
  if (item.status === 'pending') return t(client && client.state === 'connected' ? 'status.sending' : 'status.queued');
  if (item.status === 'failed') return t('status.failed');
  if (conv.kind !== 'dm') return null;
  if (item.seq && item.seq <= conv.readUpto) return t('status.read');
  return t(item.delivered ? 'status.delivered' : 'status.sent');
}

function renderItem(conv, item) {
  if (item.type === 'notice') {
    return el('li', { className: 'notice', role: 'note', text: item.err ? errorText(item.err) : t(item.textKey, item.params) });
  }
  const classes = ['msg'];
  if (item.own) classes.push('own');
  if (item.status === 'pending') classes.push('pending');
  if (item.status === 'failed') classes.push('failed');
  const status = item.own ? statusOf(conv, item) : null;
  if (status && item.seq && conv.kind === 'dm' && item.seq <= conv.readUpto) classes.push('read');
  const date = new Date(item.ts);
  const node = el('li', { className: classes.join(' '), dataset: { key: item.key } },
    el('div', { className: 'meta' },
      el('span', { className: 'from', text: item.own ? t('you') : item.from }),
      el('time', { datetime: date.toISOString(), title: fullFormat().format(date), text: formatTime(item.ts) })),
    el('div', { className: 'text' }, ...linkify(bodyText(item.body))));
  if (status) {
    const line = el('div', { className: 'status', text: status });
    if (item.status === 'failed') {
      if (item.error) line.title = errorText(item.error);
      line.append(el('button', { type: 'button', className: 'retry', text: t('status.retry'), onclick: () => retry(conv, item) }));
    }
    node.append(line);
  }
  return node;
}

function addNotice(conv, textKey, params, err) {
  const stick = isNearBottom();
  insertItem(conv, { type: 'notice', textKey, params, err, sort: [conv.kind === 'room' ? conv.maxSeq : conv.maxGid, ++order] });
  if (stick) stickToBottom(conv);
}

// ---- rooms ----
function ensureRoom(name) {
  let conv = convs.get(`r:${name}`);
  if (!conv) {
    conv = makeConv('room', name);
    convs.set(conv.key, conv);
    saveConvList();
  }
  return conv;
}

async function joinRoom(name, open = true) {
  const conv = ensureRoom(name);
  if (open) openConv(conv.key);
  renderSidebar();
  try {
    await client.join(name, {
      onMessage: (m) => addRoomMessage(conv, m, true),
      onPresence: (p) => onPresence(conv, p),
      onPresenceBatch: (b) => onPresence(conv, b),
      onReset: () => addNotice(conv, 'notice.reset'),
    });
  } catch (err) {
    if (err.code === 'closed' || err.code === 'left') return;
    convs.delete(conv.key);
    saveConvList();
    if (active === conv.key) openConv(null);
    renderSidebar();
    alertError(err);
    return;
  }
  if (!conv.loadedOnce) loadLatest(conv);
}

function addRoomMessage(conv, m, live) {
  const key = `seq:${m.seq}`;
  if (conv.keys.has(key)) return;
  const own = m.from === me;
  const stick = isNearBottom();
  insertItem(conv, { type: 'msg', key, seq: m.seq, from: m.from, ts: m.ts, body: m.body, own, status: own ? 'sent' : null, sort: [m.seq, 0] });
  if (m.seq > conv.maxSeq) conv.maxSeq = m.seq;
  if (live && !own) bumpUnread(conv);
  if (live && stick) stickToBottom(conv);
}

// ---- members ----
// Only real changes are announced: a `join` of someone already shown as
// present is no news (after a server restart, which sends no leaves, the
// others rejoin one by one), nor is a `leave` of someone not shown.
// A big room's changes come as a batch over an interval ({joined, left,
// more}): client.js first hands each named user over as a single change
// marked `batched` (members are updated, the news noted), then the batch,
// which gets one notice per direction, not one per user.

function onPresence(conv, p) {
  conv.online = p.online;
  if (p.event) {
    const shown = conv.members.has(p.user);
    let news;
    if (p.event === 'join') {
      const back = conv.away.delete(p.user);
      conv.members.add(p.user);
      news = !shown && !back;
    } else {
      conv.away.delete(p.user);
      conv.members.delete(p.user);
      news = shown;
    }
    if (p.batched) {
      if (news) (conv.batchNews ||= { join: [], leave: [] })[p.event].push(p.user);
      return;
    }
    if (news) addNotice(conv, p.event === 'join' ? 'notice.joined' : 'notice.left', { user: p.user });
  } else {
    const news = conv.batchNews || { join: [], leave: [] };
    conv.batchNews = null;
    const SHOWN = 3;
    const full = (list) => list.length >= 32; // the server lists at most 32 per direction
    // `more` counts unlisted changes of both directions: it belongs to a list only if that one is full.
    const moreJoined = full(p.joined) && !full(p.left) ? p.more : 0;
    const moreLeft = full(p.left) && !full(p.joined) ? p.more : 0;
    for (const [users, more, one, many] of [
      [news.join, moreJoined, 'notice.joined', 'notice.joinedMany'],
      [news.leave, moreLeft, 'notice.left', 'notice.leftMany'],
    ]) {
      if (!users.length && !more) continue;
      // Never "and 1 others": then the name is shown instead.
      const shown = users.length + more <= SHOWN + 1 ? users.length : Math.min(SHOWN, users.length);
      const names = users.slice(0, shown).join(t('list.separator'));
      const others = users.length - shown + more;
      if (!shown) addNotice(conv, 'notice.changedMany', { count: others });
      else if (others === 0) addNotice(conv, one, { user: names });
      else addNotice(conv, many, { users: names, count: others, total: users.length + more });
    }
    if (p.more > 0 && !moreJoined && !moreLeft) addNotice(conv, 'notice.changedMany', { count: p.more });
    // Users not named: the member list of the open room is fetched again, once, 1–10 s later
    // (spread: in a storm every member of the room gets the same batch).
    if (p.more > 0 && conv.key === active && !conv.membersRefresh) {
      conv.membersRefresh = setTimeout(() => { conv.membersRefresh = null; refreshMembers(conv); }, 1000 + Math.random() * 9000);
    }
  }
  renderRoomState(conv);
}

/**
 * Asks the server who is in the room (on opening it, and after every
 * `joined`: a reconnect's rejoin included) and reconciles: someone new
 * joined while this page was away; someone missing may still be on the way
 * back (kept in conv.away for AWAY_GRACE ms, then announced as left).
 */
async function refreshMembers(conv) {
  let list;
  try {
    list = await client.presence(conv.name);
  } catch { return; }
  if (convs.get(conv.key) !== conv) return;
  const now = new Set(list.users);
  if (conv.membersKnown) {
    for (const u of now) {
      if (!conv.members.has(u) && !conv.away.delete(u)) addNotice(conv, 'notice.joined', { user: u });
    }
    for (const u of conv.members) if (!now.has(u)) conv.away.add(u);
    if (conv.away.size) awaitReturn(conv);
  }
  conv.members = now;
  conv.membersKnown = true;
  conv.online = list.online;
  renderRoomState(conv);
}

function awaitReturn(conv) {
  clearTimeout(conv.awayTimer);
  conv.awayTimer = setTimeout(() => {
    if (convs.get(conv.key) !== conv) return;
    for (const u of [...conv.away].sort()) addNotice(conv, 'notice.left', { user: u });
    conv.away.clear();
  }, AWAY_GRACE);
}

function renderRoomState(conv) {
  renderSidebar();
  if (conv.key === active) { renderHead(); renderMembers(); }
}

async function leaveRoom(conv) {
  clearTimeout(conv.awayTimer);
  convs.delete(conv.key);
  saveConvList();
  const next = [...convs.values()].find((c) => c.kind === 'room') || null;
  openConv(next ? next.key : null);
  if (!next) $('chat').dataset.view = 'list';
  renderSidebar();
  try { await client.leave(conv.name); } catch (err) { console.warn('leave failed', err); }
}

// ---- direct messages ----
function ensureDm(user) {
  let conv = convs.get(`u:${user}`);
  if (!conv) {
    conv = makeConv('dm', user);
    convs.set(conv.key, conv);
    saveConvList();
  }
  return conv;
}

function openDm(user) {
  const conv = ensureDm(user);
  openConv(conv.key);
  renderSidebar();
  if (!conv.loadedOnce || conv.stale) loadLatest(conv);
}

function onDirect(d) {
  const other = d.from === me ? d.to : d.from;
  const conv = ensureDm(other);
  addDirect(conv, d, true);
  renderSidebar();
}

function addDirect(conv, d, live) {
  const key = `d:${d.to}:${d.seq}`;
  const hasGid = typeof d.gid === 'number';
  if (conv.keys.has(key) || (hasGid && conv.items.some((i) => i.gid === d.gid))) {
    // Already shown (from the ack of my own send, maybe without its gid):
    // put it where the conversation's order says.
    const shown = conv.items.find((i) => i.key === key);
    if (shown && hasGid && shown.gid === undefined) {
      shown.gid = d.gid;
      shown.sort = [d.gid, 0];
      if (d.gid > conv.maxGid) conv.maxGid = d.gid;
      reposition(conv, shown);
    }
    return;
  }
  const own = d.from === me;
  const stick = isNearBottom();
  insertItem(conv, {
    type: 'msg', key, seq: d.seq, gid: hasGid ? d.gid : undefined, from: d.from, ts: d.ts, body: d.body, own,
    status: own ? 'sent' : null, sort: hasGid ? [d.gid, 0] : [conv.maxGid, ++order],
  });
  if (hasGid && d.gid > conv.maxGid) conv.maxGid = d.gid;
  if (!own && d.seq > conv.lastInbox) conv.lastInbox = d.seq;
  if (live && !own && d.seq > conv.lastRead) bumpUnread(conv);
  if (live && stick) stickToBottom(conv);
  markRead(conv);
}

function markRead(conv) {
  if (!isViewing(conv)) return;
  if (conv.unread) { conv.unread = 0; renderSidebar(); updateTitle(); }
  if (conv.kind === 'dm' && conv.lastInbox > conv.lastRead) {
    conv.lastRead = conv.lastInbox;
    client.read(conv.name, conv.lastInbox);
    saveDm(conv);
  }
}

function onRead(r) {
  const conv = convs.get(`u:${r.by}`);
  if (!conv || r.upto <= conv.readUpto) return;
  conv.readUpto = r.upto;
  saveDm(conv);
  for (const item of conv.items) if (item.own && item.seq) refreshItem(conv, item);
}

// ---- sending ----
function sendText(text) {
  const conv = convs.get(active);
  if (!conv || !text.trim()) return;
  const id = randomId();
  const item = {
    type: 'msg', key: `p:${id}`, id, from: me, ts: Date.now(), body: { text }, own: true,
    status: 'pending', sort: [Infinity, ++order], sentAfter: conv.kind === 'room' ? conv.maxSeq : conv.maxGid,
  };
  insertItem(conv, item);
  stickToBottom(conv);
  transmit(conv, item);
  renderConn();
}

function transmit(conv, item) {
  const p = conv.kind === 'room'
    ? client.publish(conv.name, item.body, { id: item.id })
    : client.send(conv.name, item.body, { id: item.id });
  p.then((ack) => acked(conv, item, ack), (err) => {
    if (err.code === 'closed') return;
    item.status = 'failed';
    item.error = err;
    refreshItem(conv, item);
    renderConn();
  });
}

function retry(conv, item) {
  item.status = 'pending';
  refreshItem(conv, item);
  transmit(conv, item); // same id: the server's dedupe keeps it exactly-once
  renderConn();
}

function acked(conv, item, ack) {
  const key = conv.kind === 'room' ? `seq:${ack.seq}` : `d:${conv.name}:${ack.seq}`;
  if (conv.keys.has(key)) { removeItem(conv, item); renderConn(); return; }
  conv.keys.delete(item.key);
  item.key = key;
  item.seq = ack.seq;
  item.status = 'sent';
  item.delivered = ack.delivered > 0;
  if (conv.kind === 'room') {
    item.sort = [ack.seq, 0];
    if (ack.seq > conv.maxSeq) conv.maxSeq = ack.seq;
  } else if (typeof ack.gid === 'number') {
    item.gid = ack.gid;
    item.sort = [ack.gid, 0];
    if (ack.gid > conv.maxGid) conv.maxGid = ack.gid;
  } else {
    // A duplicate's ack carries no gid: keep it after what was there when it was sent.
    item.sort = [item.sentAfter, ++order];
  }
  reposition(conv, item);
  renderConn();
}

// ---- history ----
// Opening a conversation fetches its newest page and merges it with what
// is on screen (by seq / gid, each message once): what came live or from
// the inbox is not the whole conversation (my replies from my other device
// while this one was away are not in my inbox). Scrolling up then pages
// backwards from the oldest message history returned (conv.cursor).

const placeOf = (conv, m) => (conv.kind === 'room' ? m.seq : m.gid);

function loadLatest(conv) {
  if (conv.history === 'loading') { conv.stale = true; return; }
  conv.stale = false;
  fetchPage(conv, null);
}

function loadOlder(conv) {
  if (conv.history !== 'idle' || !conv.loadedOnce || conv.cursor == null) return;
  fetchPage(conv, conv.cursor);
}

async function fetchPage(conv, before) {
  conv.history = 'loading';
  if (conv.key === active) renderHistoryState(conv);
  const query = conv.kind === 'room' ? { room: conv.name } : { with: conv.name };
  query.limit = HISTORY_PAGE;
  if (before != null) query.before = before;
  let page;
  try {
    page = await client.history(query);
  } catch (err) {
    console.warn('history unavailable', err);
    conv.history = 'idle';
    if (conv.key === active) renderHistoryState(conv);
    return;
  }
  if (convs.get(conv.key) !== conv) return;
  const scroller = $('scroller');
  const viewing = conv.key === active;
  const fromBottom = scroller.scrollHeight - scroller.scrollTop;
  const wasEmpty = !conv.items.some((i) => i.type === 'msg');
  const atBottom = isNearBottom();
  for (const m of page.messages) {
    if (m.type === 'message') addRoomMessage(conv, m, false);
    else if (m.type === 'direct') addDirect(conv, m, false);
  }
  const oldest = page.messages.length ? placeOf(conv, page.messages[0]) : null;
  // Paging goes on from the oldest message of the newest page (older ones
  // on screen may have come from the inbox, with a gap after them).
  if (before == null || (oldest != null && oldest < conv.cursor)) conv.cursor = oldest;
  const more = page.messages.length >= query.limit || page.truncated;
  conv.history = more && conv.cursor != null ? 'idle' : 'done';
  if (before == null) conv.loadedOnce = true;
  if (viewing) {
    renderHistoryState(conv);
    if (wasEmpty || (before == null && atBottom)) scroller.scrollTop = scroller.scrollHeight;
    else scroller.scrollTop = scroller.scrollHeight - fromBottom;
  }
  if (conv.stale) { loadLatest(conv); return; }
  // Not enough to scroll yet: fetch another page.
  if (viewing && conv.history === 'idle' && scroller.scrollHeight <= scroller.clientHeight) loadOlder(conv);
}

function renderHistoryState(conv) {
  const node = $('history-state');
  if (conv.history === 'loading') { node.hidden = false; node.textContent = t('history.loading'); }
  else if (conv.history === 'done') { node.hidden = false; node.textContent = t('notice.noHistory'); }
  else node.hidden = true;
}

// ---- rendering ----
function bumpUnread(conv) {
  if (isViewing(conv)) { markRead(conv); return; }
  conv.unread += 1;
  renderSidebar();
  updateTitle();
}

function updateTitle() {
  let total = 0;
  for (const c of convs.values()) total += c.unread;
  document.title = total ? `(${total}) ${t('app.name')}` : t('app.name');
}

function convButton(conv) {
  const label = conv.kind === 'room' ? `# ${conv.name}` : conv.name;
  const button = el('button', {
    type: 'button', className: 'conv-item', 'aria-current': conv.key === active ? 'true' : 'false',
    dataset: { key: conv.key }, onclick: () => (conv.kind === 'room' ? openConv(conv.key) : openDm(conv.name)),
  }, el('span', { className: 'name', text: label }));
  if (conv.kind === 'room' && conv.online != null) {
    // The online count: a person icon and a plain number, unlike the unread badge (a filled pill).
    const online = t('rooms.online', { count: conv.online });
    button.append(el('span', { className: 'count', title: online, 'aria-label': online }, icon('person'), String(conv.online)));
  }
  if (conv.unread) button.append(el('span', { className: 'badge', 'aria-label': t('unread', { count: conv.unread }), text: String(conv.unread) }));
  return el('li', {}, button);
}

function renderSidebar() {
  const rooms = []; const dms = [];
  for (const c of convs.values()) (c.kind === 'room' ? rooms : dms).push(c);
  const byName = (a, b) => a.name.localeCompare(b.name);
  $('room-list').replaceChildren(...(rooms.length ? rooms.sort(byName).map(convButton) : [el('li', { className: 'empty-note', text: t('rooms.empty') })]));
  $('dm-list').replaceChildren(...(dms.length ? dms.sort(byName).map(convButton) : [el('li', { className: 'empty-note', text: t('directs.empty') })]));
}

function renderHead() {
  const conv = convs.get(active);
  if (!conv) return;
  $('conv-title').textContent = conv.kind === 'room' ? `# ${conv.name}` : conv.name;
  $('conv-sub').textContent = conv.kind === 'room' && conv.online != null ? t('rooms.online', { count: conv.online }) : '';
  $('members-toggle').hidden = conv.kind !== 'room';
  $('leave').hidden = conv.kind !== 'room';
  $('text').placeholder = t('composer.placeholder', { name: conv.kind === 'room' ? `# ${conv.name}` : conv.name });
}

// The members panel is beside the messages from 1000 px, open at first;
// narrower it lies over them, so it starts closed, and closes when the
// window becomes phone-sized.
const phoneQuery = window.matchMedia('(max-width: 720px)');
const roomyQuery = window.matchMedia('(min-width: 1000px)');
let membersOpen = roomyQuery.matches;
function renderMembers() {
  const conv = convs.get(active);
  const show = !!conv && conv.kind === 'room' && membersOpen;
  $('members').hidden = !show;
  $('members-toggle').setAttribute('aria-expanded', String(show));
  if (!show) return;
  const users = [...conv.members].sort((a, b) => a.localeCompare(b));
  $('member-list').replaceChildren(...users.map((u) => el('li', {},
    el('button', {
      type: 'button', disabled: u === me, title: u === me ? null : t('members.message', { user: u }),
      onclick: () => { if (!isWide()) membersOpen = false; openDm(u); },
    }, el('span', { className: 'online-dot' }), el('span', { className: 'member-name', text: u }),
    u === me ? el('span', { className: 'you', text: t('members.you') }) : null))));
}

function openConv(key) {
  active = key;
  storage.set(userKey('active'), key || '');
  const conv = key && convs.get(key);
  $('empty').hidden = !!conv;
  $('conv-head').hidden = !conv;
  $('conv-body').hidden = !conv;
  $('composer').hidden = !conv;
  if (!conv) {
    $('empty-title').textContent = t('welcome.title', { user: me });
    renderSidebar();
    return;
  }
  $('chat').dataset.view = 'conv';
  renderHead();
  renderMembers();
  for (const item of conv.items) item.el = renderItem(conv, item);
  $('messages').replaceChildren(...conv.items.map((i) => i.el));
  renderHistoryState(conv);
  const scroller = $('scroller');
  scroller.scrollTop = scroller.scrollHeight;
  markRead(conv);
  renderSidebar();
  updateTitle();
  if (conv.kind === 'room') refreshMembers(conv);
  if (isWide()) $('text').focus();
}

// While the client waits to reconnect, the indicator counts down to the
// next attempt ("Reconnecting in 4 s"), also when signing in with the
// server down.
let retryAt = 0;
let retryTicker = null;

function noteState(s) {
  retryAt = s.state === 'reconnecting' && s.delay > 0 ? Date.now() + s.delay : 0;
  clearInterval(retryTicker);
  retryTicker = retryAt ? setInterval(() => {
    if (Date.now() >= retryAt) { clearInterval(retryTicker); retryAt = 0; }
    if (me) renderConn();
  }, 250) : null;
}

function connText(shown, fallback) {
  if (fallback) return t('conn.connectedSse');
  const seconds = Math.ceil((retryAt - Date.now()) / 1000);
  if (shown === 'reconnecting' && seconds >= 1) return t('conn.retryIn', { seconds });
  return t(`conn.${shown}`);
}

function renderConn() {
  const node = $('conn');
  const state = client ? client.state : 'connecting';
  const shown = { idle: 'connecting', connecting: 'connecting', connected: 'connected', reconnecting: 'reconnecting', offline: 'offline', closed: 'offline' }[state];
  node.dataset.state = shown;
  // The transport in use: 'websocket', or 'sse' (the HTTP fallback).
  const transport = (client && client.transport) || '';
  node.dataset.transport = transport;
  const fallback = shown === 'connected' && transport === 'sse';
  let unsent = 0;
  for (const c of convs.values()) for (const i of c.items) if (i.status === 'pending') unsent += 1;
  const label = connText(shown, fallback) + (unsent ? ` · ${t('conn.unsent', { count: unsent })}` : '');
  node.querySelector('.conn-label').textContent = label;
  if (fallback) node.title = t('conn.sseTitle');
  else node.removeAttribute('title');
  node.dataset.unsent = String(unsent);
}

function renderMe() {
  $('me').textContent = me || '';
  $('avatar').textContent = me ? Array.from(me)[0].toUpperCase() : '';
  $('account-toggle').title = me ? t('account.signedInAs', { user: me }) : '';
}

// On a phone the name in the top bar opens a menu (language, sign out); on
// a wide screen they are shown beside it and the name is just a label.
function setAccountMenu(open) {
  const toggle = $('account-toggle');
  if (isWide()) {
    delete $('account').dataset.open;
    toggle.removeAttribute('aria-expanded');
    toggle.removeAttribute('aria-haspopup');
    toggle.tabIndex = -1;
    return;
  }
  toggle.removeAttribute('tabindex');
  toggle.setAttribute('aria-haspopup', 'true');
  toggle.setAttribute('aria-expanded', String(open));
  if (open) $('account').dataset.open = ''; else delete $('account').dataset.open;
}

function renderAll() {
  renderMe();
  renderConn();
  renderSidebar();
  openConv(active && convs.has(active) ? active : null);
  if (!active) $('chat').dataset.view = 'list';
}

function isNearBottom() {
  const s = $('scroller');
  return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
}

function stickToBottom(conv) {
  if (conv.key !== active) return;
  const s = $('scroller');
  s.scrollTop = s.scrollHeight;
}

function alertError(err) {
  const conv = convs.get(active);
  if (conv) addNotice(conv, null, null, err);
}

// ---- sign-in ----
// The sign-in form's message, kept as a function so that it follows a
// change of language.
let signinMessage = null;

function renderSigninError() {
  const error = $('signin-error');
  const text = signinMessage ? signinMessage() : '';
  error.hidden = !text;
  error.textContent = text;
  $('nickname').setAttribute('aria-invalid', String(!!text));
}

function showSignin(message = null) {
  $('chat').hidden = true;
  $('signin').hidden = false;
  $('nickname').value = storage.get('sb.user') || $('nickname').value;
  signinMessage = message;
  renderSigninError();
  $('signin-submit').disabled = false;
  $('signin-submit').textContent = t('signin.submit');
  $('nickname').focus();
}

function signIn(user, token) {
  if (client) client.close();
  const c = new Client({ user, token: token || undefined, device: deviceId() });
  client = c;
  c.on('state', (s) => { if (client === c) noteState(s); });
  return new Promise((resolve, reject) => {
    const offState = c.on('state', (s) => {
      // The server cannot be reached: go in anyway, the indicator says when it tries again.
      if (s.state === 'reconnecting') { offState(); resolve(c); }
    });
    c.connect().then((welcome) => { offState(); me = welcome.user; resolve(c); }, (err) => { offState(); reject(err); });
  });
}

async function enterChat(c, user) {
  me = c.user || user;
  storage.set('sb.user', me);
  convs.clear();
  active = null;
  c.on('state', (s) => {
    renderConn();
    const conv = convs.get(active);
    if (conv) for (const item of conv.items) if (item.status === 'pending') refreshItem(conv, item);
    if (s.state === 'offline' && s.error) {
      // The server refused us (for example an expired token).
      const err = s.error;
      showSignin(() => errorText(err));
    }
  });
  let welcomed = !!c.user;
  c.on('welcome', (w) => {
    me = w.user;
    renderMe();
    if (welcomed) {
      // Back after a disconnect: rooms are resumed by the rejoin (`since`),
      // but my messages sent from another device meanwhile are in no inbox
      // of this one: conversations fetch their newest page again.
      for (const conv of convs.values()) {
        if (conv.kind !== 'dm' || !conv.loadedOnce) continue;
        conv.stale = true;
        if (conv.key === active) loadLatest(conv);
      }
    }
    welcomed = true;
  });
  c.on('joined', (j) => {
    const conv = convs.get(`r:${j.room}`);
    if (!conv) return;
    conv.online = j.online;
    renderRoomState(conv);
    refreshMembers(conv);
  });
  c.on('direct', onDirect);
  c.on('read', onRead);
  c.on('error', (err) => console.warn('switchboard:', err.code, err.message));
  $('signin').hidden = true;
  $('chat').hidden = false;
  $('chat').dataset.view = 'list';
  const rooms = storage.json(userKey('rooms'), null);
  for (const name of storage.json(userKey('dms'), [])) ensureDm(name);
  const names = rooms && rooms.length ? rooms : (rooms ? [] : ['lobby']);
  for (const name of names) joinRoom(name, false);
  const saved = storage.get(userKey('active'));
  renderAll();
  const start = (saved && convs.get(saved)) || [...convs.values()].find((x) => x.kind === 'room');
  if (start && (isWide() || saved)) {
    if (start.kind === 'dm') openDm(start.name); else openConv(start.key);
  }
  if (!isWide() && !saved) $('chat').dataset.view = 'list';
}

/** Shows `message` (a function returning the text) under the nickname, without signing in. */
function refuseSignin(message) {
  signinMessage = message;
  renderSigninError();
  $('nickname').focus();
}

async function submitSignin(e) {
  e.preventDefault();
  const user = $('nickname').value.trim();
  const token = $('token').value.trim();
  // With a token the server takes the name from it; without one the nickname must be one the server accepts.
  if (!token && !user) { refuseSignin(() => t('signin.nicknameRequired')); return; }
  if (user && nameProblem('user', user)) {
    refuseSignin(() => { const p = nameProblem('user', user); return p ? t(p.key, p.params) : ''; });
    return;
  }
  $('signin-submit').disabled = true;
  $('signin-submit').textContent = t('signin.connecting');
  signinMessage = null;
  renderSigninError();
  try {
    const c = await signIn(user || undefined, token);
    if (token) storage.set('sb.token', token, sessionStorage); else storage.del('sb.token', sessionStorage);
    await enterChat(c, user);
  } catch (err) {
    if (err.code === 'unauthorized') $('token-box').open = true;
    showSignin(err.code === 'unauthorized' && !token ? () => t('signin.tokenNeeded') : () => errorText(err));
  }
}

function signOut() {
  setAccountMenu(false);
  if (client) client.close();
  client = null;
  me = null;
  convs.clear();
  active = null;
  storage.del('sb.user');
  storage.del('sb.token', sessionStorage);
  document.title = t('app.name');
  showSignin();
}

// ---- wiring ----
function wire() {
  $('signin-form').addEventListener('submit', submitSignin);
  for (const select of [$('lang'), $('lang-signin')]) select.addEventListener('change', (e) => setLanguage(e.target.value));
  $('signout').addEventListener('click', signOut);
  $('join-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const name = checkedName($('join-input'), 'room');
    if (!name) return;
    $('join-input').value = '';
    const existing = convs.get(`r:${name}`);
    if (existing) openConv(existing.key); else joinRoom(name, true);
  });
  $('dm-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const name = checkedName($('dm-input'), 'user');
    if (!name) return;
    $('dm-input').value = '';
    openDm(name);
  });
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    const text = $('text').value;
    if (!text.trim()) return;
    $('text').value = '';
    autosize();
    sendText(text);
  });
  $('text').addEventListener('keydown', (e) => {
    // Enter sends; Shift+Enter is a new line; never while an IME composes (Chinese input).
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      $('composer').requestSubmit();
    }
  });
  $('text').addEventListener('input', autosize);
  $('back').addEventListener('click', () => { $('chat').dataset.view = 'list'; renderSidebar(); });
  $('leave').addEventListener('click', () => { const c = convs.get(active); if (c && c.kind === 'room') leaveRoom(c); });
  $('members-toggle').addEventListener('click', () => { membersOpen = !membersOpen; renderMembers(); });
  phoneQuery.addEventListener('change', (e) => {
    if (e.matches) membersOpen = false;
    setAccountMenu(false);
    renderMembers();
  });
  roomyQuery.addEventListener('change', (e) => {
    if (e.matches) { membersOpen = true; renderMembers(); }
  });
  $('account-toggle').addEventListener('click', () => setAccountMenu(!('open' in $('account').dataset)));
  document.addEventListener('click', (e) => {
    if ('open' in $('account').dataset && !$('account').contains(e.target)) setAccountMenu(false);
  });
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && 'open' in $('account').dataset) { setAccountMenu(false); $('account-toggle').focus(); }
  });
  for (const input of [$('join-input'), $('dm-input')]) input.addEventListener('input', () => input.setCustomValidity(''));
  $('scroller').addEventListener('scroll', () => {
    const conv = convs.get(active);
    if (conv && $('scroller').scrollTop < 120) loadOlder(conv);
  }, { passive: true });
  document.addEventListener('visibilitychange', () => {
    const conv = convs.get(active);
    if (conv) markRead(conv);
  });
}

/** The trimmed name in `input`, or null (an empty one, or one the server would refuse: said by the input). */
function checkedName(input, kind) {
  const name = input.value.trim();
  if (!name) return null;
  const problem = nameProblem(kind, name);
  input.setCustomValidity(problem ? t(problem.key, problem.params) : '');
  if (!problem) return name;
  input.reportValidity();
  return null;
}

function autosize() {
  const area = $('text');
  area.style.height = 'auto';
  area.style.height = `${Math.min(area.scrollHeight + 2, 160)}px`;
}

async function main() {
  applyStaticText();
  wire();
  setAccountMenu(false);
  const user = storage.get('sb.user');
  const token = storage.get('sb.token', sessionStorage);
  if (!user) { showSignin(); return; }
  try {
    const c = await signIn(user, token);
    await enterChat(c, user);
  } catch (err) {
    showSignin(() => errorText(err));
  }
}

main();
