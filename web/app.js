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
// How long after sending the server lets a sender edit / recall a message
// (its defaults, `--edit-window` and `--recall-window`): the menu offers
// each only within its window; the server decides (and may refuse).
const EDIT_WINDOW = 15 * 60_000;
const RECALL_WINDOW = 2 * 60_000;

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
  // Ticks on my direct messages: one = stored, two = read.
  tick: ['M5 12.5l4.5 4.5L19.5 7'],
  ticks: ['M1.5 12.5L6 17 16 7', 'M10.5 16l1 1L21.5 7'],
  more: ['M5 12h.01', 'M12 12h.01', 'M19 12h.01'],
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
    roomRead: 0, // room: my stored read position (a seq)
    latest: 0, // room: the newest seq seen (messages, edits, recalls, `joined`)
    // The unread count the server gave (conversations()) and the place
    // (room seq / gid) of the newest message it covers; messages after that
    // place are counted here. A room the server did not list counts from
    // where it was joined (Infinity: nothing yet).
    base: { count: 0, place: kind === 'room' ? Infinity : 0 },
    listedLast: null, // the newest message, as conversations() gave it (the list's preview)
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
  const editor = item.el.querySelector('.edit-form textarea');
  const focused = !!editor && document.activeElement === editor;
  const fresh = renderItem(conv, item);
  item.el.replaceWith(fresh);
  item.el = fresh;
  // An open editor keeps its draft (item.draft) and the focus.
  if (focused) fresh.querySelector('.edit-form textarea')?.focus();
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
  if (item.busy) return t(item.busy === 'edit' ? 'msg.saving' : 'msg.recalling');
  if (conv.kind !== 'dm') return null;
  if (isReadByPeer(conv, item)) return t('status.read');
  return t(item.delivered ? 'status.delivered' : 'status.sent');
}

const isReadByPeer = (conv, item) => conv.kind === 'dm' && !!item.seq && item.seq <= conv.readUpto;

/**
 * The status line of my message: text while sending (or failed, or an edit
 * or recall under way); once stored, for a direct, ticks: one = stored, two
 * = read by the peer (the word stays, for screen readers and on hover).
 */
function statusLine(conv, item, status) {
  const ticked = conv.kind === 'dm' && item.status === 'sent' && !item.busy;
  if (!ticked) return el('div', { className: 'status', text: status });
  const read = isReadByPeer(conv, item);
  // The word is the line's text (for screen readers and tests), drawn at size 0 beside the ticks.
  return el('div', { className: 'status', title: status, dataset: { ticks: read ? '2' : '1' } },
    icon(read ? 'ticks' : 'tick'), status);
}

function renderItem(conv, item) {
  if (item.type === 'notice') {
    return el('li', { className: 'notice', role: 'note', text: item.err ? errorText(item.err) : t(item.textKey, item.params) });
  }
  if (item.recalled) {
    return el('li', { className: 'recalled', role: 'note', dataset: { key: item.key }, text: recalledText(item) });
  }
  const classes = ['msg'];
  if (item.own) classes.push('own');
  if (item.status === 'pending') classes.push('pending');
  if (item.status === 'failed') classes.push('failed');
  const status = item.own ? statusOf(conv, item) : null;
  if (item.own && isReadByPeer(conv, item)) classes.push('read');
  const date = new Date(item.ts);
  const meta = el('div', { className: 'meta' },
    el('span', { className: 'from', text: item.own ? t('you') : item.from }),
    el('time', { datetime: date.toISOString(), title: fullFormat().format(date), text: formatTime(item.ts) }));
  if (item.edited) {
    meta.append(el('span', { className: 'edited', title: t('msg.editedAt', { time: fullFormat().format(new Date(item.edited)) }), text: t('msg.edited') }));
  }
  const node = el('li', { className: classes.join(' '), dataset: { key: item.key } }, meta,
    item.editing ? editForm(conv, item) : el('div', { className: 'text' }, ...linkify(bodyText(item.body))));
  if (changesAllowed(conv, item).length) {
    node.dataset.changeable = '';
    meta.append(el('button', {
      type: 'button', className: 'ghost msg-menu-button', 'aria-label': t('msg.actions'), title: t('msg.actions'),
      'aria-haspopup': 'menu', 'aria-expanded': 'false', onclick: (e) => openMessageMenu(conv, item, e.currentTarget),
    }, icon('more')));
    node.addEventListener('contextmenu', (e) => {
      if (item.editing) return;
      e.preventDefault();
      openMessageMenu(conv, item, node.querySelector('.msg-menu-button'));
    });
  }
  if (status) {
    const line = statusLine(conv, item, status);
    if (item.status === 'failed') {
      if (item.error) line.title = errorText(item.error);
      line.append(el('button', { type: 'button', className: 'retry', text: t('status.retry'), onclick: () => retry(conv, item) }));
    }
    node.append(line);
  }
  if (item.changeError) node.append(el('div', { className: 'msg-error', role: 'alert', text: item.changeError() }));
  return node;
}

const recalledText = (item) => (item.own ? t('recalled.you') : t('recalled.other', { user: item.from }));

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
  if (m.seq > conv.latest) conv.latest = m.seq;
  if (conv.keys.has(key)) {
    // Shown already: a history page or replay may bring it edited or recalled since.
    const shown = conv.items.find((i) => i.key === key);
    if (shown) mergeChanges(conv, shown, m);
    return;
  }
  const own = m.from === me;
  const stick = isNearBottom();
  insertItem(conv, {
    type: 'msg', key, seq: m.seq, from: m.from, ts: m.ts, body: m.body, own, status: own ? 'sent' : null, sort: [m.seq, 0],
    edited: m.edited || 0, recalled: m.recalled || 0,
  });
  if (m.seq > conv.maxSeq) conv.maxSeq = m.seq;
  if (live) unreadChanged(conv);
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
  if (d.to === me && d.seq > conv.lastInbox) conv.lastInbox = d.seq;
  if (conv.keys.has(key) || (hasGid && conv.items.some((i) => i.gid === d.gid))) {
    // Already shown (from the ack of my own send, maybe without its gid):
    // put it where the conversation's order says; a history page may
    // bring it edited or recalled since.
    const shown = conv.items.find((i) => i.key === key || (hasGid && i.gid === d.gid));
    if (shown) mergeChanges(conv, shown, d);
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
    edited: d.edited || 0, recalled: d.recalled || 0,
  });
  if (hasGid && d.gid > conv.maxGid) conv.maxGid = d.gid;
  if (live) unreadChanged(conv);
  if (live && stick) stickToBottom(conv);
}

/**
 * What the user sees is read: a conversation shown (and the page visible)
 * is marked read on the server up to the newest message this page has —
 * `read(from, upto)` for a direct, `readRoom(room, seq)` for a room — so the
 * user's other devices clear their badge (`myread`) and, for a direct, the
 * peer gets a receipt (their ticks).
 */
function markRead(conv) {
  if (!isViewing(conv)) return;
  conv.base.count = 0;
  if (conv.kind === 'room' && conv.latest > conv.roomRead) {
    conv.roomRead = conv.latest;
    client.readRoom(conv.name, conv.latest);
  }
  if (conv.kind === 'dm' && conv.lastInbox > conv.lastRead) {
    conv.lastRead = conv.lastInbox;
    client.read(conv.name, conv.lastInbox);
    saveDm(conv);
  }
  if (conv.unread) { conv.unread = 0; renderSidebar(); updateTitle(); }
}

function onRead(r) {
  const conv = convs.get(`u:${r.by}`);
  if (!conv || r.upto <= conv.readUpto) return;
  conv.readUpto = r.upto;
  saveDm(conv);
  refreshTicks(conv);
}

function refreshTicks(conv) {
  for (const item of conv.items) if (item.own && item.seq && !item.recalled) refreshItem(conv, item);
}

// ---- messenger: unread counts from the server, edits and recalls, typing ----

// Unread counts. The server keeps each conversation's read position and
// counts what is unread (conversations()); this page adds the messages that
// came after the listing. Reading here or on another device (`myread`)
// lowers the count.

/** conv.unread: the server's count, plus newer unread messages from others this page has. */
function recount(conv) {
  const room = conv.kind === 'room';
  const readPos = room ? conv.roomRead : conv.lastRead;
  let n = conv.base.count;
  for (const i of conv.items) {
    if (i.type !== 'msg' || i.own || i.recalled || typeof i.seq !== 'number') continue;
    const place = room ? i.seq : i.gid;
    if (typeof place === 'number' && place > conv.base.place && i.seq > readPos) n += 1;
  }
  conv.unread = n;
}

let listingTimer = null;
// On the first visit of this device, the rooms the server lists (the
// user's rooms on their other devices) are joined too.
let adoptRooms = false;

/** Fetches the conversation list again soon (several reasons in a burst: one request). */
function refreshListing(delay = 300) {
  clearTimeout(listingTimer);
  listingTimer = setTimeout(loadListing, delay);
}

async function loadListing() {
  const c = client;
  if (!c || !me) return;
  const entries = [];
  let before;
  try {
    for (let page = 0; page < 5; page += 1) {
      const reply = await c.conversations({ limit: 100, before });
      entries.push(...reply.conversations);
      if (!reply.next) break;
      before = reply.next;
    }
  } catch (err) {
    if (err.code !== 'closed') console.warn('conversations unavailable', err);
    return;
  }
  if (client !== c) return;
  const adopt = adoptRooms;
  adoptRooms = false;
  for (const entry of entries) applyListed(entry, adopt);
  renderSidebar();
  updateTitle();
}

/** One entry of conversations(): the server's unread count, read positions and newest message. */
function applyListed(e, adopt) {
  const last = e.last || null;
  const read = e.read || 0;
  let conv;
  if (e.room != null) {
    conv = convs.get(`r:${e.room}`);
    if (!conv) {
      if (!adopt) return; // left on this device
      joinRoom(e.room, false);
      conv = convs.get(`r:${e.room}`);
    }
    // Read further here since the list was made: nothing of it is unread.
    const readSince = conv.roomRead > read;
    if (read > conv.roomRead) conv.roomRead = read;
    if (last && last.seq > conv.latest) conv.latest = last.seq;
    conv.base = { count: readSince ? 0 : e.unread || 0, place: last ? last.seq : conv.latest };
  } else {
    conv = ensureDm(e.with);
    const readSince = conv.lastRead > read;
    if (read > conv.lastRead) conv.lastRead = read;
    if (last && last.to === me && last.seq > conv.lastInbox) conv.lastInbox = last.seq;
    if ((e.peer_read || 0) > conv.readUpto) {
      conv.readUpto = e.peer_read;
      refreshTicks(conv);
    }
    conv.base = { count: readSince ? 0 : e.unread || 0, place: last ? last.gid : conv.maxGid };
    saveDm(conv);
  }
  conv.listedLast = last;
  markRead(conv);
  recount(conv);
}

/** I read a conversation on another device: lower the badge here. */
function onMyRead(r) {
  const room = r.room != null;
  const conv = convs.get(room ? `r:${r.room}` : `u:${r.from}`);
  if (!conv) return;
  let covered;
  if (room) {
    if (r.upto > conv.roomRead) conv.roomRead = r.upto;
    covered = r.upto >= conv.latest;
  } else {
    if (r.upto > conv.lastRead) { conv.lastRead = r.upto; saveDm(conv); }
    covered = r.upto >= conv.lastInbox;
  }
  // Read up to the newest message this page knows: no unread left; read
  // only part of it: the server knows how many remain.
  if (covered) conv.base.count = 0; else refreshListing();
  recount(conv);
  renderSidebar();
  updateTitle();
}

function onJoinedRoom(j) {
  const conv = convs.get(`r:${j.room}`);
  if (!conv) return;
  if (j.seq > conv.latest) conv.latest = j.seq;
  // Not listed by the server (yet): count what comes after the first join.
  if (conv.base.place === Infinity) conv.base.place = j.seq;
  unreadChanged(conv);
}

// The conversation list: the newest message of each conversation, as a preview.

/** The newest message: of this page, or of the server's list when newer. */
function lastMessage(conv) {
  let last = null;
  for (let i = conv.items.length - 1; i >= 0; i -= 1) {
    if (conv.items[i].type === 'msg') { last = conv.items[i]; break; }
  }
  const listed = conv.listedLast;
  if (listed && (!last || listed.ts > last.ts)) {
    return { from: listed.from, own: listed.from === me, body: listed.body, recalled: listed.recalled, ts: listed.ts };
  }
  return last;
}

const lastActivity = (conv) => (lastMessage(conv) || { ts: 0 }).ts;

function previewOf(conv) {
  if (client && typingUsersOf(conv).length) {
    return el('span', { className: 'preview typing-preview', text: t('typing.short') });
  }
  const last = lastMessage(conv);
  if (!last) return null;
  let text;
  if (last.recalled) text = recalledText(last);
  else {
    const body = bodyText(last.body).replace(/\s+/g, ' ');
    if (last.own) text = t('directs.preview', { user: t('you'), text: body });
    else text = conv.kind === 'room' ? t('directs.preview', { user: last.from, text: body }) : body;
  }
  return el('span', { className: 'preview', text });
}

// Edits and recalls of my own messages: a menu on each (a button, also the
// context menu), offered within the server's windows.

/** What to name in edit()/recall(): {room, seq} or {to, gid}; null before the ack. */
function changeTarget(conv, item) {
  if (conv.kind === 'room') return typeof item.seq === 'number' ? { room: conv.name, seq: item.seq } : null;
  return typeof item.gid === 'number' ? { to: conv.name, gid: item.gid } : null;
}

const isTextBody = (body) => typeof body === 'string' || (!!body && typeof body.text === 'string');

/** Which of 'edit', 'recall' the menu of `item` offers now. */
function changesAllowed(conv, item) {
  if (item.type !== 'msg' || !item.own || item.recalled || item.status !== 'sent' || item.busy || item.editing) return [];
  if (!changeTarget(conv, item)) return [];
  const age = Date.now() - item.ts;
  const kinds = [];
  if (age < EDIT_WINDOW && isTextBody(item.body)) kinds.push('edit');
  if (age < RECALL_WINDOW) kinds.push('recall');
  return kinds;
}

let messageMenu = null; // {item, button, node} of the open menu

function openMessageMenu(conv, item, button) {
  closeMessageMenu(false);
  const kinds = changesAllowed(conv, item);
  if (!kinds.length || !button) { refreshItem(conv, item); return; }
  const entries = kinds.map((kind) => el('button', {
    type: 'button', role: 'menuitem', tabindex: '-1', className: `menu-item menu-${kind}`, text: t(`msg.${kind}`),
    onclick: () => {
      closeMessageMenu(false);
      if (kind === 'edit') startEdit(conv, item); else recallMessage(conv, item);
    },
  }));
  const node = el('div', { className: 'msg-menu', role: 'menu', 'aria-label': t('msg.actions') }, ...entries);
  node.addEventListener('keydown', (e) => {
    const at = entries.indexOf(document.activeElement);
    const move = { ArrowDown: at + 1, ArrowUp: at - 1, Home: 0, End: entries.length - 1 }[e.key];
    if (move !== undefined) {
      e.preventDefault();
      entries[(move + entries.length) % entries.length].focus();
    } else if (e.key === 'Escape') {
      e.preventDefault();
      e.stopPropagation();
      closeMessageMenu(true);
    } else if (e.key === 'Tab') {
      closeMessageMenu(false);
    }
  });
  document.body.append(node);
  const at = button.getBoundingClientRect();
  const width = node.offsetWidth;
  const height = node.offsetHeight;
  node.style.left = `${Math.max(8, Math.min(at.right - width, window.innerWidth - width - 8))}px`;
  const below = at.bottom + 4;
  node.style.top = `${below + height > window.innerHeight - 8 ? Math.max(8, at.top - height - 4) : below}px`;
  button.setAttribute('aria-expanded', 'true');
  messageMenu = { item, button, node };
  entries[0].focus();
}

function closeMessageMenu(refocus) {
  if (!messageMenu) return;
  const { button, node } = messageMenu;
  messageMenu = null;
  node.remove();
  button.setAttribute('aria-expanded', 'false');
  if (refocus && button.isConnected) button.focus();
}

function editForm(conv, item) {
  const area = el('textarea', { className: 'edit-text', rows: '2', maxlength: '4000', 'aria-label': t('msg.editLabel') });
  area.value = item.draft ?? bodyText(item.body);
  area.addEventListener('input', () => { item.draft = area.value; });
  const form = el('form', { className: 'edit-form', onsubmit: (e) => { e.preventDefault(); saveEdit(conv, item, area.value); } },
    area,
    el('div', { className: 'edit-actions' },
      el('button', { type: 'button', className: 'ghost edit-cancel', text: t('msg.cancel'), onclick: () => cancelEdit(conv, item) }),
      el('button', { type: 'submit', className: 'primary edit-save', text: t('msg.save') })));
  area.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') { e.preventDefault(); cancelEdit(conv, item); }
    // As in the composer: Enter saves, Shift+Enter is a new line, not while an IME composes.
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) { e.preventDefault(); form.requestSubmit(); }
  });
  return form;
}

function startEdit(conv, item) {
  item.editing = true;
  item.draft = bodyText(item.body);
  item.changeError = null;
  refreshItem(conv, item);
  const area = item.el && item.el.querySelector('.edit-form textarea');
  if (area) { area.focus(); area.setSelectionRange(area.value.length, area.value.length); }
}

function cancelEdit(conv, item) {
  item.editing = false;
  item.draft = undefined;
  refreshItem(conv, item);
  const button = item.el && item.el.querySelector('.msg-menu-button');
  if (button) button.focus(); else $('text').focus();
}

/** The server's refusal of an edit or recall, as the user should read it. */
function changeErrorText(kind, err) {
  if (err.code === 'forbidden') return t(`change.late.${kind}`);
  if (err.code === 'not_found') return t('change.gone');
  if (err.code === 'bad_request') return t('change.recalled');
  return errorText(err);
}

async function saveEdit(conv, item, text) {
  const target = changeTarget(conv, item);
  item.editing = false;
  item.draft = undefined;
  if (!target || !text.trim() || text === bodyText(item.body)) { cancelEdit(conv, item); return; }
  const body = typeof item.body === 'string' ? text : { ...item.body, text };
  await change(conv, item, 'edit', () => client.edit(target, body), () => applyEdit(conv, item, body, Date.now()));
}

async function recallMessage(conv, item) {
  const target = changeTarget(conv, item);
  if (!target) return;
  await change(conv, item, 'recall', () => client.recall(target), () => applyRecall(conv, item, Date.now()));
  if (item.recalled && isWide()) $('text').focus();
}

/** Runs an edit or recall: "Saving…" / "Recalling…" until the ack, then `done`; a refusal is shown on the message. */
async function change(conv, item, kind, request, done) {
  item.busy = kind;
  item.changeError = null;
  refreshItem(conv, item);
  try {
    await request();
    item.busy = null;
    done();
  } catch (err) {
    item.busy = null;
    if (err.code !== 'closed') item.changeError = () => changeErrorText(kind, err);
    refreshItem(conv, item);
  }
}

function applyEdit(conv, item, body, ts) {
  if (item.recalled || (item.edited && ts <= item.edited)) return;
  item.body = body;
  item.edited = ts || Date.now();
  refreshItem(conv, item);
  renderSidebar();
}

function applyRecall(conv, item, ts) {
  if (item.recalled) return;
  item.recalled = ts || Date.now();
  item.body = null;
  item.editing = false;
  item.draft = undefined;
  item.busy = null;
  item.changeError = null;
  if (messageMenu && messageMenu.item === item) closeMessageMenu(false);
  refreshItem(conv, item);
  renderSidebar();
}

/** A message from history or a replay, in its current state: apply what changed since it was shown. */
function mergeChanges(conv, item, m) {
  if (m.recalled) applyRecall(conv, item, m.recalled);
  else if (m.edited) applyEdit(conv, item, m.body, m.edited);
}

/** An `edit` or `recall` event: of a room message (target: seq) or a direct (target: gid). */
function onChangeEvent(e) {
  const room = e.room != null;
  const conv = convs.get(room ? `r:${e.room}` : `u:${e.from === me ? e.to : e.from}`);
  if (!conv) return;
  // The change has a seq of its own: the room's, or (to me) my inbox's.
  if (room && e.seq > conv.latest) conv.latest = e.seq;
  if (!room && e.to === me && e.seq > conv.lastInbox) conv.lastInbox = e.seq;
  const item = conv.items.find((i) => i.type === 'msg' && (room ? i.seq : i.gid) === e.target);
  if (item && e.type === 'edit') applyEdit(conv, item, e.body, e.ts);
  if (item && e.type === 'recall') applyRecall(conv, item, e.ts);
  const listed = conv.listedLast;
  if (listed && (room ? listed.seq : listed.gid) === e.target) {
    conv.listedLast = e.type === 'edit' ? { ...listed, body: e.body, edited: e.ts } : { ...listed, body: null, recalled: e.ts };
  }
  // A recalled message is no longer unread: the server counts again.
  if (e.type === 'recall' && e.from !== me && conv.unread) refreshListing();
  unreadChanged(conv);
}

/** The edit/recall windows pass: the menu button goes away. */
function expireChangeMenus() {
  const conv = convs.get(active);
  if (!conv) return;
  for (const item of conv.items) {
    if (!item.own || !item.el || item.type !== 'msg') continue;
    const shown = 'changeable' in item.el.dataset;
    if (shown !== changesAllowed(conv, item).length > 0) refreshItem(conv, item);
  }
}

// Typing: the composer says when I type (client.typing() throttles it);
// the header shows who types in the open conversation, the list "typing…".

const typingTarget = (conv) => (conv.kind === 'room' ? { room: conv.name } : { to: conv.name });
const typingUsersOf = (conv) => client.typingUsers(conv.kind === 'room' ? { room: conv.name } : { with: conv.name });

function typingText(users) {
  if (!users.length) return '';
  if (users.length === 1) return t('typing.one', { user: users[0] });
  if (users.length === 2) return t('typing.two', { a: users[0], b: users[1] });
  return t('typing.many', { a: users[0], b: users[1], count: users.length - 2, total: users.length });
}

function renderTyping(conv) {
  const text = client ? typingText(typingUsersOf(conv)) : '';
  $('typing').textContent = text;
  $('typing').hidden = !text;
  $('conv-sub').hidden = !!text;
}

function onTyping(e) {
  const conv = convs.get(e.room != null ? `r:${e.room}` : `u:${e.with}`);
  if (!conv) return;
  if (conv.key === active) renderTyping(conv);
  renderSidebar();
}

function composerTyping() {
  const conv = convs.get(active);
  if (conv && client) client.typing(typingTarget(conv), $('text').value.trim() !== '');
}

function stopTyping(conv) {
  if (conv && client) client.typing(typingTarget(conv), false);
}

function wireMessenger(c) {
  c.on('welcome', () => refreshListing(0)); // every reconnect: counts may have changed meanwhile
  c.on('joined', onJoinedRoom);
  c.on('myread', onMyRead);
  c.on('edit', onChangeEvent);
  c.on('recall', onChangeEvent);
  c.on('typing', onTyping);
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
  stopTyping(conv);
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
  // The stored read positions (docs/PROTOCOL.md, `history`): mine, and for
  // a direct the peer's (ticks after a reload or a reconnect).
  const receipt = conv.kind === 'dm' && page.peer_read > conv.readUpto;
  if (receipt) conv.readUpto = page.peer_read;
  if (conv.kind === 'dm' && page.read > conv.lastRead) conv.lastRead = page.read;
  if (conv.kind === 'room' && page.read > conv.roomRead) conv.roomRead = page.read;
  if (conv.kind === 'dm') saveDm(conv);
  if (receipt) refreshTicks(conv);
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
  unreadChanged(conv);
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
function unreadChanged(conv) {
  markRead(conv);
  recount(conv);
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
  }, el('span', { className: 'conv-main' }, el('span', { className: 'name', text: label }), previewOf(conv)));
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
  // Newest message first, as in a messenger; conversations without one by name.
  const byName = (a, b) => (lastActivity(b) - lastActivity(a)) || a.name.localeCompare(b.name);
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
  renderTyping(conv);
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
  const previous = convs.get(active);
  if (previous && previous.key !== key) stopTyping(previous);
  closeMessageMenu(false);
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
  wireMessenger(c);
  c.on('error', (err) => console.warn('switchboard:', err.code, err.message));
  $('signin').hidden = true;
  $('chat').hidden = false;
  $('chat').dataset.view = 'list';
  const rooms = storage.json(userKey('rooms'), null);
  adoptRooms = rooms === null;
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
  refreshListing(0);
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
  closeMessageMenu(false);
  clearTimeout(listingTimer);
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
  $('text').addEventListener('input', composerTyping);
  document.addEventListener('click', (e) => {
    if (messageMenu && !messageMenu.node.contains(e.target) && !messageMenu.button.contains(e.target)) closeMessageMenu(false);
  });
  $('scroller').addEventListener('scroll', () => closeMessageMenu(false), { passive: true });
  window.addEventListener('resize', () => closeMessageMenu(false));
  setInterval(expireChangeMenus, 10_000);
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
