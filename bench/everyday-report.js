#!/usr/bin/env node
// Renders the "## Everyday fan-out" section of BENCHMARKS.md, and its rows
// of the summary of targets, from what bench/everyday.sh keeps in its
// results directory (runs.jsonl, everyday.env), judged against
// bench/targets.json's everyday_fanout.
//
//   node bench/everyday-report.js DIR                 the section, on stdout
//   node bench/everyday-report.js --splice DIR FILE   puts the section and the
//                        summary rows into FILE, in place of the old ones
//
// bench/report.js uses render() to put the same section and rows in the
// BENCHMARKS.md it writes when bench/run.sh ran this step.
'use strict';
const fs = require('fs');
const path = require('path');

const HEADING_PREFIX = '## Everyday fan-out';
const ROW_PREFIX = '| Everyday fan-out';

function readEnv(dir) {
  const env = {};
  let text = '';
  try {
    text = fs.readFileSync(path.join(dir, 'everyday.env'), 'utf8');
  } catch {
    return env;
  }
  for (const line of text.split('\n')) {
    // `export NAME=VALUE` as bash's printf %q wrote it.
    const m = /^export (\w+)=(.*)$/.exec(line);
    if (!m) continue;
    let v = m[2];
    if (v.startsWith("$'") && v.endsWith("'")) v = v.slice(2, -1).replace(/\\n/g, '\n').replace(/\\'/g, "'");
    else if (v.startsWith("'") && v.endsWith("'")) v = v.slice(1, -1);
    else v = v.replace(/\\(.)/g, '$1');
    env[m[1]] = v;
  }
  return env;
}

const median = (xs) => {
  const s = xs.filter((x) => x != null && Number.isFinite(x)).sort((a, b) => a - b);
  const n = s.length;
  return n === 0 ? null : n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
};
const int = (n) => (n == null || !Number.isFinite(Number(n)) ? 'n/a' : Math.round(n).toLocaleString('en-US'));
const fix = (v, d) => (v == null || !Number.isFinite(v) ? 'n/a' : v.toFixed(d));
const range = (xs, d) => {
  const s = xs.filter((x) => x != null && Number.isFinite(x));
  return s.length ? `${fix(Math.min(...s), d)}–${fix(Math.max(...s), d)}` : 'n/a';
};
const tick = (ok) => (ok ? '✅' : '❌');

const SERVERS = [
  { key: 'node', title: 'Node.js `ws` broadcast baseline', short: 'Node ws' },
  { key: 'relay', title: 'Switchboard `/relay/bench` (SQLite store)', short: 'Switchboard relay' },
  { key: 'room', title: 'Switchboard room mode (`/ws`, SQLite store)', short: 'Switchboard room' },
];

// render(DIR, TARGETS): { section: [lines], summary: [{target, measured, verdict}],
// sendSystemUs }: sendSystemUs is the kernel's cost of one send as measured
// here (Switchboard relay's system CPU per delivery, one write each), the
// unit of the big-room floor in bench/report.js; null if not measured.
function render(dir, targets) {
  const t = targets.everyday_fanout;
  const env = readEnv(dir);
  let runs = [];
  try {
    runs = fs
      .readFileSync(path.join(dir, 'runs.jsonl'), 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l));
  } catch {
    runs = [];
  }
  const ok = (r) => !r.problems.some((p) => p.startsWith('bench failed')) && r.cpu_us != null;
  const of = (server) => runs.filter((r) => r.server === server && ok(r));
  const med = (server, get) => median(of(server).map(get));
  const all = (server, get) => of(server).map(get);
  // Node ÷ Switchboard CPU per delivery, within each round (both measured
  // minutes apart on the same machine), then the median of those.
  const roundRatios = (server) =>
    [...new Set(runs.map((r) => r.round))]
      .map((round) => {
        const n = runs.find((r) => r.server === 'node' && r.round === round && ok(r));
        const s = runs.find((r) => r.server === server && r.round === round && ok(r));
        return n && s ? n.cpu_us / s.cpu_us : null;
      })
      .filter((x) => x != null);
  const subscribers = Number(env.EVERYDAY_SUBSCRIBERS || t.subscribers);
  const rate = Number(env.EVERYDAY_RATE || t.rate);
  const out = [];
  const line = (s = '') => out.push(s);
  const summary = [];

  line(`${HEADING_PREFIX}: ${int(rate)} messages/s to ${int(subscribers)} subscribers (CPU and syscalls per delivery)`);
  line();
  line(`Measured by \`bench/everyday.sh\` (issue 12), ${env.EVERYDAY_STARTED || '?'}, Switchboard ${env.EVERYDAY_COMMIT || '?'}, Node.js ${env.EVERYDAY_NODE || '?'};`);
  line(`load average before ${env.EVERYDAY_LOAD_BEFORE || '?'}, after ${env.EVERYDAY_LOAD_AFTER || '?'}. One publisher at ${int(rate)} msg/s, ${env.EVERYDAY_SIZE || 100}-byte bodies,`);
  line(`${int(subscribers)} subscribers: ${int(rate * subscribers)} deliveries/s, each message reaching each subscriber on its own. Every server`);
  line(`started afresh for each measurement; ${env.EVERYDAY_ROUNDS || '?'} rounds, the order rotated each round; medians (min–max over the rounds).`);
  line(`Window: ${env.EVERYDAY_DURATION || '?'}, opening ${env.EVERYDAY_WARMUP || '?'} after publishing starts. CPU from \`/proc/PID/stat\` (utime, stime) at both`);
  line('ends of the window; syscalls from `perf stat` over the same window (`raw_syscalls:sys_enter` for the total,');
  line('`syscalls:sys_enter_NAME` by name; writes to the server\'s eventfds, its threads waking each other, are counted');
  line('apart from the write family). Counting costs each syscall a little: every server pays it.');
  line('What the syscalls other than writes are (who wakes whom) and where the CPU goes: the profile notes,');
  line('"Everyday fan-out: where the time goes", at the end of this file.');
  line();
  if (!runs.length) {
    line('Not measured in this run.');
    line();
  } else {
    line('| | ' + SERVERS.map((s) => s.short).join(' | ') + ' |');
    line('|---|' + SERVERS.map(() => '---:').join('|') + '|');
    const row = (label, get, d) =>
      line(`| ${label} | ${SERVERS.map((s) => (of(s.key).length ? `${fix(med(s.key, get), d)} (${range(all(s.key, get), d)})` : 'n/a')).join(' | ')} |`);
    row('deliveries/s', (r) => r.deliveries_per_sec, 0);
    row('**server CPU µs per delivery**', (r) => r.cpu_us, 2);
    row('… user', (r) => r.cpu_us_user, 2);
    row('… system', (r) => r.cpu_us_system, 2);
    row('server CPU, % of a core', (r) => r.cpu_pct_window, 0);
    row('**syscalls per delivery**', (r) => r.syscalls?.total, 3);
    row('… write family (write, writev, sendto, sendmsg)', (r) => r.syscalls?.write_family, 3);
    row('… not a write (incl. eventfd writes)', (r) => r.syscalls?.not_write, 3);
    row('server RSS, MiB', (r) => (r.rss_bytes == null ? null : r.rss_bytes / 1048576), 1);
    row('latency p50, µs', (r) => r.latency_us?.p50, 0);
    row('latency p99, µs', (r) => r.latency_us?.p99, 0);
    row('other CPU (rest of the machine), % of a core', (r) => r.other_cpu_pct, 0);
    line(`| **CPU per delivery, Node ÷ this** (median of the rounds' ratios) | – | ${SERVERS.slice(1)
      .map((s) => {
        const rs = roundRatios(s.key);
        return rs.length ? `**${fix(median(rs), 2)}×** (${range(rs, 2)})` : 'n/a';
      })
      .join(' | ')} |`);
    line();
    // Every syscall seen, per delivery, by name.
    const names = new Set();
    for (const r of runs) for (const k of Object.keys(r.syscalls?.by_name || {})) names.add(k);
    // The write family first, then the rest by how many the servers made
    // (the most of any server), "other" last; names no server made are left out.
    const order = ['write', 'writev', 'sendto', 'sendmsg', 'sendmmsg'];
    const most = (n) => Math.max(...SERVERS.map((s) => med(s.key, (r) => r.syscalls?.by_name?.[n] || 0) || 0));
    const sorted = [...names]
      .filter((n) => most(n) >= 0.00005)
      .sort((a, b) => {
        const ia = order.indexOf(a), ib = order.indexOf(b);
        if (ia >= 0 || ib >= 0) return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib);
        if (a === 'other') return 1;
        if (b === 'other') return -1;
        return most(b) - most(a);
      });
    if (sorted.length) {
      line('Syscalls per delivery by name (medians; "other": syscalls no named counter caught):');
      line();
      line('| syscall | ' + SERVERS.map((s) => s.short).join(' | ') + ' |');
      line('|---|' + SERVERS.map(() => '---:').join('|') + '|');
      for (const n of sorted) {
        line(`| ${n} | ${SERVERS.map((s) => (of(s.key).length ? fix(med(s.key, (r) => r.syscalls?.by_name?.[n] || 0), 4) : 'n/a')).join(' | ')} |`);
      }
      line();
    }
    const problems = runs.filter((r) => r.problems.length);
    const busy = runs.filter((r) => r.other_cpu_pct != null && r.other_cpu_pct > 25);
    if (problems.length || busy.length) {
      line('> **Note:**');
      for (const r of problems) line(`> - ${r.name}: ${r.problems.join('; ')}`);
      for (const r of busy) line(`> - ${r.name}: other processes took ${r.other_cpu_pct}% of a core during the window`);
      line();
    }
    line('Commands (a fresh server and data directory DIR for each; `bench/everyday.sh --help` says more):');
    line();
    line('```sh');
    for (const s of SERVERS) {
      try {
        const cmd = fs.readFileSync(path.join(dir, `everyday-${s.key}-r1.cmd`), 'utf8').trim();
        for (const c of cmd.split('\n')) line(c);
      } catch {
        // not measured
      }
    }
    line('```');
    line();
  }

  // The verdicts, for the summary of targets.
  for (const s of SERVERS.slice(1)) {
    const rs = roundRatios(s.key);
    const r = median(rs);
    const sb = med(s.key, (x) => x.cpu_us);
    const nd = med('node', (x) => x.cpu_us);
    summary.push({
      target: `${ROW_PREFIX.slice(2)}, ${int(rate)} msg/s to ${int(subscribers)} subscribers: ${s.short} server CPU per delivery ≥ ${t.min_cpu_ratio_vs_node}× lower than Node ws`,
      measured: r == null ? 'not measured in this run' : `${fix(sb, 2)} µs vs ${fix(nd, 2)} µs: ${fix(r, 2)}× (rounds ${range(rs, 2)})`,
      verdict: tick(r != null && r >= t.min_cpu_ratio_vs_node),
    });
    const total = med(s.key, (x) => x.syscalls?.total);
    const nw = med(s.key, (x) => x.syscalls?.not_write);
    summary.push({
      target: `${ROW_PREFIX.slice(2)}: ${s.short} ≤ ${t.max_syscalls_per_delivery} syscalls per delivery, ≤ ${t.max_not_write_per_delivery} of them not a write`,
      measured: total == null ? 'not measured in this run' : `${fix(total, 3)} per delivery, ${fix(nw, 3)} not a write`,
      verdict: tick(total != null && total <= t.max_syscalls_per_delivery && nw <= t.max_not_write_per_delivery),
    });
  }
  return { section: out, summary, sendSystemUs: med('relay', (x) => x.cpu_us_system) };
}

module.exports = { render, HEADING_PREFIX, ROW_PREFIX };

if (require.main === module) {
  const targets = JSON.parse(fs.readFileSync(path.join(__dirname, 'targets.json'), 'utf8'));
  if (process.argv[2] === '--splice') {
    const [dir, file] = process.argv.slice(3);
    const { section, summary } = render(dir, targets);
    let lines = fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n') : [];
    // The summary rows: the old ones out, the new ones at the end of the
    // summary table (the first table after "## Summary: targets").
    lines = lines.filter((l) => !l.startsWith(ROW_PREFIX));
    const sum = lines.indexOf('## Summary: targets');
    if (sum >= 0) {
      let i = lines.findIndex((l, j) => j > sum && l.startsWith('|'));
      while (i >= 0 && i < lines.length && lines[i].startsWith('|')) i++;
      if (i > 0) lines.splice(i, 0, ...summary.map((s) => `| ${s.target} | ${s.measured} | ${s.verdict} |`));
    }
    // The section: in place of the old one (up to the next "## " heading or
    // anchor before it), else before the 10,000-subscriber fan-out, else at
    // the end.
    const start = lines.findIndex((l) => l.startsWith(HEADING_PREFIX));
    const add = [...section];
    while (add.length && add[add.length - 1] === '') add.pop();
    if (start >= 0) {
      let end = lines.findIndex((l, j) => j > start && l.startsWith('## '));
      if (end < 0) end = lines.length;
      // Keep the anchor of the next section with it.
      while (end > start + 1 && (lines[end - 1] === '' || lines[end - 1].startsWith('<a id='))) end--;
      lines.splice(start, end - start, ...add, '');
    } else {
      const anchor = lines.findIndex((l) => l === '<a id="fan-out-10000"></a>');
      if (anchor >= 0) lines.splice(anchor, 0, '<a id="everyday"></a>', '', ...add, '');
      else lines.push('', ...add);
    }
    fs.writeFileSync(file, lines.join('\n'));
  } else {
    const { section } = render(process.argv[2], targets);
    process.stdout.write(section.join('\n') + '\n');
  }
}
