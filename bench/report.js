// Renders BENCHMARKS.md from the JSON results bench/run.sh collected.
// Reads BENCH_* environment variables (set by run.sh), bench/targets.json
// (the targets judged) and the files in BENCH_WORK (results.jsonl: every
// result, or failure, with its identity; NAME.server notes;
// commands-SECTION.{servers,bench}); writes to stdout.
// Ends with bench/profile-notes.md, copied as is, when it exists.
'use strict';
const fs = require('fs');
const path = require('path');

const env = process.env;
const work = env.BENCH_WORK;
const readText = (file) => {
  try {
    return fs.readFileSync(path.join(work, file), 'utf8');
  } catch {
    return null;
  }
};
// The typed results file run.sh collects: one JSON object per line, each a
// scenario's result with its identity (scenario, server, mode, store, label,
// its parameters, `run`: the name of its server-notes file), or, for a
// measurement that failed or was skipped, that identity and `failure` (why).
const results = (readText('results.jsonl') || '')
  .split('\n')
  .filter(Boolean)
  .map((text) => {
    try {
      return JSON.parse(text);
    } catch {
      return null;
    }
  })
  .filter(Boolean);
// A record matches when every key of `query` equals (or, for a function,
// satisfies) the record's value.
const matches = (record, query) =>
  Object.entries(query).every(([key, want]) => (typeof want === 'function' ? want(record[key]) : record[key] === want));
// One measurement: its result (null if there is none) and why it failed.
const fromRecord = (record) =>
  record
    ? { name: record.run, r: record.failure == null ? record : null, failed: record.failure == null ? null : String(record.failure) || 'failed' }
    : { name: null, r: null, failed: null };
const measurement = (query) => fromRecord(results.find((record) => matches(record, query)));
// The numeric goals, stated once, in bench/targets.json.
const targets = JSON.parse(fs.readFileSync(path.join(__dirname, 'targets.json'), 'utf8'));
const missing = (m) => (m.failed ? `failed: ${m.failed.replace(/^Error:\s*/, '').replace(/\|/g, '\\|')}` : 'not measured in this run');
const serverNotes = (name) => (readText(`${name}.server`) || '').trim().split('\n').filter(Boolean);

// ---- Formatting.
const int = (n) => (n == null || !Number.isFinite(Number(n)) ? 'n/a' : Math.round(n).toLocaleString('en-US'));
const lat = (us) =>
  us == null ? 'n/a' : us < 1000 ? `${us} µs` : us < 1e6 ? `${(us / 1000).toPrecision(3)} ms` : `${(us / 1e6).toPrecision(3)} s`;
const secs = (s) => (s == null ? 'n/a' : s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toPrecision(3)} s`);
const ratio = (a, b) => {
  if (!b || a == null) return 'n/a';
  const x = a / b;
  return `${x >= 10 ? x.toFixed(0) : x >= 1 ? x.toFixed(1) : x.toPrecision(2)}×`;
};
const pct = (v) => (v == null ? 'n/a' : `${v}%`);
const bytes = (b) => (b == null ? 'n/a' : `${int(b)} B`);
const mib = (kib) => (kib == null ? 'n/a' : `${(kib / 1024).toFixed(1)} MiB`);
const tick = (ok) => (ok ? '✅' : '❌');
const plural = (n, word) => `${int(n)} ${word}${n === 1 ? '' : 's'}`;
const signedPct = (x) => `${x >= 0 ? '+' : '−'}${Math.abs(Math.round(x * 100))}%`;
const dashes = (n) => Array(n).fill('—').join(' | ');

const out = [];
const line = (s = '') => out.push(s);
// Hand-written, copied at the end as it is.
let notes = null;
try {
  notes = fs.readFileSync(path.join(__dirname, 'profile-notes.md'), 'utf8');
} catch {
  notes = null;
}
// The commands of a section, as run.sh recorded them.
let commandsExplained = false;
function commands(section, fallback) {
  const servers = (readText(`commands-${section}.servers`) || '').split('\n').filter(Boolean);
  let bench = (readText(`commands-${section}.bench`) || '').split('\n').filter(Boolean);
  if (!bench.length && fallback) bench = fallback.split('\n').filter(Boolean);
  line('```sh');
  for (const c of [...servers, ...bench]) line(c);
  line('```');
  line();
  if (commandsExplained) {
    line('As everywhere: `--label`, `--server-pid` and `--json FILE` added, a fresh server per measurement.');
  } else {
    commandsExplained = true;
    line('Every bench command also got `--label`, `--server-pid` (for the server CPU and memory columns) and');
    line('`--json FILE`; every server was started afresh for each measurement (Switchboard on a fresh, empty data');
    line('directory DIR), and `$PORT` is the port it chose.');
  }
  line();
}

// ---- The measurements.
// Each target of a comparison is found by its server and mode.
const fanTargets = [
  { key: { server: 'switchboard', mode: 'room' }, title: 'Switchboard, room mode (`/ws`, JSON protocol)', short: 'Switchboard room' },
  { key: { server: 'switchboard', mode: 'relay' }, title: 'Switchboard, relay mode (`/relay/bench`)', short: 'Switchboard relay' },
  { key: { server: 'node-ws', mode: 'relay' }, title: 'Node.js `ws` broadcast baseline', short: 'Node ws', baseline: true },
  { key: { server: 'socketio', mode: 'socketio' }, title: 'Socket.IO broadcast baseline', short: 'Socket.IO', baseline: true },
];
// The HTTP fallback's subscribers (publisher on /ws), measured at the small
// fan-out size only.
const sseTarget = { key: { server: 'switchboard', mode: 'sse' }, title: 'Switchboard, room mode, subscribers over SSE (`/sse`, the HTTP fallback)', short: 'Switchboard SSE' };
const fanTargetsSmall = [...fanTargets.slice(0, 2), sseTarget, ...fanTargets.slice(2)];
const flatOut = (rate) => rate === 0;
const atFixedRate = (rate) => rate !== 0;
// The fan-out to many at a calm rate (run.sh's BIG_CALM_RATE), told apart
// from the half-of-peak one by its run's name.
const isCalm = (run) => typeof run === 'string' && run.startsWith('big-calm-');
const fanSet = (query, list = fanTargets) =>
  list.map((t) => ({ ...t, ...measurement({ scenario: 'fanout', ...query, ...t.key }) }));
// The two fan-out sizes run.sh measured (its SUBSCRIBERS and SUBSCRIBERS_BIG).
const fanSmall = Number(env.BENCH_SUBSCRIBERS);
const fanBig = Number(env.BENCH_SUBSCRIBERS_BIG);
const sets = {
  flat: fanSet({ subscribers: fanSmall, rate: flatOut }, fanTargetsSmall),
  fixed: fanSet({ subscribers: fanSmall, rate: atFixedRate }, fanTargetsSmall),
  bigFlat: fanSet({ subscribers: fanBig, rate: flatOut }),
  bigFixed: fanSet({ subscribers: fanBig, rate: atFixedRate, run: (run) => !isCalm(run) }, fanTargets.filter((t) => !t.baseline)),
  bigCalm: fanSet({ subscribers: fanBig, run: isCalm }, fanTargets.filter((t) => !t.baseline)),
};
const byServer = (set, server, mode) => set.find((t) => t.key.server === server && t.key.mode === mode);
const median = (xs) => {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)];
};
// The run of `runs` (measured rounds) whose `by` is the median: by default
// throughput (the publish rounds).
const medianRun = (runs, by = (r) => r.acks_per_sec) => {
  const sorted = [...runs].sort((a, b) => by(a.r) - by(b.r));
  return sorted[Math.floor((sorted.length - 1) / 2)];
};
// The /ws measurement at few connections (run.sh's CONNECT_FEW): its own
// target, and kept apart from the same server and mode at CONNECT_N.
const connectFew = Number(env.BENCH_CONNECT_FEW) || null;
const atMany = (n) => n !== connectFew;
const connectTargets = [
  { key: { server: 'switchboard', mode: 'ws', connections: atMany }, title: 'Switchboard `/ws?user=` (identified, no room)', short: 'Switchboard ws', sb: true },
  { key: { server: 'switchboard', mode: 'room', connections: atMany }, title: 'Switchboard `/ws?user=` + `join` (100 per room)', short: 'Switchboard room', sb: true },
  { key: { server: 'switchboard', mode: 'relay', connections: atMany }, title: 'Switchboard `/relay/CHANNEL` (100 per channel)', short: 'Switchboard relay', sb: true },
  // The fallback is reported, not held to the WebSocket's target (see the note under the table).
  { key: { server: 'switchboard', mode: 'sse' }, title: 'Switchboard `/sse?user=` + POSTed `join` (the HTTP fallback, 100 per room)', short: 'Switchboard SSE', sse: true },
  { key: { server: 'node-ws', mode: 'relay' }, title: 'Node.js `ws` baseline (any path)', short: 'Node ws', baseline: true },
  { key: { server: 'socketio', mode: 'socketio' }, title: 'Socket.IO baseline (namespace connected)', short: 'Socket.IO', baseline: true },
  ...(connectFew
    ? [{ key: { server: 'switchboard', mode: 'ws', connections: connectFew }, title: `Switchboard \`/ws?user=\` (identified, no room), ${connectFew.toLocaleString('en-US')} connections`, short: `Switchboard ws at ${connectFew.toLocaleString('en-US')}`, sb: true, few: true }]
    : []),
].map((t) => {
  if (!t.few) return { ...t, ...measurement({ scenario: 'connect', ...t.key }) };
  // run.sh measures FEW_ROUNDS fresh servers here (their one-time costs
  // scatter): the row is the median one by RSS per connection, and the
  // verdict is on it, with the range beside it.
  const runs = results.filter((record) => matches(record, { scenario: 'connect', ...t.key })).map(fromRecord);
  const measured = runs.filter((x) => x.r && x.r.rss_per_conn_bytes != null);
  const picked = measured.length ? medianRun(measured, (r) => r.rss_per_conn_bytes) : runs[0] || fromRecord(null);
  return { ...t, ...picked, rounds: measured.map((x) => x.r), failedRounds: runs.filter((x) => x.failed).length };
});
// "median of 3 fresh servers (range …)", for the few-connections row.
const roundsNote = (t, field) => {
  if (!t.rounds || t.rounds.length < 2) return '';
  const xs = t.rounds.map((r) => r[field]).filter((x) => x != null);
  const failed = t.failedRounds ? `, ${plural(t.failedRounds, 'more')} failed` : '';
  return ` (median of ${xs.length} fresh servers: ${int(Math.min(...xs))}–${bytes(Math.max(...xs))}${failed})`;
};
const direct = {
  flat: measurement({ scenario: 'direct', rate: flatOut }),
  fixed: measurement({ scenario: 'direct', rate: atFixedRate }),
};
const resume = measurement({ scenario: 'resume' });
const churn = measurement({ scenario: 'churn' });
// Presence at scale: the storm at full size (batched), and the same-size
// pair at the smaller size (batched and unbatched), by label.
const presenceRuns = results.filter((record) => record.scenario === 'presence').map((record) => ({ ...fromRecord(record), label: record.label, users: record.users }));
// The publish measurements, in run order: round after round, each configuration
// against SQLite, then memory. Grouped: configuration → store → runs (one per round).
const publishRuns = results.filter((record) => record.scenario === 'publish').map(fromRecord);
const publishConfigs = [];
for (const run of publishRuns.filter((x) => x.r)) {
  const { publishers, rooms, window } = run.r;
  const key = `${publishers}/${rooms}/${window}`;
  let config = publishConfigs.find((c) => c.key === key);
  if (!config) {
    config = { key, publishers, rooms, window, stores: {} };
    publishConfigs.push(config);
  }
  (config.stores[run.r.store] ||= []).push(run);
}

// ---- Targets: judged here, listed in the summary, shown again in their sections.
const TARGET_SUBSCRIBERS = targets.fanout_vs_node.subscribers;
const TARGET_CONNECTIONS = targets.idle_memory.connections;
const TARGET_CLIENTS = targets.resume_storm.clients;
const MIN_FANOUT_RATIO = targets.fanout_vs_node.min_ratio;
const MAX_HALF_PEAK_P99_US = targets.fanout_half_peak.max_p99_us;
const MAX_RSS_PER_CONN = targets.idle_memory.max_rss_per_conn_bytes;
const MAX_RSS_PER_CONN_FEW = targets.idle_memory.max_rss_per_conn_few_bytes;
// The RSS target of a connect measurement: the one for few connections, or the main one.
const rssGoal = (t) => (t.few ? { max: MAX_RSS_PER_CONN_FEW, n: connectFew } : { max: MAX_RSS_PER_CONN, n: TARGET_CONNECTIONS });
const MIN_DIRECT = targets.direct.min_delivered_per_sec;
const MAX_STORM_S = targets.resume_storm.max_storm_s;
const summary = [];
// A note when a measurement was made at another size than its target's.
const sizeNote = (actual, target, what) =>
  actual != null && actual !== target ? ` (measured at ${int(actual)} ${what}; the target is for ${int(target)})` : '';
function judge(target, m, measured, ok) {
  const entry = m.r ? { target, measured, verdict: tick(ok) } : { target, measured: missing(m), verdict: '❌' };
  summary.push(entry);
  return entry;
}

// Everyday fan-out (bench/everyday.sh, step 1b): its own results directory.
const everyday = (() => {
  const dir = path.join(work, 'everyday');
  if (!fs.existsSync(path.join(dir, 'runs.jsonl'))) return null;
  return require('./everyday-report.js').render(dir, targets);
})();

const bigRoom = byServer(sets.bigFlat, 'switchboard', 'room');
const bigNode = byServer(sets.bigFlat, 'node-ws', 'relay');
const bigSubs = bigRoom.r?.subscribers ?? bigNode.r?.subscribers;
const bigVsNode = (() => {
  const m = bigRoom.r && bigNode.r ? bigRoom : { ...bigRoom, r: null, failed: bigRoom.failed || bigNode.failed || 'a measurement is missing' };
  const x = m.r ? bigRoom.r.deliveries_per_sec / bigNode.r.deliveries_per_sec : 0;
  return judge(
    `Fan-out to ${int(TARGET_SUBSCRIBERS)} subscribers: Switchboard room deliveries/s ≥ ${MIN_FANOUT_RATIO}× Node ws`,
    m,
    m.r ? `${int(bigRoom.r.deliveries_per_sec)} vs ${int(bigNode.r.deliveries_per_sec)}: ${ratio(x, 1)}${sizeNote(bigSubs, TARGET_SUBSCRIBERS, 'subscribers')}` : null,
    x >= MIN_FANOUT_RATIO,
  );
})();
const halfPeak = sets.bigFixed.map((t) =>
  judge(
    `Fan-out to ${int(TARGET_SUBSCRIBERS)} subscribers at half of room's peak rate: ${t.short} p99 < ${MAX_HALF_PEAK_P99_US / 1000} ms`,
    t,
    t.r ? `p99 ${lat(t.r.latency_us.p99)} at ${int(t.r.rate * t.r.publishers)} msg/s (${int(t.r.deliveries_per_sec)} deliveries/s)${sizeNote(t.r.subscribers, TARGET_SUBSCRIBERS, 'subscribers')}` : null,
    t.r && t.r.latency_us.p99 < MAX_HALF_PEAK_P99_US,
  ),
);
// The big-room floor (issue 12): one message's fan-out cannot end before
// subscribers × the kernel's cost of one send ÷ cores, the send cost being
// what the everyday run measured (relay's system CPU per delivery: one
// write each, nothing batched).
const MAX_P99_VS_FLOOR = targets.fanout_half_peak.max_p99_vs_send_floor;
const cores = Number(env.BENCH_NPROC) || require('os').cpus().length;
const sendUs = everyday?.sendSystemUs ?? null;
const floorUs = (r) => (sendUs == null ? null : (r.subscribers * sendUs) / cores);
const halfPeakFloor = sets.bigFixed.map((t) => {
  const floor = t.r ? floorUs(t.r) : null;
  const m = t.r && floor == null ? { ...t, r: null, failed: 'no everyday measurement of the send cost in this run' } : t;
  return judge(
    `Fan-out to ${int(TARGET_SUBSCRIBERS)} subscribers at half of room's peak rate: ${t.short} p99 ≤ ${MAX_P99_VS_FLOOR}× the floor (subscribers × one send's kernel CPU ÷ ${cores} cores)`,
    m,
    m.r ? `p99 ${lat(t.r.latency_us.p99)}, floor ${lat(floor)} (${int(t.r.subscribers)} × ${sendUs.toFixed(2)} µs ÷ ${cores}): ${ratio(t.r.latency_us.p99, floor)}` : null,
    m.r && t.r.latency_us.p99 <= MAX_P99_VS_FLOOR * floor,
  );
});
// Room mode's share of relay's deliveries/s flat out, same run: what the
// writer thread (commit, then hand-off) leaves of the fan-out.
const MIN_ROOM_VS_RELAY = targets.flat_room_vs_relay.min_ratio;
const flatRoomVsRelay = (() => {
  const room = byServer(sets.flat, 'switchboard', 'room');
  const relay = byServer(sets.flat, 'switchboard', 'relay');
  const m = room.r && relay.r ? room : { ...room, r: null, failed: room.failed || relay.failed || 'a measurement is missing' };
  const x = m.r ? room.r.deliveries_per_sec / relay.r.deliveries_per_sec : 0;
  return judge(
    `Flat out, ${int(targets.flat_room_vs_relay.subscribers)} subscribers: Switchboard room (SQLite) deliveries/s ≥ ${Math.round(MIN_ROOM_VS_RELAY * 100)}% of relay's`,
    m,
    m.r ? `${int(room.r.deliveries_per_sec)} vs ${int(relay.r.deliveries_per_sec)}: ${Math.round(x * 100)}%${sizeNote(room.r.subscribers, targets.flat_room_vs_relay.subscribers, 'subscribers')}` : null,
    x >= MIN_ROOM_VS_RELAY,
  );
})();
if (everyday) summary.push(...everyday.summary);
else summary.push({ target: 'Everyday fan-out (bench/everyday.sh): CPU per delivery against Node ws, syscalls per delivery', measured: 'not measured in this run', verdict: '❌' });
const rssVerdicts = connectTargets
  .filter((t) => t.sb)
  .map((t) => {
    const goal = rssGoal(t);
    return judge(
      `Idle connections: ${t.few ? 'Switchboard ws' : t.short}, ≤ ${bytes(goal.max)} server RSS per connection at ${int(goal.n)}`,
      t,
      t.r
        ? `${bytes(t.r.rss_per_conn_bytes)}${roundsNote(t, 'rss_per_conn_bytes')}${t.r.settled === false ? ' (RSS still changing)' : ''}${sizeNote(t.r.connections, goal.n, 'connections')}${
            t.r.rss_per_conn_bytes_warmed != null ? `; ${bytes(t.r.rss_per_conn_bytes_warmed)} counted after ${int(t.r.warmup)} connections opened and closed first` : ''
          }`
        : null,
      t.r && t.r.rss_per_conn_bytes != null && t.r.rss_per_conn_bytes <= goal.max && t.r.ready === t.r.connections,
    );
  });
const directVerdict = judge(
  `Direct messages: ≥ ${int(MIN_DIRECT)} delivered/s (memory store)`,
  direct.flat,
  direct.flat.r ? `${int(direct.flat.r.delivered_per_sec)}/s with ${int(direct.flat.r.pairs)} pairs` : null,
  direct.flat.r && direct.flat.r.delivered_per_sec >= MIN_DIRECT,
);
const rr = resume.r;
const resumeLost = rr ? rr.missing + (rr.reset_skipped || 0) : null;
const resumeVerdicts = [
  judge(
    `Resume storm of ${int(TARGET_CLIENTS)} clients: all resumed in < ${MAX_STORM_S} s`,
    resume,
    rr ? `${rr.storm_s == null ? `${int(rr.not_resumed)} clients not resumed` : secs(rr.storm_s)}${sizeNote(rr.clients, TARGET_CLIENTS, 'clients')}` : null,
    rr && rr.storm_s != null && rr.storm_s < MAX_STORM_S,
  ),
  judge(`Resume storm: ${int(targets.resume_storm.max_lost)} messages lost`, resume, rr ? `${int(resumeLost)} (${int(rr.missing)} missing, ${int(rr.reset_skipped || 0)} skipped by ${plural(rr.resets, 'reset')})` : null, rr && resumeLost <= targets.resume_storm.max_lost),
  judge(`Resume storm: ${int(targets.resume_storm.max_duplicated)} messages duplicated`, resume, rr ? int(rr.duplicates) : null, rr && rr.duplicates <= targets.resume_storm.max_duplicated),
];

// ---- Tables.
function fanResults(rows, behind) {
  const n = behind ? 11 : 10;
  line(`| target | deliveries/s | publishes/s | latency p50 | p99 | p99.9 | max | server CPU | load generator CPU | other CPU |${behind ? ' behind |' : ''}`);
  line(`|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|${behind ? '---:|' : ''}`);
  for (const m of rows) {
    const { title, r } = m;
    if (!r) {
      line(`| ${title} | ${missing(m)} | ${dashes(n - 2)} |`);
      continue;
    }
    const l = r.latency_us;
    const extra = behind ? ` ${lat(r.behind_max_us)} |` : '';
    line(`| ${title} | ${int(r.deliveries_per_sec)} | ${int(r.publishes_per_sec)} | ${lat(l.p50)} | ${lat(l.p99)} | ${lat(l.p999)} | ${lat(l.max)} | ${pct(r.server_cpu_pct)} | ${pct(r.client_cpu_pct)} | ${pct(r.other_cpu_pct)} |${extra}`);
  }
  line();
}

// Switchboard ÷ each baseline of the same set.
function fanRatios(rows, withThroughput) {
  const baselines = rows.filter((t) => t.baseline);
  line(withThroughput ? '| Switchboard | ÷ baseline | deliveries/s | latency p50 | p99 | p99.9 | max |' : '| Switchboard | ÷ baseline | latency p50 | p99 | p99.9 | max |');
  line(withThroughput ? '|---|---|---:|---:|---:|---:|---:|' : '|---|---|---:|---:|---:|---:|');
  for (const { short, r } of rows.filter((t) => !t.baseline)) {
    for (const b of baselines) {
      if (!r || !b.r) {
        line(`| ${short} | ${b.short} | ${dashes(withThroughput ? 5 : 4)} |`);
        continue;
      }
      const l = r.latency_us;
      const bl = b.r.latency_us;
      const cells = [ratio(l.p50, bl.p50), ratio(l.p99, bl.p99), ratio(l.p999, bl.p999), ratio(l.max, bl.max)];
      if (withThroughput) cells.unshift(ratio(r.deliveries_per_sec, b.r.deliveries_per_sec));
      line(`| ${short} | ${b.short} | ${cells.join(' | ')} |`);
    }
  }
  line();
}

function fanIntegrity(groups) {
  line('| measurement | messages published | deliveries received | lost | subscribers disconnected | server errors | server log and counters |');
  line('|---|---:|---:|---:|---:|---:|---|');
  const all = groups.flatMap(({ rows, set }) => rows.map((x) => ({ ...x, set })));
  for (const m of all) {
    const { name, title, set, r } = m;
    if (!r) {
      line(`| ${title}, ${set} | ${missing(m)} | ${dashes(5)} |`);
      continue;
    }
    const notes = serverNotes(name).sort().map((s) => `\`${s}\``).join(', ') || '—';
    line(`| ${title}, ${set} | ${int(r.published_total)} | ${int(r.received_total)} | ${int(r.lost)} | ${r.disconnected_subscribers} | ${r.server_errors} | ${notes} |`);
  }
  const ends = all.flatMap(({ title, set, r }) => [
    ...Object.entries(r?.connection_ends || {}).map(([how, n]) => `${title}, ${set}: ${n} × ${how}`),
    ...(r?.publisher_errors || []).map((e) => `${title}, ${set}: publisher: ${e}`),
  ]);
  if (ends.length) {
    line();
    line('Connections that ended early:');
    line();
    for (const e of ends) line(`- ${e}`);
  }
  line();
}

// ---- The report.
line('# Benchmarks');
line();
line('Generated by `bench/run.sh`; rerun it rather than editing this file. All figures below come from one run of');
line('that script: each measurement against a freshly started server, with no other server running; every ratio');
line('is between targets measured in that same run.');
line();
// 1000 writes: seconds in total → µs per write.
const dsync = (seconds) => (seconds && Number.isFinite(Number(seconds)) ? lat(Math.round(Number(seconds) * 1000)) : '?');
const elapsed = Number(env.BENCH_ELAPSED_S);
line(`- **Date:** ${env.BENCH_STARTED}${Number.isFinite(elapsed) && elapsed > 0 ? `; the whole run took ${Math.floor(elapsed / 60)} min ${elapsed % 60} s` : ''}`);
line(`- **Machine:** ${env.BENCH_NPROC} cores, ${env.BENCH_CPU_MODEL || 'unknown CPU'}, ${env.BENCH_MEM} RAM, ${env.BENCH_KERNEL}`);
line(`- **Software:** Switchboard ${env.BENCH_COMMIT}, ${env.BENCH_RUSTC}; Node.js ${env.BENCH_NODE}, ws ${env.BENCH_WS}, socket.io ${env.BENCH_SOCKETIO || '?'}`);
line(`- **Load average** (1/5/15 min) before the run: ${env.BENCH_LOAD_BEFORE}; after: ${env.BENCH_LOAD_AFTER}`);
line(`- **Disk** holding the servers' data directories (a fresh one per measurement), \`df -hT\`: \`${(env.BENCH_DISK_DF || '?').replace(/\s+/g, ' ')}\`;`);
line(`  mounted \`${(env.BENCH_DISK_MOUNT || '?').replace(/\s+/g, ' ')}\`; device write cache: ${env.BENCH_DISK_CACHE || '?'};`);
line(`  one synchronous 4 KiB write (\`dd oflag=dsync\`, mean of 1000, just before the publish measurements): ${dsync(env.BENCH_DISK_DSYNC_APPEND_S)}`);
line(`  appending to a new file, ${dsync(env.BENCH_DISK_DSYNC_OVERWRITE_S)} overwriting it (as SQLite rewrites its WAL after a checkpoint).`);
line('  What a commit costs depends on this disk: a virtual disk whose host acknowledges flushes from a cache makes');
line('  fsync cheap (tens of µs when the machine is quiet), a physical disk without a protected write cache makes');
line('  it milliseconds; and other processes writing to the same disk make every flush wait for their data too.');
line();
const failedList = (env.BENCH_FAILED || '').split('\n').filter(Boolean);
if (failedList.length) {
  line(`> **Warning:** ${plural(failedList.length, 'measurement')} of this run failed (${failedList.length === 1 ? 'its row says' : 'their rows say'} so):`);
  for (const f of failedList) line(`> - ${f}`);
  line();
}
line('## Summary: targets');
line();
line('| target | measured | met |');
line('|---|---|:---:|');
for (const s of summary) line(`| ${s.target} | ${s.measured} | ${s.verdict} |`);
line();
line('Each is measured in its section below, where the conditions are.');
line();
line(`> **Note:** this machine has ${env.BENCH_NPROC} cores, and the server and the load generator share them: every`);
line('> delivery is paid for twice on the same CPUs (written by the server, read by the client). Absolute figures');
line('> are therefore a floor for what the server would do alone; the ratios between targets, measured the same');
line('> way in the same run, are the meaningful part. The CPU columns (percent of one core over the measured');
line('> window, 200% = both cores) show how the cores were split; "other" is everything else the machine did');
line('> meanwhile (other processes, interrupts, and the kernel\'s own work for the SQLite store\'s fsyncs, such as');
line('> the file system journal), which should be low for a clean measurement.');
line();
const allRuns = [
  ...Object.values(sets).flat(),
  ...connectTargets,
  direct.flat,
  direct.fixed,
  resume,
  churn,
  ...publishRuns,
].filter((m) => m.r);
const busy = allRuns.filter(({ r }) => r.other_cpu_pct != null && r.other_cpu_pct > 25);
if (busy.length) {
  line(`> **Warning:** "other" CPU was above 25% of a core during ${busy.length} of the ${allRuns.length} measurements (up to`);
  line(`> ${Math.max(...busy.map(({ r }) => r.other_cpu_pct))}%): if that was other work on the machine, those figures are lower, and their latencies`);
  line('> higher, than on an idle machine.');
  line();
}
const fanSizes = [sets.flat, sets.bigFlat].map((set) => set.find((t) => t.r)?.r.subscribers);
line(`Sections: [fan-out to ${int(fanSizes[0] ?? 1000)}](#fan-out-1000) · ${everyday ? '[everyday fan-out](#everyday) · ' : ''}[fan-out to ${int(fanSizes[1] ?? TARGET_SUBSCRIBERS)}](#fan-out-10000) · [idle connections](#connect) ·`);
line(`[direct messages](#direct) · [resume storm](#resume) · [churn](#churn) · [presence](#presence) · [durability](#durability) · [how to run](#how-to-run)${notes == null ? '' : ' ·'}`);
if (notes != null) line('[profiles](#profiles) (hand-written)');
line();

// ---- 1. Fan-out, 1000.
const first = sets.flat.find((t) => t.r)?.r || sets.fixed.find((t) => t.r)?.r;
line('<a id="fan-out-1000"></a>');
line();
if (!first) {
  line('## Fan-out');
  line();
  line('Not measured in this run.');
  line();
} else {
  const fixedRate = sets.fixed.find((t) => t.r)?.r.rate ?? Number(env.BENCH_RATE);
  line(`## Fan-out: ${first.publishers} publisher → ${int(first.subscribers)} subscribers`);
  line();
  line(`Each measurement: ${int(first.subscribers)} subscriber connections, ${first.publishers} publisher, ${first.size}-byte message bodies,`);
  line(`${first.warmup_s} s of warm-up, then ${first.duration_s} s measured.`);
  line();
  line('### Flat out: throughput');
  line();
  line(`The publisher sends as fast as flow control allows: at most ${first.lead} messages ahead of the slowest subscriber`);
  line(`(and, in room mode, at most ${first.window} publishes without an ack). Latency here is mostly waiting in that`);
  line(`window: about ${first.lead} × subscribers ÷ deliveries/s (Little's law), so compare it only together with the`);
  line('throughput; the fixed-rate table below is the latency comparison.');
  line();
  line('Flat-out figures are bimodal on this machine: a run settles, for its whole duration, into a faster or a');
  line('slower pattern of the server\'s and the load generator\'s threads on the two cores, and the same binary,');
  line('measured repeatedly, has delivered up to twice as much in one run as in the next. Compare targets within');
  line('one run (each measured once here), and figures across runs only with that in mind.');
  line();
  fanResults(sets.flat);
  line('Switchboard ÷ each baseline (same run). Throughput: higher is better; latency: lower is better.');
  line();
  fanRatios(sets.flat, true);
  line(`**Target:** Switchboard room mode (SQLite store: every publish committed before it is delivered) delivers at least ${Math.round(MIN_ROOM_VS_RELAY * 100)}% of what relay mode (no store) does: ${flatRoomVsRelay.measured} ${flatRoomVsRelay.verdict}`);
  line();
  line(`### Fixed rate: latency at ${int(fixedRate)} messages/s (${int(fixedRate * first.subscribers)} deliveries/s)`);
  line();
  line('A load every target sustains, so latency is the cost of a delivery rather than of a backlog. "Behind" is');
  line('the most any send was late on the publisher\'s schedule (timer granularity, or waiting for acks). With this');
  line('many subscribers, one message\'s deliveries are spread over the time it takes to write every socket (server)');
  line('and read every socket (load generator, on the same cores), and that spread is most of the latency here.');
  line();
  fanResults(sets.fixed, true);
  line('Switchboard ÷ each baseline (same run); lower is better.');
  line();
  fanRatios(sets.fixed, false);
  line('### Integrity');
  line();
  line('Every subscriber must receive every message published, including those after the measured window');
  line('(each run drains before closing).');
  line();
  fanIntegrity([
    { rows: sets.flat, set: 'flat out' },
    { rows: sets.fixed, set: `${int(fixedRate)}/s` },
  ]);
  line('### What is measured');
  line();
  line('- **Subscribers** connect first (room mode: `/ws?user=sN`, then `join` room `bench` and wait for `joined`;');
  line('  relay mode: `/relay/bench`; Socket.IO: `/socket.io/?EIO=4&transport=websocket`, then connect to the');
  line('  namespace and wait for `40{"sid":…}`), then the publisher; the run waits for the join storm of presence');
  line('  events to pass before publishing.');
  line(`- **Publishing:** room mode sends \`{"type":"publish","room":"bench","body":BODY}\` and keeps at most ${first.window}`);
  line('  publishes un-acked; relay mode sends BODY itself as a text frame (the Node baseline, which speaks no');
  line('  protocol, is driven this way); Socket.IO mode sends the event `42["msg","BODY"]` (BODY as a JSON string).');
  line(`  Flat out, the publisher also stays at most ${first.lead} messages ahead of the slowest subscriber, so server`);
  line('  queues stay bounded; at a fixed rate it follows a schedule and nothing else.');
  line(`- **BODY** is \`{"t":SEND_TIME_µs,"pad":"xxx…"}\`, ${first.size} bytes. Latency is receive time minus \`t\`, both from`);
  line("  the load generator's monotonic clock, for **every** delivery received in the measured window (no sampling),");
  line('  recorded in an HdrHistogram (3 significant digits). Deliveries/s counts deliveries received in the window.');
  line('- **Load generator:** `switchboard-bench fanout`, a minimal WebSocket client (frame headers and the `t` field');
  line('  are all it parses; pings are answered; for Socket.IO, the engine.io open, namespace connect and ping/pong');
  line('  packets) on a Tokio runtime with one thread per core.');
  line('- **Switchboard** is the release build, started with the rate limit and per-IP connection limits off, 16 MiB outbound');
  line('  queues and the SQLite store on a fresh data directory: in room mode every publish is committed (grouped');
  line('  with the others waiting: one transaction and one fsync per group) before it is delivered and acked; relay');
  line("  mode stores nothing. **The Node baseline** is the broadcast chat server of the `ws` tutorial in the project's seeds,");
  line('  unchanged: on one thread, it forwards each message to every other client (as a binary frame: ws 8 sends');
  line('  the received Buffer as is), with no limit on what it buffers for a slow client. **The Socket.IO baseline**');
  line('  is the chat broadcast of the Socket.IO tutorial (`socket.broadcast.emit` to everyone else), offering only');
  line('  the WebSocket transport, also on one thread and without a limit on what it buffers.');
  line();
  line('### Commands');
  line();
  commands('fanout', env.BENCH_COMMANDS);
}

// ---- 1b. Everyday fan-out (rendered by bench/everyday-report.js).
if (everyday) {
  line('<a id="everyday"></a>');
  line();
  for (const l of everyday.section) line(l);
}

// ---- 2. Fan-out, 10,000.
const big = sets.bigFlat.find((t) => t.r)?.r;
line('<a id="fan-out-10000"></a>');
line();
if (!big && !sets.bigFlat.some((t) => t.failed)) {
  line('## Fan-out to many subscribers');
  line();
  line('Not measured in this run.');
  line();
} else {
  const subs = big?.subscribers ?? TARGET_SUBSCRIBERS;
  line(`## Fan-out: ${big?.publishers ?? 1} publisher → ${int(subs)} subscribers`);
  line();
  line(`The same measurement as above with ${int(subs)} subscribers${big ? ` (${big.size}-byte bodies, ${big.warmup_s} s of warm-up, ${big.duration_s} s measured)` : ''}.`);
  const times = first ? subs / first.subscribers : null;
  line(`Each message now goes to ${times ? `${Number(times.toPrecision(3))} times as many` : 'that many'} subscribers, so publishes/s fall, and flat-out latency (the lead`);
  line('window × subscribers ÷ the delivery rate) grows with the subscriber count.');
  line();
  line('### Flat out: throughput');
  line();
  fanResults(sets.bigFlat);
  line('Switchboard ÷ each baseline (same run). Throughput: higher is better; latency: lower is better.');
  line();
  fanRatios(sets.bigFlat, true);
  line(`**Target:** Switchboard room delivers at least ${MIN_FANOUT_RATIO}× what Node ws does: ${bigVsNode.measured} ${bigVsNode.verdict}`);
  line();
  const fixedRows = sets.bigFixed;
  const rateRow = fixedRows.find((t) => t.r)?.r;
  const perPublisher = rateRow?.rate ?? (env.BENCH_BIG_RATE ? Number(env.BENCH_BIG_RATE) : null);
  const from = env.BENCH_BIG_RATE_FROM || "half of room's peak";
  line(`### Fixed rate: half of room's peak${perPublisher != null ? `, ${int(perPublisher * (rateRow?.publishers ?? 1))} messages/s` : ''}`);
  line();
  if (from === "half of room's peak") {
    line(`Switchboard room and relay at half the publishes/s Switchboard room reached flat out above${bigRoom.r ? ` (${int(bigRoom.r.publishes_per_sec)}/s)` : ''}, so`);
  } else {
    line(`Switchboard room and relay at a rate ${from} (not computed from this run's peak), so`);
  }
  line('the latency is that of a server with headroom rather than of a backlog. Both at the same rate (relay\'s own');
  line(`peak is higher, so this is less than half of it). **Target:** p99 < ${MAX_HALF_PEAK_P99_US / 1000} ms.`);
  line();
  line(`| target | deliveries/s | publishes/s | latency p50 | p99 | p99.9 | max | behind | server CPU | load generator CPU | other CPU | p99 < ${MAX_HALF_PEAK_P99_US / 1000} ms |`);
  line('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|');
  fixedRows.forEach((m, i) => {
    const { title, r } = m;
    if (!r) {
      line(`| ${title} | ${missing(m)} | ${dashes(10)} |`);
      return;
    }
    const l = r.latency_us;
    line(`| ${title} | ${int(r.deliveries_per_sec)} | ${int(r.publishes_per_sec)} | ${lat(l.p50)} | ${lat(l.p99)} | ${lat(l.p999)} | ${lat(l.max)} | ${lat(r.behind_max_us)} | ${pct(r.server_cpu_pct)} | ${pct(r.client_cpu_pct)} | ${pct(r.other_cpu_pct)} | ${halfPeak[i].verdict} |`);
  });
  line();
  line(`**Target against the floor:** p99 ≤ ${MAX_P99_VS_FLOOR}× what one message's fan-out cannot beat here: subscribers × the kernel's CPU`);
  line(`for one send (Switchboard relay's system CPU per delivery in the everyday measurement, where each delivery is`);
  line(`one write${sendUs != null ? `: ${sendUs.toFixed(2)} µs in this run` : ''}) ÷ ${cores} cores.`);
  line();
  for (const h of halfPeakFloor) line(`- ${h.target.replace(/^.*?: /, '')}: ${h.measured} ${h.verdict}`);
  line();
  if (halfPeak.some((h) => h.verdict === '❌')) {
    line(`**Where p99 misses ${MAX_HALF_PEAK_P99_US / 1000} ms, and why.** Each message here is written to ${int(subs)} sockets by the server and read`);
    line(`from ${int(subs)} sockets by the load generator, on the same ${cores} cores. One message's fan-out therefore takes`);
    line('tens of milliseconds of CPU on each side, and the last subscribers\' latency is at least that time, at any');
    const smallRoom = byServer(sets.fixed, 'switchboard', 'room').r;
    const small = smallRoom && smallRoom.latency_us.p99 < MAX_HALF_PEAK_P99_US
      ? ` With ${int(smallRoom.subscribers)} subscribers, the fixed-rate table above has room's p99 at ${lat(smallRoom.latency_us.p99)}.`
      : '';
    line(`rate: the calm-rate measurement below has the figures.${small} The profile notes at the end ("Fan-out to`);
    line('10,000 at a calm rate") have the profile.');
    line();
  }
  const busiest = fixedRows.find((t) => t.r)?.r;
  if (halfPeakFloor.some((h) => h.verdict === '❌') && busiest && sendUs != null) {
    const cpus = (busiest.deliveries_per_sec * sendUs) / 1e6;
    line(`**Where p99 misses the floor, and why.** At half of peak the server delivers ${int(busiest.deliveries_per_sec)} frames/s. Written`);
    line(`one frame per send, at ${sendUs.toFixed(2)} µs of kernel CPU each, that would take ${cpus.toFixed(1)} cores of kernel time alone, on`);
    line(`${cores} cores shared with the load generator. Only batching (several frames per \`writev\`, that is frames waiting`);
    line('for one another in each queue) carries that rate here, so the latency at this rate is that queueing, not one');
    line('fan-out\'s time; the floor is what a message sees on a machine with headroom for unbatched sends.');
    line();
  }
  calmSection(subs);
  line('### Integrity');
  line();
  fanIntegrity([
    { rows: sets.bigFlat, set: 'flat out' },
    { rows: sets.bigFixed, set: 'half of peak' },
    { rows: sets.bigCalm, set: 'calm rate' },
  ]);
  line('### Commands');
  line();
  commands('fanout-big');
}

// The fan-out to many at a calm rate: one message's fan-out with nothing
// queued before it, against the send floor and against what the server and
// the load generator together need for one message on these cores.
function calmSection(subs) {
  const rows = sets.bigCalm;
  const any = rows.find((t) => t.r)?.r;
  if (!any && !rows.some((t) => t.failed)) return;
  const rate = any ? any.rate * any.publishers : Number(env.BENCH_BIG_CALM_RATE) || null;
  line(`### Calm rate: ${rate != null ? `${Number(rate.toPrecision(3))} messages/s (${int(rate * subs)} deliveries/s)` : 'a low rate'}`);
  line();
  line('One message at a time with nothing queued before it: how long one fan-out takes to reach the last');
  line(`of ${int(subs)} subscribers, what it costs the server and the load generator (CPU per message: CPU ÷ publishes/s),`);
  line('and how the server\'s threads shared the work (percent of one core each, busiest first).');
  line();
  line('"Other CPU" includes time the virtual machine\'s host took from it (steal): high there, the latency is');
  line('that of a machine that was not running the test.');
  line();
  line('| target | deliveries/s | latency p50 | p99 | max | server CPU | load generator CPU | other CPU | server CPU per message | load generator CPU per message | server threads |');
  line('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|');
  const perMessageMs = (cpuPct, r) => (cpuPct == null || !r.publishes_per_sec ? null : (cpuPct / 100 / r.publishes_per_sec) * 1000);
  const ms = (v) => (v == null ? 'n/a' : `${v.toPrecision(3)} ms`);
  const threads = (r) =>
    (r.server_threads || []).length ? r.server_threads.map((t) => `${t.name} ${t.cpu_pct}%`).join(', ') : 'n/a';
  for (const m of rows) {
    const { title, r } = m;
    if (!r) {
      line(`| ${title} | ${missing(m)} | ${dashes(9)} |`);
      continue;
    }
    const l = r.latency_us;
    line(`| ${title} | ${int(r.deliveries_per_sec)} | ${lat(l.p50)} | ${lat(l.p99)} | ${lat(l.max)} | ${pct(r.server_cpu_pct)} | ${pct(r.client_cpu_pct)} | ${pct(r.other_cpu_pct)} | ${ms(perMessageMs(r.server_cpu_pct, r))} | ${ms(perMessageMs(r.client_cpu_pct, r))} | ${threads(r)} |`);
  }
  line();
  const measured = rows.filter((t) => t.r);
  if (!measured.length) return;
  line(`**Against the floors.** The floor of the target above counts the server's sends only (subscribers × one send's`);
  line(`kernel CPU ÷ ${cores} cores). Here the load generator reads the same deliveries on the same cores, so the last of`);
  line('a message\'s deliveries cannot be read before the server has written them all and the load generator has read');
  line(`them all: this machine's floor is their CPU for one message ÷ ${cores} cores.`);
  line();
  for (const { short, r } of measured) {
    const p99 = r.latency_us.p99;
    const send = floorUs(r);
    const server = perMessageMs(r.server_cpu_pct, r);
    const client = perMessageMs(r.client_cpu_pct, r);
    const machine = server != null && client != null ? ((server + client) / cores) * 1000 : null;
    const parts = [];
    if (send != null) parts.push(`the send floor ${lat(send)} (${int(r.subscribers)} × ${sendUs.toFixed(2)} µs ÷ ${cores}): ${ratio(p99, send)}`);
    if (machine != null) parts.push(`this machine's floor ${lat(Math.round(machine))} ((${ms(server)} + ${ms(client)}) ÷ ${cores}): ${ratio(p99, machine)}`);
    line(`- ${short}: p99 ${lat(p99)}; ${parts.length ? parts.join('; ') : 'no floor (CPU not read)'}.`);
  }
  line();
  const spread = measured
    .map(({ short, r }) => {
      // Tokio names its workers and its blocking pool's threads alike.
      const workers = (r.server_threads || []).filter((t) => t.name.startsWith('tokio-rt-worker'));
      const total = r.server_cpu_pct;
      if (!workers.length || !total) return null;
      const share = workers.reduce((a, t) => a + t.cpu_pct, 0) / total;
      return `${short}: ${workers.length} runtime thread${workers.length === 1 ? '' : 's'} did ${Math.round(share * 100)}% of the server's CPU (${workers.map((t) => `${t.cpu_pct}%`).join(', ')} of a core)`;
    })
    .filter(Boolean);
  if (spread.length) {
    line(`**Spread over the cores:** ${spread.join('; ')}.`);
    line();
  }
}

// ---- 3. Connect.
line('<a id="connect"></a>');
line();
line('## Idle connections: connect rate and memory per connection');
line();
const c0 = connectTargets.find((t) => t.r)?.r;
if (!c0 && !connectTargets.some((t) => t.failed)) {
  line('Not measured in this run.');
  line();
} else {
  const n = c0?.connections ?? TARGET_CONNECTIONS;
  line(`${int(n)} connections opened (${c0 ? `${c0.connect_concurrency} handshakes in flight, by ${int(c0.procs)} worker process${c0.procs === 1 ? '' : 'es'}` : 'by worker processes'}) and held idle, against a freshly`);
  line('started server each time (a server reuses memory freed by earlier connections, which would hide the growth).');
  line('**Server RSS per connection** is the growth of the server\'s `VmRSS` (`/proc/PID/status`) from before the first');
  line('connect to after the last, once it has settled (unchanged for 1 s), divided by the connections; RssAnon is the');
  line('same for anonymous memory alone (the heap). Kernel socket buffers are not in either. Switchboard ran with the');
  line('memory store (`--store memory`: an idle connection touches no store; the store\'s own memory is in the');
  line('"before" figure either way). **Connects/s** is connections ready ÷ the time until the last was ready;');
  line('**handshake** is TCP connect + WebSocket upgrade, **ready** until the connection is usable (Switchboard');
  line('`/ws`: `welcome`, with `join`: `joined`; Socket.IO: namespace connected; relay and Node: the 101).');
  line(`**Target:** Switchboard ≤ ${bytes(MAX_RSS_PER_CONN)} of RSS per idle connection at ${int(TARGET_CONNECTIONS)}${connectFew ? `, and ≤ ${bytes(MAX_RSS_PER_CONN_FEW)} per \`/ws\` connection at ${int(connectFew)} (the last row: there the one-time costs of a fresh server, such as code pages first touched by the handshake path and the buffers of the 128 handshakes in flight, weigh ${int(TARGET_CONNECTIONS / connectFew)}× more per connection)` : ''}.`);
  line();
  const node = byServer(connectTargets, 'node-ws', 'relay');
  line(`| target | ready | connects/s | handshake p50 | p99 | ready p50 | p99 | server RSS per connection | RssAnon per connection | server CPU per connect | connects/s ÷ Node | RSS ÷ Node | target met |`);
  line('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|');
  let v = 0;
  for (const m of connectTargets) {
    const { title, r } = m;
    const verdict = m.sb ? rssVerdicts[v++].verdict : '—';
    if (!r) {
      line(`| ${title} | ${missing(m)} | ${dashes(10)} | ${verdict} |`);
      continue;
    }
    const vsNode = m === node || !node.r || m.few ? ['—', '—'] : [ratio(r.connects_per_sec, node.r.connects_per_sec), ratio(r.rss_per_conn_bytes, node.r.rss_per_conn_bytes)];
    const rss = `${bytes(r.rss_per_conn_bytes)}${roundsNote(m, 'rss_per_conn_bytes')}${r.settled === false ? ' (still changing)' : ''}`;
    line(`| ${title} | ${int(r.ready)} of ${int(r.connections)} | ${int(r.connects_per_sec)} | ${lat(r.handshake_us.p50)} | ${lat(r.handshake_us.p99)} | ${lat(r.ready_us.p50)} | ${lat(r.ready_us.p99)} | ${rss} | ${bytes(r.rss_anon_per_conn_bytes)} | ${r.server_cpu_us_per_conn == null ? 'n/a' : `${int(r.server_cpu_us_per_conn)} µs`} | ${vsNode[0]} | ${vsNode[1]} | ${verdict} |`);
  }
  line();
  line('Connects/s: higher is better; RSS: lower is better.');
  const sse = connectTargets.find((t) => t.sse && t.r);
  const ws = byServer(connectTargets, 'switchboard', 'room');
  if (sse && ws.r) {
    line();
    line(`The HTTP fallback (SSE) costs ${ratio(sse.r.rss_per_conn_bytes, ws.r.rss_per_conn_bytes)} the memory of a WebSocket that joined a room: a streaming HTTP`);
    line('response keeps hyper\'s 8 KiB read and 8 KiB header write buffers, which a WebSocket gives back at the upgrade, and a');
    line('session keeps the events it sent until the client confirms them (the join\'s presence events here). It is the');
    line('fallback, not the default, so the WebSocket target is not applied to it (docs/ARCHITECTURE.md, "The HTTP fallback transport").');
  }
  line();
  line('| target | server RSS before | with the connections | after closing them | settled after | connect time | server CPU | load generator CPU | other CPU | failed | dropped | closed politely |');
  line('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const m of connectTargets) {
    const { title, r } = m;
    if (!r) {
      line(`| ${title} | ${missing(m)} | ${dashes(10)} |`);
      continue;
    }
    line(`| ${title} | ${mib(r.rss_kib.before)} | ${mib(r.rss_kib.after)} | ${mib(r.rss_kib.after_close)} | ${r.settle_s == null ? 'n/a' : `${r.settle_s} s`} | ${secs(r.connect_s)} | ${pct(r.server_cpu_pct)} | ${pct(r.client_cpu_pct)} | ${pct(r.other_cpu_pct)} | ${int(r.failed)} | ${int(r.dropped)} | ${int(r.closed_politely)} |`);
  }
  const problems = connectTargets.flatMap(({ short, r }) => [
    ...Object.entries(r?.failures || {}).map(([why, k]) => `${short}: ${k} × failed: ${why}`),
    ...Object.entries(r?.connection_ends || {}).map(([how, k]) => `${short}: ${k} × dropped: ${how}`),
  ]);
  if (problems.length) {
    line();
    line('Connections that failed or ended early:');
    line();
    for (const p of problems) line(`- ${p}`);
  }
  line();
  line('CPU columns are over the connect phase. The hand-written profile notes at the end of this file say where');
  line('Switchboard\'s bytes per connection go.');
  line();
  line('### Commands');
  line();
  commands('connect');
}

// ---- 4. Direct.
line('<a id="direct"></a>');
line();
line('## Direct messages');
line();
if (!direct.flat.r && !direct.flat.failed) {
  line('Not measured in this run.');
  line();
} else {
  const d = direct.flat.r || direct.fixed.r;
  line(`${d ? int(d.pairs) : 'N'} pairs of users (\`/ws?user=dNa&device=bench\` and \`dNb\`, one connection each), each connection sending its`);
  line(`partner \`{"type":"send","to":PARTNER,"body":BODY}\`${d ? ` (${d.size}-byte BODY, at most ${d.window} sends un-acked per connection; ${d.warmup_s} s of warm-up, ${d.duration_s} s measured)` : ''}.`);
  line('Switchboard with `--store memory`: persistence off, so this is the routing and the write pipeline without the');
  line('disk (the durability section below has what SQLite costs). **Delivered/s** counts the partner\'s `direct`');
  line('events received in the window; latency is from the send to that receipt, for every one. **Flat out** each');
  line('connection keeps its window full; **the fixed rate** is half the flat-out throughput' + (env.BENCH_DIRECT_RATE_FROM && env.BENCH_DIRECT_RATE_FROM !== 'half of the flat-out throughput' ? ` (here ${env.BENCH_DIRECT_RATE_FROM})` : '') + ', spread');
  line('evenly, for the latency with headroom. No baseline server speaks direct messages (the Node ws and Socket.IO');
  line(`baselines only broadcast), so there is no ratio here. **Target:** ≥ ${int(MIN_DIRECT)} delivered/s.`);
  line();
  line(`| measurement | delivered/s | slowest second | acked/s | latency p50 | p99 | p99.9 | max | ack latency p50 | p99 | server CPU | load generator CPU | other CPU | ≥ ${int(MIN_DIRECT)}/s |`);
  line('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|');
  for (const [m, title] of [
    [direct.flat, 'flat out'],
    [direct.fixed, direct.fixed.r ? `${direct.fixed.r.rate} msg/s per connection (${int(direct.fixed.r.rate * direct.fixed.r.connections)}/s in all)` : 'fixed rate'],
  ]) {
    const r = m.r;
    const verdict = m === direct.flat ? directVerdict.verdict : '—';
    if (!r) {
      line(`| ${title} | ${missing(m)} | ${dashes(11)} | ${verdict} |`);
      continue;
    }
    const l = r.latency_us;
    const a = r.ack_latency_us;
    line(`| ${title} | ${int(r.delivered_per_sec)} | ${int(r.slowest_second)} | ${int(r.acks_per_sec)} | ${lat(l.p50)} | ${lat(l.p99)} | ${lat(l.p999)} | ${lat(l.max)} | ${lat(a.p50)} | ${lat(a.p99)} | ${pct(r.server_cpu_pct)} | ${pct(r.client_cpu_pct)} | ${pct(r.other_cpu_pct)} | ${verdict} |`);
  }
  line();
  line('Integrity: every direct acked must reach the partner once, in inbox order.');
  line();
  line('| measurement | sent | acked | delivered | lost | duplicated | inbox seqs skipped | error events | sends unanswered | connections dropped | server log and counters |');
  line('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|');
  for (const [m, title] of [
    [direct.flat, 'flat out'],
    [direct.fixed, 'fixed rate'],
  ]) {
    const r = m.r;
    if (!r) {
      line(`| ${title} | ${missing(m)} | ${dashes(9)} |`);
      continue;
    }
    const notes = serverNotes(m.name).sort().map((s) => `\`${s}\``).join(', ') || '—';
    line(`| ${title} | ${int(r.sent_total)} | ${int(r.acked_total)} | ${int(r.delivered_total)} | ${int(r.lost)} | ${int(r.duplicates)} | ${int(r.seq_gaps)} | ${int(r.server_errors)} | ${int(r.unanswered)} | ${int(r.dropped_connections)} | ${notes} |`);
  }
  line();
  line('### Commands');
  line();
  commands('direct');
}

// ---- 5. Resume storm.
line('<a id="resume"></a>');
line();
line('## Resume storm');
line();
if (!rr && !resume.failed) {
  line('Not measured in this run.');
  line();
} else {
  line(`${rr ? int(rr.clients) : 'N'} clients (\`/ws?user=rN\`) spread over ${rr ? int(rr.rooms) : 'R'} rooms, and ${rr ? rr.publishers : 'P'} publishers, against Switchboard with the SQLite`);
  line(`store. While every client is connected, ${rr ? rr.before : 'M'} messages are published per room; then every client disconnects,`);
  line(`and ${rr ? rr.offline : 'K'} more are published per room; then every client reconnects at once (up to ${rr ? int(rr.connect_concurrency) : 'C'} handshakes in`);
  line('flight) and joins with `since` = the last seq it saw, and must be replayed exactly what it missed.');
  line('**All resumed after** is the time from the start of the storm until the last client had its whole replay;');
  line('**per client** is from the start of its connect to its last replayed message. Missing: seqs never received');
  line("(lost: those, plus any a `reset` skipped); duplicated: a seq received twice. **Target:** all resumed in < " + MAX_STORM_S + " s,");
  line('nothing lost, nothing duplicated.');
  line();
  line('| clients | rooms | all resumed after | per client p50 | p99 | max | reconnect p50 | p99 | messages replayed | missing | duplicated | resets | server CPU | load generator CPU | other CPU |');
  line('|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  if (!rr) {
    line(`| ${missing(resume)} | ${dashes(14)} |`);
  } else {
    const l = rr.resume_latency_us;
    const c = rr.connect_latency_us;
    const all = rr.storm_s == null ? `${int(rr.not_resumed)} not resumed` : secs(rr.storm_s);
    line(`| ${int(rr.clients)} | ${int(rr.rooms)} | ${all} | ${lat(l.p50)} | ${lat(l.p99)} | ${lat(l.max)} | ${lat(c.p50)} | ${lat(c.p99)} | ${int(rr.storm_received)} | ${int(rr.missing)} | ${int(rr.duplicates)} | ${int(rr.resets)} | ${pct(rr.server_cpu_pct)} | ${pct(rr.client_cpu_pct)} | ${pct(rr.other_cpu_pct)} |`);
  }
  line();
  line('| target | measured | met |');
  line('|---|---|:---:|');
  for (const s of resumeVerdicts) line(`| ${s.target} | ${s.measured} | ${s.verdict} |`);
  line();
  if (rr) {
    const notes = serverNotes('resume').sort().map((s) => `\`${s}\``).join(', ') || '—';
    line(`Setup (${int(rr.clients)} clients joining): ${secs(rr.setup_s)}. Error events: ${int(rr.server_errors)}; joined seqs wrong: ${int(rr.joined_seq_mismatch)};`);
    line(`publishes refused: ${int(rr.publishes_refused)}; failed connections: ${int(rr.failures)}; connection attempts dropped by the kernel`);
    line(`(full listen queue, machine-wide): ${rr.listen_overflows == null ? 'n/a' : int(rr.listen_overflows)}. Server: ${notes}.`);
    const ends = Object.entries(rr.connection_ends || {}).map(([how, k]) => `${k} × ${how}`);
    for (const s of [...ends, ...(rr.failure_samples || []), ...(rr.server_error_samples || [])]) line(`- ${s}`);
    line();
  }
  line('### Commands');
  line();
  commands('resume');
}

// ---- 6. Churn.
line('<a id="churn"></a>');
line();
line('## Churn: short sessions');
line();
const ch = churn.r;
if (!ch && !churn.failed) {
  line('Not measured in this run.');
  line();
} else {
  line(`Sessions started on a fixed schedule${ch ? `, ${int(ch.rate)} per second for ${ch.duration_s} s (at most ${int(ch.max_in_flight)} at once: one due beyond that is skipped)` : ''},`);
  line(`each: connect (\`/ws?user=cK\`), \`join\` one of ${ch ? ch.rooms : 'R'} rooms, publish one message and wait for its ack, close`);
  line('(close handshake). Switchboard with the SQLite store, so every publish is a commit. The server must keep');
  line('up without failures; there is no target beyond that.');
  line();
  if (!ch) {
    line(`**${missing(churn)}**`);
    line();
  } else {
    line('| sessions/s started | completed/s | completed | failed | skipped | server CPU | load generator CPU | other CPU |');
    line('|---:|---:|---:|---:|---:|---:|---:|---:|');
    line(`| ${int(ch.rate)} | ${ch.completed_per_sec} | ${int(ch.completed)} of ${int(ch.scheduled)} | ${int(ch.failed)} | ${int(ch.skipped)} | ${pct(ch.server_cpu_pct)} | ${pct(ch.client_cpu_pct)} | ${pct(ch.other_cpu_pct)} |`);
    line();
    line('| step | p50 | p90 | p99 | p99.9 | max |');
    line('|---|---:|---:|---:|---:|---:|');
    for (const [key, title] of [
      ['connect_us', 'connect (TCP + upgrade)'],
      ['join_us', '`join` → `joined`'],
      ['publish_us', '`publish` → `ack` (a commit)'],
      ['session_us', 'whole session, close included'],
    ]) {
      const l = ch[key];
      line(`| ${title} | ${lat(l.p50)} | ${lat(l.p90)} | ${lat(l.p99)} | ${lat(l.p999)} | ${lat(l.max)} |`);
    }
    line();
    const kinds = Object.entries(ch.failures || {});
    if (kinds.length) {
      line('Failures by kind (with the first of each):');
      line();
      for (const [kind, k] of kinds) line(`- ${int(k)} × ${kind}: \`${(ch.failure_samples || {})[kind] || ''}\``);
    } else {
      line('Failures by kind: none.');
    }
    line();
    const notes = serverNotes('churn').sort().map((s) => `\`${s}\``).join(', ') || '—';
    line(`All sessions were done ${secs(ch.finish_s)} after the first started; the latest start was ${lat(ch.late_max_us)} behind schedule;`);
    line(`connection attempts dropped by the kernel on a full listen queue: ${ch.listen_overflows == null ? 'n/a' : int(ch.listen_overflows)}. Server: ${notes}.`);
    line();
  }
  line('### Commands');
  line();
  commands('churn');
}

// ---- 6b. Presence at scale.
line('<a id="presence"></a>');
line();
line('## Presence at scale: a join storm into one room');
line();
if (!presenceRuns.length) {
  line('Not measured in this run.');
  line();
} else {
  line('N users connect and `join` one room, their starts spread evenly over a window; every member counts the');
  line('`presence` frames (and bytes) it receives from its join until the storm is over (everyone joined, then no');
  line('presence frame anywhere for 3 s). Without batching every join goes to every member: n(n-1)/2 frames.');
  line('With it (the defaults: `--presence-batch-above 8`, `--presence-interval 1s`) a room of more than 8 users');
  line('sends at most one presence frame per interval: the first change after a quiet interval at once, the rest');
  line('as one delta (`joined`/`left`, 32 names each, `more`) at its end. "unbatched" is the same server with');
  line('`--presence-batch-above 1000000`, measured in the same run at the smaller size (at the full size it would');
  line('be tens of millions of frames: its count there is n(n-1)/2, which the smaller run confirms exactly).');
  line();
  line('| users, window | server | frames per member: max | p99 | mean | total frames | of them deltas | n(n-1)/2 | fewer by | bytes per member: mean | max | wrong final online | server CPU |');
  line('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  const sorted = [...presenceRuns].sort((a, b) => (b.users - a.users) || String(a.label).localeCompare(String(b.label)));
  for (const m of sorted) {
    const r = m.r;
    if (!r) {
      line(`| ${int(m.users)} | ${m.label} | ${dashes(10)} | **${missing(m)}** |`);
      continue;
    }
    line(`| ${int(r.users)} over ${r.over_s} s | ${m.label} | ${int(r.frames_per_member.max)} | ${int(r.frames_per_member.p99)} | ${r.frames_per_member.mean} | ${int(r.total_frames)} | ${int(r.delta_frames)} | ${int(r.unbatched_frames)} | ×${r.ratio_vs_unbatched} | ${bytes(r.bytes_per_member.mean)} | ${bytes(r.bytes_per_member.max)} | ${int(r.wrong_online)} | ${pct(r.cpu_percent && r.cpu_percent.server)} |`);
  }
  line();
  line('"wrong final online": members whose last `online` (from `joined` or a presence frame) was not the room\'s');
  line('final count; 0 means every member was told the result. "fewer by": n(n-1)/2 over the frames measured.');
  line();
  line('### Commands');
  line();
  commands('presence');
}

// ---- 7. The cost of durability: the publish scenario, SQLite vs memory.
line('<a id="durability"></a>');
line();
line('## Durability: acked publishes, SQLite store vs in-memory store');
line();
if (!publishConfigs.length) {
  line('Not measured in this run.');
  for (const { name, failed } of publishRuns.filter((x) => x.failed)) line(`- ${name}: failed: ${failed}`);
  line();
} else {
  const p0 = publishConfigs[0].stores[Object.keys(publishConfigs[0].stores)[0]][0].r;
  const storeTitle = (label) => (label === 'sqlite' ? 'SQLite' : label === 'memory' ? 'memory' : label);
  line('Every `publish` and `send` goes through one writer thread: it takes everything waiting (up to 1024');
  line('commands), commits it in one store transaction, and only then delivers the messages and sends the acks. With');
  line('`--store sqlite` a commit is a SQLite transaction in WAL mode with `synchronous=FULL` (the WAL is fsynced at');
  line('every commit); `--store memory` runs the same pipeline against an in-memory store. The difference is what');
  line('durability costs. Each configuration was measured against a fresh server with a fresh SQLite data directory,');
  line('then at once against a fresh server with the memory store.');
  line();
  line(`Each measurement: publishers with no subscribers, ${p0.size}-byte bodies, ${p0.warmup_s} s of warm-up, then ${p0.duration_s} s`);
  line('measured. **Window 1:** each publisher waits for its ack before publishing again, so the ack latency is one');
  line('trip through the pipeline, the commit included, and at most one publish per publisher can share a commit.');
  line(`**Window ${publishConfigs.map((c) => c.window).filter((w) => w > 1)[0] ?? 'W'}:** that many publishes in flight per publisher, so the writer always finds a backlog and`);
  line('commits it in groups. **Rooms:** with as many rooms as publishers, each publisher is alone in its room;');
  line('with 1 room, every publish is also delivered to the other publishers (and they share one seq counter).');
  line();
  const rounds = Math.max(...publishConfigs.flatMap((c) => Object.values(c.stores).map((runs) => runs.length)));
  line(`Every configuration was measured ${plural(rounds, 'time')} (rounds, one after the other); below, each row is the`);
  line('round with the median throughput (its latency and CPU figures with it), and the range over all rounds.');
  line('On this small shared machine a measurement can settle into a faster or a slower scheduling pattern for its');
  line('whole duration, so single figures move by tens of percent from run to run; compare medians and ranges.');
  line();
  line('| publishers | rooms | window | store | acked publishes/s (median) | range over rounds | ack latency p50 | p99 | p99.9 | max | slowest second | server CPU | load generator CPU | other CPU |');
  line('|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const c of publishConfigs) {
    for (const runs of Object.values(c.stores)) {
      const { r } = medianRun(runs);
      const l = r.latency_us;
      const mean = r.acks_per_sec;
      const slow = mean ? `${int(r.slowest_second)} (${signedPct(r.slowest_second / mean - 1)})` : 'n/a';
      const all = runs.map((x) => x.r.acks_per_sec);
      const range = `${int(Math.min(...all))}–${int(Math.max(...all))}`;
      line(`| ${c.publishers} | ${c.rooms} | ${c.window} | ${storeTitle(r.label)} | ${int(r.acks_per_sec)} | ${range} | ${lat(l.p50)} | ${lat(l.p99)} | ${lat(l.p999)} | ${lat(l.max)} | ${slow} | ${pct(r.server_cpu_pct)} | ${pct(r.client_cpu_pct)} | ${pct(r.other_cpu_pct)} |`);
    }
  }
  line();
  const failedPub = publishRuns.filter((x) => !x.r);
  if (failedPub.length) {
    line('Publish measurements that failed (left out above):');
    line();
    for (const { name, failed } of failedPub) line(`- ${name}: ${failed || 'no result'}`);
    line();
  }
  line('"Slowest second": the acks of the slowest whole second of the measured window, against that run\'s mean (a');
  line('stall shows here and in the max latency). Acks per second of the window, for every run:');
  line();
  line('<details><summary>acks per second</summary>');
  line();
  line('```');
  for (const c of publishConfigs) {
    for (const runs of Object.values(c.stores)) {
      runs.forEach(({ r }, i) => {
        const name = `${c.publishers}/${c.rooms}/w${c.window} ${storeTitle(r.label)} #${i + 1}`.padEnd(23);
        line(`${name} ${(r.per_second || []).map((n) => String(n).padStart(7)).join(' ')}`);
      });
    }
  }
  line('```');
  line();
  line('</details>');
  line();
  line('SQLite ÷ memory. Throughput: the share of the in-memory rate the durable store keeps, per round (SQLite and');
  line('memory measured one right after the other), median and range over the rounds; latency: how many times longer');
  line('an ack takes, median runs compared.');
  line();
  line('| publishers | rooms | window | acked publishes/s SQLite ÷ memory | range over rounds | ack latency p50 | p99 | p99.9 |');
  line('|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const c of publishConfigs) {
    const sq = c.stores.sqlite;
    const mem = c.stores.memory;
    if (!sq || !mem) continue;
    const kept = sq
      .map(({ r }, i) => (mem[i] && mem[i].r.acks_per_sec ? r.acks_per_sec / mem[i].r.acks_per_sec : NaN))
      .filter(Number.isFinite);
    const share = (x) => `${(x * 100).toFixed(0)}%`;
    const keptMedian = kept.length ? share(median(kept)) : 'n/a';
    const keptRange = kept.length ? `${share(Math.min(...kept))}–${share(Math.max(...kept))}` : 'n/a';
    const [a, b] = [medianRun(sq).r.latency_us, medianRun(mem).r.latency_us];
    line(`| ${c.publishers} | ${c.rooms} | ${c.window} | ${keptMedian} | ${keptRange} | ${ratio(a.p50, b.p50)} | ${ratio(a.p99, b.p99)} | ${ratio(a.p999, b.p999)} |`);
  }
  line();
  line('### Integrity');
  line();
  line('Every publish must be acked, in order, with the room\'s seqs gapless (each seq from the join on acked to exactly');
  line('one publisher), and in shared rooms every other publisher must receive the message. Totals over the rounds.');
  line();
  line('| measurement | publishes sent | acked | error events | missing acks | seqs out of order / gaps | room messages received | lost | server log, counters, data on disk (round by round) |');
  line('|---|---:|---:|---:|---:|---:|---:|---:|---|');
  for (const c of publishConfigs) {
    for (const runs of Object.values(c.stores)) {
      const total = (f) => runs.reduce((n, { r }) => n + (f(r) || 0), 0);
      // "key: value" notes of every round, as "key: value1 / value2 / …".
      const byKey = new Map();
      runs.forEach(({ name }, i) => {
        for (const note of serverNotes(name)) {
          const at = note.indexOf(': ');
          const [key, value] = at < 0 ? [note, ''] : [note.slice(0, at), note.slice(at + 2)];
          if (!byKey.has(key)) byKey.set(key, runs.map(() => '–'));
          byKey.get(key)[i] = value || 'yes';
        }
      });
      const notes =
        [...byKey.keys()]
          .sort()
          .map((key) => {
            const values = byKey.get(key);
            if (values.every((v) => v === 'yes' || v === '–')) {
              // A line without a value, such as a metric: say in which rounds.
              const where = values.flatMap((v, i) => (v === 'yes' ? [i + 1] : []));
              return `\`${key}\` (round ${where.join(', ')})`;
            }
            return `\`${key}: ${values.join(' / ')}\``;
          })
          .join(', ') || '—';
      const title = `${plural(c.publishers, 'publisher')}, ${plural(c.rooms, 'room')}, window ${c.window}, ${storeTitle(runs[0].r.label)}`;
      line(`| ${title} | ${int(total((r) => r.sent_total))} | ${int(total((r) => r.acked_total))} | ${total((r) => r.server_errors)} | ${total((r) => r.missing_acks)} | ${total((r) => r.seq_out_of_order)} / ${total((r) => r.seq_gaps)} | ${int(total((r) => r.room_messages_received))} | ${int(total((r) => r.room_messages_lost))} | ${notes} |`);
    }
  }
  const pubEnds = publishRuns
    .filter((x) => x.r)
    .flatMap(({ r }) => [
      ...Object.entries(r.connection_ends || {}).map(([how, n]) => `${r.label}, ${r.publishers}/${r.rooms}/${r.window}: ${n} × ${how}`),
      ...(r.server_error_samples || []).map((e) => `${r.label}, ${r.publishers}/${r.rooms}/${r.window}: server said \`${e}\``),
    ]);
  if (pubEnds.length) {
    line();
    line('Connections that ended early, and errors:');
    line();
    for (const e of pubEnds) line(`- ${e}`);
  }
  line();
  line('### What is measured');
  line();
  line('- **Publishers** connect as `/ws?user=pN` and join room `pub-(N mod rooms)`, all before publishing starts.');
  line('  Each sends `{"type":"publish","room":ROOM,"body":BODY}` (no `id`, so no dedupe record is stored) whenever');
  line(`  it has fewer than \`window\` publishes un-acked; BODY is the same ${p0.size}-byte \`{"t":…,"pad":"xxx…"}\` as above.`);
  line('- **Acked publishes/s** counts acks received in the measured window. **Ack latency** is, for every one of');
  line('  them, the time from writing the publish to reading its ack (matched in order: a connection\'s publishes are');
  line('  acked in the order sent), in an HdrHistogram. Publishing stops at the end of the window; the outstanding');
  line('  acks are then awaited (and checked) but not counted.');
  line(`- **Retention** by count is set out of reach (\`--retention-count ${int(Number(env.BENCH_PUB_RETENTION))}\`), so neither store trims during a`);
  line('  measurement and the comparison is of storing alone. (With the default 10,000 per room, every commit also');
  line('  trims each room it wrote to once the room is full: an indexed `DELETE` for SQLite, a scan of the room\'s');
  line('  messages for the memory store, which then becomes the slower of the two.)');
  line('- **Load generator:** `switchboard-bench publish`, the same minimal client as the fan-out scenario.');
  line();
  line('### Commands');
  line();
  commands('publish', env.BENCH_PUB_COMMANDS);
  if (rounds > 1) {
    line(`The bench commands are those of the first round; the other ${plural(rounds - 1, 'round')} repeated them.`);
    line();
  }
}

// ---- How to run.
line('<a id="how-to-run"></a>');
line();
line('## How to run');
line();
line('```sh');
line('bench/run.sh            # build release, every measurement above, rewrite BENCHMARKS.md (~15 minutes)');
line('bench/everyday.sh       # only the everyday fan-out (Node ws, /relay, room; CPU and syscalls per delivery), its section (~2.5 minutes)');
line('bench/run.sh --smoke    # tiny versions of each scenario, --strict, no timing judged; writes nothing (under a minute)');
line('bench/run.sh --report target/bench-results    # render this file again from the last run\'s raw results');
line('```');
line();
line('Needs Rust, Node.js and npm (`ws` and `socket.io` are installed into `bench/baselines/node_modules` on first');
line('use). Environment variables override the sizes: `SUBSCRIBERS`, `PUBLISHERS`, `DURATION`, `WARMUP`, `SIZE`,');
line('`WINDOW`, `LEAD` and `RATE` (fan-out; `DURATION` and `WARMUP` also direct and publish); `SUBSCRIBERS_BIG`,');
line('`BIG_RATE` and `BIG_CALM_RATE` (fan-out to many; `BIG_RATE` replaces half of the peak, `BIG_CALM_RATE` the calm');
line('2 msg/s); `CONNECT_N` (connect); `DIRECT_PAIRS` and');
line('`DIRECT_RATE` (direct); `RESUME_CLIENTS` and `RESUME_ROOMS` (resume); `CHURN_RATE` and `CHURN_DURATION`');
line('(churn); `PRESENCE_USERS`, `PRESENCE_BASE_USERS`, `PRESENCE_OVER` (presence); `PUB_PUBLISHERS`, `PUB_WINDOW`, `PUB_RETENTION`, `PUB_ROUNDS` and `PUB_DURATION` (publish);');
line('`DATA_PARENT` puts the data directories on another disk; `RESULTS_DIR` keeps the raw results elsewhere. A');
line('measurement that fails is marked in this file and the run goes on. Measure on an otherwise idle machine:');
line('anything else running (a test suite, a build) shows up directly in the figures. To measure one target by hand');
line('(after `cargo build --release -p switchboard -p switchboard-bench`; both binaries are in `target/release`):');
line();
line('```sh');
line('switchboard serve --listen 127.0.0.1:8080 --rate-limit 0 --max-queue 16MiB --max-connections-per-ip 0 \\');
line('  --connect-rate-per-ip 0 --data-dir /tmp/sb-bench &');
line('switchboard-bench fanout --url ws://127.0.0.1:8080 --mode room --subscribers 1000 --duration 10s');
line('switchboard-bench publish --url ws://127.0.0.1:8080 --publishers 16 --window 64 --duration 10s');
line('switchboard-bench connect --url ws://127.0.0.1:8080 --mode ws --connections 19000 --server-pid $(pgrep -nx switchboard)');
line('switchboard-bench direct --url ws://127.0.0.1:8080 --pairs 1000');
line('switchboard-bench resume --url ws://127.0.0.1:8080 --clients 10000');
line('switchboard-bench churn --url ws://127.0.0.1:8080 --rate 200 --duration 10s');
line('switchboard-bench fanout --help    # every option of a scenario: --rate, --publishers, --size, --json …');
line('```');
line();
line('A scenario prints a progress line per second on stderr, then a summary and one JSON line on stdout (also');
line('written to `--json FILE`). `switchboard-bench` takes one subcommand per scenario: `fanout`, `publish`,');
line('`connect`, `direct`, `resume`, `churn`, `presence`.');

// ---- The hand-written profile notes, as they are.
let text = out.join('\n') + '\n';
if (notes != null) {
  text += '\n<a id="profiles"></a>\n\n' + notes + (notes.endsWith('\n') ? '' : '\n');
}
process.stdout.write(text);
