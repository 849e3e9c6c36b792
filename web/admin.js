// Switchboard dashboard (/admin). Polls GET /api/stats once a second, keeps
// the last five minutes of answers in a ring and draws them as small inline
// SVG charts, plus the busiest rooms. No library: this file, admin.html and
// admin.css are the whole page, embedded in the binary like the chat app.
//
// Authentication: a navigation cannot carry `Authorization: Bearer`, so the
// page loads without the key and asks for it. The key is kept in this tab's
// sessionStorage (gone with the tab; localStorage would keep it on disk for
// every later visitor of the browser profile), sent only in the header of
// these same-origin fetches, and never logged or shown. It is stored only
// after the server has accepted it.
//
// Everything from the server is put on the page with textContent, never as
// HTML.

const STATS = '/api/stats';
const KEY_ITEM = 'switchboard.admin.key';
const INTERVAL_MS = 1000;
const TIMEOUT_MS = 5000;
/** What the charts span once the ring is full (seconds). */
const WINDOW_S = 300;
/** Shortest span drawn, so the first few points do not fill the width. */
const MIN_SPAN_S = 10;
/** Each fan-out percentile is over the messages of this many seconds: one
 * second alone often holds none on a quiet server (a gap in the line). */
const LATENCY_S = 5;
/** A room's messages per second are over this many seconds. */
const ROOM_RATE_S = 5;
const BUSIEST = 10;
const SVG = 'http://www.w3.org/2000/svg';
const W = 300;
const H = 100;

const $ = (id) => document.getElementById(id);

// Totals that add up across nodes.
const SUMMED = [
  'connections', 'sockets', 'users', 'rooms', 'connections_accepted', 'connections_refused',
  'messages_in', 'messages_out', 'bytes_in', 'bytes_out', 'slow_consumer_disconnects',
  'heartbeat_timeouts',
];

/**
 * One answer of /api/stats as one sample. The answer lists nodes (one for
 * a single server); their numbers are added up, so a cluster's answer draws
 * the same charts. `t` is the first node's uptime: rates are differences
 * over the server's own clock, not over when the browser's polls happened
 * to run.
 */
function sample(stats) {
  const nodes = Array.isArray(stats?.nodes) ? stats.nodes : [];
  const s = { t: Number(nodes[0]?.uptime_seconds) || 0, errors: {}, les: [], buckets: [], fanouts: 0, busiest: new Map() };
  for (const k of SUMMED) s[k] = 0;
  for (const node of nodes) {
    for (const k of SUMMED) s[k] += Number(node[k]) || 0;
    for (const [code, n] of Object.entries(node.errors ?? {})) s.errors[code] = (s.errors[code] ?? 0) + (Number(n) || 0);
    const h = node.fanout_seconds ?? {};
    (h.buckets ?? []).forEach((b, i) => {
      s.les[i] = Number(b.le);
      s.buckets[i] = (s.buckets[i] ?? 0) + (Number(b.count) || 0);
    });
    s.fanouts += Number(h.count) || 0;
    for (const r of node.busiest_rooms ?? []) {
      const room = s.busiest.get(r.room) ?? { online: 0, seq: 0 };
      room.online += Number(r.online) || 0;
      room.seq = Math.max(room.seq, Number(r.seq) || 0);
      s.busiest.set(String(r.room), room);
    }
  }
  return s;
}

// ---- the ring ----

let ring = [];

function record(s) {
  const last = ring[ring.length - 1];
  // The server restarted (its clock or a counter went back): the old
  // samples cannot be subtracted from the new ones.
  if (last && (s.t < last.t || s.messages_in < last.messages_in || s.fanouts < last.fanouts)) ring = [];
  // Two answers from the same instant (cannot divide by zero time): the newer stands.
  else if (last && s.t === last.t) ring.pop();
  ring.push(s);
  // A few seconds more than shown, for the look-backs of the oldest points.
  const keep = s.t - WINDOW_S - Math.max(LATENCY_S, ROOM_RATE_S) - 1;
  while (ring.length > 2 && ring[0].t < keep) ring.shift();
}

/** The newest sample at least `seconds` older than ring[i] (or the oldest). */
function before(i, seconds) {
  let j = i - 1;
  while (j > 0 && ring[i].t - ring[j].t < seconds) j--;
  return j >= 0 ? j : null;
}

/** Per second between ring[i-1] and ring[i]. */
function rate(i, value) {
  if (i < 1) return null;
  const dt = ring[i].t - ring[i - 1].t;
  return dt > 0 ? Math.max(0, value(ring[i]) - value(ring[i - 1])) / dt : null;
}

/**
 * The q-quantile of the fan-outs in the LATENCY_S seconds up to ring[i],
 * from the difference of the cumulative buckets, interpolated within a
 * bucket as Prometheus' histogram_quantile does. null without fan-outs.
 */
function fanoutQuantile(i, q) {
  const j = before(i, LATENCY_S);
  if (j === null) return null;
  const a = ring[j];
  const b = ring[i];
  const total = b.fanouts - a.fanouts;
  if (total <= 0) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (let k = 0; k < b.les.length; k++) {
    const upto = b.buckets[k] - (a.buckets[k] ?? 0);
    if (upto >= rank) {
      const inside = upto - below;
      return inside > 0 ? lower + ((b.les[k] - lower) * (rank - below)) / inside : b.les[k];
    }
    lower = b.les[k];
    below = upto;
  }
  // Above the largest bound: that bound, as Prometheus reports it.
  return b.les.length ? b.les[b.les.length - 1] : null;
}

// ---- formatting ----

const fmtCount = (v) => Math.round(v).toLocaleString('en-US');
const fmtRate = (v) => (v >= 10 || Number.isInteger(v) ? fmtCount(v) : v.toFixed(1));
function fmtSeconds(v) {
  if (v < 0.001) return `${Math.round(v * 1e6)} µs`;
  if (v < 1) return `${Number((v * 1e3).toPrecision(3))} ms`;
  return `${Number(v.toPrecision(3))} s`;
}
function fmtBytes(v) {
  if (v < 1000) return `${Math.round(v)} B`;
  if (v < 1e6) return `${(v / 1e3).toFixed(1)} kB`;
  return `${(v / 1e6).toFixed(1)} MB`;
}
function fmtSpan(s) {
  if (s < 90) return `${Math.round(s)} s`;
  return `${Math.round(s / 60)} min`;
}
function fmtUptime(s) {
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return `up ${d} d ${h} h`;
  if (h) return `up ${h} h ${m} min`;
  return m ? `up ${m} min` : `up ${Math.floor(s)} s`;
}

/** The top of a scale: the smallest round number (1, 1.5, 2, 2.5, 3, 4, 5,
 * 6 or 8 × 10^k) at or above `v`, and at least `floor`. */
function niceCeil(v, floor) {
  if (!(v > floor)) return floor;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// ---- the charts ----

const gauge = (key) => (i) => ring[i][key];
const perSecond = (key) => (i) => rate(i, (s) => s[key]);

/**
 * Each chart: its series ({name, value(i) → number|null}), how its numbers
 * read, the least top of its scale, and an optional footnote.
 */
const CHARTS = [
  { id: 'connections', title: 'Connections', format: fmtCount, floor: 1, area: true,
    series: () => [{ name: 'connections', value: gauge('connections') }] },
  { id: 'users', title: 'Users online', format: fmtCount, floor: 1, area: true,
    series: () => [{ name: 'users', value: gauge('users') }] },
  { id: 'rooms', title: 'Rooms with members', format: fmtCount, floor: 1, area: true,
    series: () => [{ name: 'rooms', value: gauge('rooms') }] },
  { id: 'messages', title: 'Messages per second', format: fmtRate, floor: 1,
    series: () => [
      { name: 'in', value: perSecond('messages_in') },
      { name: 'out', value: perSecond('messages_out') },
    ] },
  { id: 'fanout', title: `Fan-out latency (over ${LATENCY_S} s)`, format: fmtSeconds, floor: 0.0001,
    series: () => [
      { name: 'p50', value: (i) => fanoutQuantile(i, 0.5) },
      { name: 'p99', value: (i) => fanoutQuantile(i, 0.99) },
    ] },
  { id: 'bytes', title: 'Bytes per second', format: fmtBytes, floor: 1000,
    series: () => [
      { name: 'in', value: perSecond('bytes_in') },
      { name: 'out', value: perSecond('bytes_out') },
    ] },
  { id: 'disconnects', title: 'Disconnects per second', format: fmtRate, floor: 1,
    series: () => [
      { name: 'slow consumers', value: perSecond('slow_consumer_disconnects') },
      { name: 'timeouts', value: perSecond('heartbeat_timeouts') },
    ],
    footnote: (s) => `since start: ${fmtCount(s.slow_consumer_disconnects)} slow consumers, ${fmtCount(s.heartbeat_timeouts)} timeouts` },
  { id: 'errors', title: 'Errors per second, by code', format: fmtRate, floor: 1,
    // Only the codes that occurred in the window: seven flat lines at zero
    // would hide the one that matters.
    series: (from) => errorCodes(from).map((code) => ({ name: code, value: (i) => rate(i, (s) => s.errors[code] ?? 0) })),
    empty: 'none',
    footnote: (s) => `since start: ${fmtCount(Object.values(s.errors).reduce((a, b) => a + b, 0))}` },
];

function errorCodes(from) {
  const last = ring[ring.length - 1];
  const first = ring[Math.max(0, from - 1)];
  return Object.keys(last.errors).filter((code) => last.errors[code] > (first.errors[code] ?? 0)).sort();
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

/** Builds the cards once; draw() fills them. */
function buildCharts() {
  const box = $('charts');
  for (const chart of CHARTS) {
    const fig = el('figure', 'card chart');
    fig.dataset.chart = chart.id;
    fig.dataset.points = '0';
    fig.append(el('h2', '', chart.title));
    chart.legend = el('div', 'legend');
    const plot = el('div', 'plot');
    chart.svg = svgEl('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', 'aria-hidden': 'true' });
    chart.ymax = el('span', 'ymax');
    plot.append(chart.svg, chart.ymax);
    const axis = el('div', 'axis');
    chart.from = el('span');
    axis.append(chart.from, el('span', '', 'now'));
    fig.append(chart.legend, plot, axis);
    if (chart.footnote) {
      chart.note = el('p', 'footnote');
      fig.append(chart.note);
    }
    chart.fig = fig;
    box.append(fig);
  }
}

/** An SVG path through the points, broken where a value is null. */
function pathOf(points) {
  let d = '';
  let pen = false;
  for (const [x, y] of points) {
    if (y === null) { pen = false; continue; }
    d += `${pen ? 'L' : 'M'}${x.toFixed(2)},${y.toFixed(2)}`;
    pen = true;
  }
  return d;
}

function draw() {
  if (!ring.length) return;
  const last = ring.length - 1;
  const now = ring[last].t;
  const span = Math.min(WINDOW_S, Math.max(MIN_SPAN_S, now - ring[0].t));
  const start = now - span;
  let from = ring.findIndex((s) => s.t >= start);
  if (from < 0) from = last;
  const xOf = (i) => ((ring[i].t - start) / span) * W;
  for (const chart of CHARTS) {
    const series = chart.series(from);
    const values = series.map((s) => {
      const v = [];
      for (let i = from; i <= last; i++) v.push(s.value(i));
      return v;
    });
    // A tenth of headroom, so a line at its peak stays clear of the label.
    const top = niceCeil(1.1 * Math.max(0, ...values.flat().filter((v) => v !== null)), chart.floor);
    const yOf = (v) => (v === null ? null : H - (Math.min(v, top) / top) * H);
    const shapes = [
      svgEl('line', { x1: 0, x2: W, y1: H / 2, y2: H / 2, class: 'gridline', 'vector-effect': 'non-scaling-stroke' }),
      svgEl('line', { x1: 0, x2: W, y1: 0, y2: 0, class: 'gridline', 'vector-effect': 'non-scaling-stroke' }),
      svgEl('line', { x1: 0, x2: W, y1: H, y2: H, class: 'baseline', 'vector-effect': 'non-scaling-stroke' }),
    ];
    series.forEach((s, n) => {
      const points = values[n].map((v, k) => [xOf(from + k), yOf(v)]);
      const d = pathOf(points);
      if (chart.area && n === 0 && d) {
        const first = points.find((p) => p[1] !== null);
        const lastPoint = points.findLast((p) => p[1] !== null);
        shapes.push(svgEl('path', { d: `${d}L${lastPoint[0].toFixed(2)},${H}L${first[0].toFixed(2)},${H}Z`, class: 'area' }));
      }
      shapes.push(svgEl('path', { d, class: `line s${n % 7}`, 'vector-effect': 'non-scaling-stroke' }));
    });
    chart.svg.replaceChildren(...shapes);
    chart.ymax.textContent = chart.format(top);
    chart.from.textContent = `−${fmtSpan(span)}`;
    chart.fig.dataset.points = String(last - from + 1);

    const items = series.map((s, n) => {
      const v = values[n][values[n].length - 1];
      const item = el('span', 'item');
      item.dataset.series = s.name;
      item.dataset.value = v === null ? '' : String(v);
      item.append(el('span', `swatch s${n % 7}`), el('span', 'value', v === null ? '–' : chart.format(v)), el('span', 'label', s.name));
      return item;
    });
    if (!items.length) items.push(el('span', 'none', chart.empty ?? ''));
    chart.legend.replaceChildren(...items);
    if (chart.note) chart.note.textContent = chart.footnote(ring[last]);
  }
  $('span').textContent = `last ${fmtSpan(span)}`;
  $('uptime').textContent = fmtUptime(now);
  drawRooms();
}

function drawRooms() {
  const last = ring.length - 1;
  const now = ring[last];
  const j = before(last, ROOM_RATE_S);
  const then = j === null || j === last ? null : ring[j];
  const rows = [...now.busiest.entries()]
    .sort((a, b) => b[1].online - a[1].online || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
    .slice(0, BUSIEST)
    .map(([name, room]) => {
      const tr = el('tr');
      tr.dataset.room = name;
      const old = then?.busiest.get(name);
      const perSec = old && now.t > then.t ? Math.max(0, room.seq - old.seq) / (now.t - then.t) : null;
      tr.append(
        el('td', 'name', name),
        el('td', 'num online', fmtCount(room.online)),
        el('td', 'num rate', perSec === null ? '–' : fmtRate(perSec)),
      );
      return tr;
    });
  $('rooms').tBodies[0].replaceChildren(...rows);
  $('rooms').hidden = rows.length === 0;
  $('rooms-empty').hidden = rows.length > 0;
}

// ---- polling and the key ----

/** GET /api/stats with the key: {ok, stats} or {status} or {unreachable}. */
async function fetchStats(key) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
  try {
    const res = await fetch(STATS, {
      headers: { Authorization: `Bearer ${key}` },
      cache: 'no-store',
      credentials: 'omit',
      signal: abort.signal,
    });
    if (!res.ok) return { status: res.status };
    return { ok: true, stats: await res.json() };
  } catch {
    return { unreachable: true };
  } finally {
    clearTimeout(timer);
  }
}

let key = null;
let timer = null;
/** Bumped when polling stops, so an answer still in flight is dropped. */
let generation = 0;

function setStatus(state, text) {
  $('status').dataset.state = state;
  $('status').textContent = text;
}

function refusal(status) {
  if (status === 401) return 'That key was not accepted.';
  if (status === 404) return 'The dashboard is off: the server runs without --api-key.';
  return `The server answered ${status}.`;
}

function showLogin(message) {
  stop();
  key = null;
  ring = [];
  $('dash').hidden = true;
  $('login').hidden = false;
  $('login-error').hidden = !message;
  $('login-error').textContent = message ?? '';
  $('key').value = '';
  $('key').focus();
}

function showDash() {
  $('login').hidden = true;
  $('dash').hidden = false;
}

function stop() {
  generation++;
  clearTimeout(timer);
  timer = null;
}

function start(first) {
  stop();
  ring = [];
  showDash();
  setStatus('live', 'live');
  if (first) { record(sample(first)); draw(); }
  const gen = generation;
  const tick = async () => {
    const began = performance.now();
    const answer = await fetchStats(key);
    if (gen !== generation) return;
    if (answer.ok) {
      setStatus('live', 'live');
      record(sample(answer.stats));
      draw();
    } else if (answer.status === 401 || answer.status === 404) {
      // The key was changed or removed on the server: ask again.
      sessionStorage.removeItem(KEY_ITEM);
      showLogin(refusal(answer.status));
      return;
    } else {
      setStatus('retrying', answer.unreachable ? 'server unreachable, retrying' : `server answered ${answer.status}, retrying`);
    }
    timer = setTimeout(tick, Math.max(0, INTERVAL_MS - (performance.now() - began)));
  };
  timer = setTimeout(tick, first ? INTERVAL_MS : 0);
}

async function submitKey(event) {
  event.preventDefault();
  const given = $('key').value.trim();
  const error = $('login-error');
  error.hidden = true;
  if (!given) {
    error.textContent = 'Enter the API key.';
    error.hidden = false;
    return;
  }
  // fetch() refuses a header it cannot send; say why instead.
  if (/[^\x20-\x7e]/.test(given)) {
    error.textContent = 'An API key is plain ASCII text.';
    error.hidden = false;
    return;
  }
  $('login-submit').disabled = true;
  const answer = await fetchStats(given);
  $('login-submit').disabled = false;
  if (answer.ok) {
    key = given;
    sessionStorage.setItem(KEY_ITEM, key);
    $('key').value = '';
    start(answer.stats);
  } else {
    error.textContent = answer.unreachable ? 'Cannot reach the server.' : refusal(answer.status);
    error.hidden = false;
  }
}

buildCharts();
$('login-form').addEventListener('submit', submitKey);
$('forget').addEventListener('click', () => {
  sessionStorage.removeItem(KEY_ITEM);
  showLogin();
});
key = sessionStorage.getItem(KEY_ITEM);
if (key) start(null);
else showLogin();
