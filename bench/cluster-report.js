#!/usr/bin/env node
// Renders the "## Cluster mode (3 nodes on one Redis)" section of
// BENCHMARKS.md from the results bench/cluster.sh keeps (NAME.json per
// measurement, cluster.env), with a verdict against each goal of issue 11.
//
//   node bench/cluster-report.js RESULTS-DIR            the section, on stdout
//   node bench/cluster-report.js --splice SECTION FILE  puts SECTION into FILE
//                                  in place of its cluster section (or at the end)
'use strict';
const fs = require('fs');
const path = require('path');

const HEADING = '## Cluster mode (3 nodes on one Redis)';

if (process.argv[2] === '--splice') {
  // Replace only our section: from its heading to the next "## " heading
  // (or the end of the file); the rest of the file is left as it is.
  const [section, file] = process.argv.slice(3);
  const text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
  const add = fs.readFileSync(section, 'utf8').trimEnd() + '\n';
  const at = text.indexOf(`\n${HEADING}\n`);
  let out;
  if (at < 0) {
    out = `${text.trimEnd()}\n\n${add}`;
  } else {
    const next = text.indexOf('\n## ', at + 1 + HEADING.length);
    out = text.slice(0, at + 1) + add + (next < 0 ? '' : text.slice(next));
  }
  fs.writeFileSync(file, out);
  process.exit(0);
}

const dir = process.argv[2];
const env = {};
for (const line of fs.readFileSync(path.join(dir, 'cluster.env'), 'utf8').split('\n')) {
  // `export NAME=VALUE` lines as bash's printf %q wrote them; the values
  // used here are plain or $'…'/'…' quoted.
  const m = /^export (\w+)=(.*)$/.exec(line);
  if (!m) continue;
  let v = m[2];
  if (v.startsWith("$'") && v.endsWith("'")) v = v.slice(2, -1).replace(/\\n/g, '\n').replace(/\\'/g, "'");
  else if (v.startsWith("'") && v.endsWith("'")) v = v.slice(1, -1);
  else v = v.replace(/\\(.)/g, '$1');
  env[m[1]] = v;
}
const read = (name) => {
  try {
    return JSON.parse(fs.readFileSync(path.join(dir, `${name}.json`), 'utf8'));
  } catch {
    return null;
  }
};
const readText = (name) => {
  try {
    return fs.readFileSync(path.join(dir, name), 'utf8').trim();
  } catch {
    return '';
  }
};
const out = [];
const line = (s = '') => out.push(s);
const int = (v) => (v == null || Number.isNaN(v) ? 'n/a' : Math.round(v).toLocaleString('en-US'));
const ms = (us) => (us == null ? 'n/a' : `${(us / 1000).toFixed(us < 10000 ? 2 : 1)} ms`);
const pct = (v) => (v == null ? 'n/a' : `${v}%`);
const ratio = (a, b) => (a == null || b == null || !b ? 'n/a' : `${((a / b) * 100).toFixed(0)}%`);
const nodes = Number(env.CLUSTER_NODES || 3);

// Server CPU per delivery (or per ack), µs: server CPU % × window / count.
const cpuPer = (r, count) =>
  r && r.server_cpu_pct != null && count ? (r.server_cpu_pct / 100) * r.duration_s * 1e6 / count : null;
// The Redis share of a cluster result (the last --server-pid is Redis).
const redisCpu = (r) => {
  if (!r || !r.server_cpu_pct_by_pid) return null;
  const values = r.server_cpu_pct_by_pid.map((p) => p.cpu_pct);
  return values.length > nodes ? values[values.length - 1] : null;
};
const nodesCpu = (r) => {
  if (!r || !r.server_cpu_pct_by_pid) return null;
  return r.server_cpu_pct_by_pid.slice(0, nodes).map((p) => pct(p.cpu_pct)).join(' + ');
};

const fs1 = read('fanout-flat-single');
const fc1 = read('fanout-flat-cluster');
const hs = read('fanout-half-single');
const hc = read('fanout-half-cluster');

line(HEADING);
line();
line(`Measured by \`bench/cluster.sh\` on ${env.CLUSTER_STARTED} (commit ${env.CLUSTER_COMMIT}; ${env.CLUSTER_REDIS}).`);
line(`Issue 11: ${nodes} \`switchboard serve --redis\` nodes on one redis-server`);
line('(`appendonly yes`, `appendfsync always`, `maxmemory-policy noeviction`, a fresh one in a temporary directory');
line(`for every measurement, on ${env.CLUSTER_DISK}) against a single node with the default SQLite store, the same`);
line('release binary, measured in the same run, every server set started afresh. The load generator spreads');
line(`subscribers and publishers round-robin over the nodes (\`--url\` given once per node). Server flags: \`${env.CLUSTER_SB_FLAGS}\`.`);
line();
line(`> **Machine:** ${env.CLUSTER_NPROC} cores (${env.CLUSTER_CPU_MODEL}) shared by everything: in the cluster case`);
line(`> ${nodes} nodes + redis-server + the load generator on ${env.CLUSTER_NPROC} cores, against 1 node + the load generator.`);
line('> The cluster pays for a second hop (node → Redis → every node) on the same CPUs that run the nodes, so these');
line('> figures are a lower bound for the same cluster on separate machines. Load average before / after:');
line(`> ${env.CLUSTER_LOAD_BEFORE} / ${env.CLUSTER_LOAD_AFTER}. "server CPU" of the cluster is the ${nodes} nodes + Redis summed`);
line('> (percent of one core; the harness reads user+system together from /proc and has no user/system split).');
line();

line(`### Fan-out: ${int(Number(env.CLUSTER_SUBSCRIBERS))} subscribers in one room, ${env.CLUSTER_PUBLISHERS} publishers`);
line();
line(`Flat out (\`--rate 0\`, ack window 64, lead 64), then at ${env.CLUSTER_HALF_RATE} msg/s per publisher (${env.CLUSTER_HALF_RATE_FROM}).`);
line('In the cluster every node holds a third of the subscribers and one publisher, so 2 of 3 deliveries cross nodes');
line('(publisher\'s node → Redis pub/sub → subscriber\'s node); those are also shown apart ("cross-node").');
line();
line('| measurement | deliveries/s | ÷ single node | publishes/s | p50 | p99 | p99.9 | cross-node p50 | cross-node p99 | server CPU | of it Redis | server CPU per delivery | load generator CPU | other CPU | lost |');
line('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
const fanRow = (title, r, base) => {
  if (!r) {
    line(`| ${title} | failed | | | | | | | | | | | | | |`);
    return;
  }
  const l = r.latency_us || {};
  const c = r.latency_cross_node_us;
  const per = cpuPer(r, r.deliveries);
  line(`| ${title} | ${int(r.deliveries_per_sec)} | ${base ? ratio(r.deliveries_per_sec, base.deliveries_per_sec) : '—'} | ${int(r.publishes_per_sec)} | ${ms(l.p50)} | ${ms(l.p99)} | ${ms(l.p999)} | ${c ? ms(c.p50) : '—'} | ${c ? ms(c.p99) : '—'} | ${pct(r.server_cpu_pct)} | ${r.server_cpu_pct_by_pid ? pct(redisCpu(r)) : '—'} | ${per == null ? 'n/a' : `${per.toFixed(2)} µs`} | ${pct(r.client_cpu_pct)} | ${pct(r.other_cpu_pct)} | ${int(r.lost)} |`);
};
fanRow('single node, flat out', fs1, null);
fanRow(`${nodes} nodes, flat out`, fc1, fs1);
fanRow(`single node, ${env.CLUSTER_HALF_RATE}/s per publisher`, hs, null);
fanRow(`${nodes} nodes, ${env.CLUSTER_HALF_RATE}/s per publisher`, hc, hs);
line();
if (fc1 && fc1.server_cpu_pct_by_pid) line(`Flat out, the cluster's CPU by process (nodes, then Redis): ${nodesCpu(fc1)} + ${pct(redisCpu(fc1))}.`);
line();

line(`### Acked publishes: ${env.CLUSTER_PUB_PUBLISHERS} publishers in ${env.CLUSTER_PUB_PUBLISHERS} rooms`);
line();
line('No subscribers. An ack is sent once the store has the publish: SQLite committed (WAL, synchronous=FULL), or');
line('Redis answered the batch\'s Function call (with `appendfsync always`, after its fsync). Window 1 is one publish in');
line('flight per publisher: its ack latency is one commit (one fsync) round trip.');
line();
line('| window | server | acked publishes/s | ÷ single node | ack p50 | p99 | p99.9 | slowest second | server CPU | of it Redis | load generator CPU | other CPU |');
line('|---|---|---|---|---|---|---|---|---|---|---|---|');
const pubs = {};
for (const w of [env.CLUSTER_PUB_WINDOW, '1']) {
  const s = read(`publish-w${w}-single`);
  const c = read(`publish-w${w}-cluster`);
  pubs[w] = { s, c };
  for (const [title, r, base] of [['single node (SQLite)', s, null], [`${nodes} nodes on Redis`, c, s]]) {
    if (!r) {
      line(`| ${w} | ${title} | failed | | | | | | | | | |`);
      continue;
    }
    const l = r.latency_us || {};
    line(`| ${w} | ${title} | ${int(r.acks_per_sec)} | ${base ? ratio(r.acks_per_sec, base.acks_per_sec) : '—'} | ${ms(l.p50)} | ${ms(l.p99)} | ${ms(l.p999)} | ${int(r.slowest_second)} | ${pct(r.server_cpu_pct)} | ${r.server_cpu_pct_by_pid ? pct(redisCpu(r)) : '—'} | ${pct(r.client_cpu_pct)} | ${pct(r.other_cpu_pct)} |`);
  }
}
line();

const cs = read('connect-single');
const cc = read('connect-cluster');
line(`### Idle connections: ${nodes} × ${int(Number(env.CLUSTER_IDLE_PER_NODE))} \`/ws\` connections held at once`);
line();
line('One process here may hold 20,000 files, so one node tops out at about 19,900 connections. The load generator');
line('opens the connections from several processes (one per 15,000) bound to several 127.0.0.x (5,000 per address);');
line('connection N goes to node N mod 3. RSS per connection: each node\'s RSS after the connections settled, minus');
line('before, over the connections it holds.');
line();
line('| measurement | held | of | connects/s | handshake p99 | per node: connections, RSS after, RSS per connection | Redis RSS after (per connection) | server CPU while connecting |');
line('|---|---|---|---|---|---|---|---|');
const connRow = (title, r) => {
  if (!r) {
    line(`| ${title} | failed | | | | | | |`);
    return;
  }
  const mib = (k) => (k == null ? 'n/a' : `${(k / 1024).toFixed(0)} MiB`);
  const bytes = (b) => (b == null ? 'n/a' : `${(b / 1024).toFixed(1)} KiB`);
  let perNode;
  let redis = '—';
  if (r.rss_by_pid) {
    perNode = r.rss_by_pid.filter((p) => p.node != null)
      .map((p) => `node${p.node + 1}: ${int(p.connections)}, ${mib(p.after_kib)}, ${bytes(p.rss_per_conn_bytes)}`).join('; ');
    const rd = r.rss_by_pid.find((p) => p.node == null);
    if (rd) redis = `${mib(rd.after_kib)} (${bytes(rd.rss_per_conn_bytes)})`;
  } else {
    perNode = `${int(r.ready)}, ${mib(r.rss_kib && r.rss_kib.after)}, ${bytes(r.rss_per_conn_bytes)}`;
  }
  line(`| ${title} | ${int(r.ready)} | ${int(r.connections)} | ${int(r.connects_per_sec)} | ${ms(r.handshake_us && r.handshake_us.p99)} | ${perNode} | ${redis} | ${pct(r.server_cpu_pct)} |`);
};
connRow('single node', cs);
connRow(`${nodes} nodes on Redis`, cc);
line();

// Other work on the machine (a build, say) takes CPU from the servers
// measured: flag the measurements where it was not low.
const busy = [['fanout flat, single', fs1], ['fanout flat, cluster', fc1], ['fanout fixed, single', hs], ['fanout fixed, cluster', hc],
  ...Object.entries(pubs).flatMap(([w, p]) => [[`publish w${w}, single`, p.s], [`publish w${w}, cluster`, p.c]])]
  .filter(([, r]) => r && r.other_cpu_pct != null && r.other_cpu_pct > 25);
if (busy.length) {
  line(`> **Warning:** "other" CPU (the machine's busy time minus the servers' and the load generator's) was above 25% of a`);
  line(`> core in: ${busy.map(([n, r]) => `${n} (${r.other_cpu_pct}%)`).join(', ')}. Part of that is kernel work charged to no`);
  line('> measured process (loopback softirqs, fsync), but if it was other work on the machine those figures are low.');
  line();
}

// Verdicts.
line('### Against the goals of issue 11');
line();
const verdict = (ok) => (ok == null ? '**not measured**' : ok ? '**met**' : '**not met**');
const share = fc1 && fs1 ? fc1.deliveries_per_sec / fs1.deliveries_per_sec : null;
line(`- Cluster fan-out ≥ 70% of the single node's deliveries/s at ${int(Number(env.CLUSTER_SUBSCRIBERS))} subscribers: ${verdict(share == null ? null : share >= 0.7)}`
  + (share == null ? '.' : ` — ${(share * 100).toFixed(0)}% (${int(fc1.deliveries_per_sec)} against ${int(fs1.deliveries_per_sec)}/s)${share < 0.7 ? `, ${((0.7 - share) * 100).toFixed(0)} points short` : ''}.`));
const cross = hc && hc.latency_cross_node_us ? hc.latency_cross_node_us.p99 : null;
line(`- Cross-node p99 < 15 ms at half the peak rate: ${verdict(cross == null ? null : cross < 15000)}`
  + (cross == null ? '.' : ` — ${ms(cross)} (all deliveries: ${ms(hc.latency_us.p99)}; single node at the same rate: ${hs ? ms(hs.latency_us.p99) : 'n/a'}).`));
const held = cc ? cc.ready : null;
line(`- ${nodes} nodes hold more than one process' ~19,900 connections: ${verdict(held == null ? null : held > 19900)}`
  + (held == null ? '.' : ` — ${int(held)} of ${int(cc.connections)} held at once, ${int(cc.failed)} failed, ${int(cc.dropped)} dropped.`));
const w = env.CLUSTER_PUB_WINDOW;
if (pubs[w] && pubs[w].c && pubs[w].s) {
  line(`- Acked publish rate with \`appendfsync always\` (no goal set): ${int(pubs[w].c.acks_per_sec)}/s at window ${w}, ${ratio(pubs[w].c.acks_per_sec, pubs[w].s.acks_per_sec)} of the single node's SQLite`
    + (pubs['1'] && pubs['1'].c && pubs['1'].s ? `; ${int(pubs['1'].c.acks_per_sec)}/s at window 1 (${ratio(pubs['1'].c.acks_per_sec, pubs['1'].s.acks_per_sec)}).` : '.'));
}
const failed = (env.CLUSTER_FAILED || '').trim();
if (failed) {
  line();
  line('**Failed measurements:**');
  for (const f of failed.split('\n')) line(`- ${f}`);
}
line();
line('NOTES-PLACEHOLDER');
line();
line('### How to rerun');
line();
line('```sh');
line('bench/cluster.sh                        # ~6 min: builds, starts Redis and the nodes, measures, rewrites this section');
line('CLUSTER=1 bench/run.sh                  # the whole harness, then this');
line('bench/cluster.sh --report target/bench-results-cluster   # render this section again from the kept results');
line('```');
line();
line('The bench commands, as run (`--url` lists the nodes; `--server-pid` the nodes then Redis):');
line();
line('```sh');
for (const f of fs.readdirSync(dir).filter((f) => f.endsWith('.cmd')).sort()) line(readText(f));
line('```');
const notes = path.join(__dirname, 'cluster-notes.md');
let text = out.join('\n');
text = text.replace('NOTES-PLACEHOLDER', fs.existsSync(notes) ? fs.readFileSync(notes, 'utf8').trim() : '');
process.stdout.write(text.replace(/\n{3,}/g, '\n\n') + '\n');
