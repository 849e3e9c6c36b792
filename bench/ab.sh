#!/usr/bin/env bash
# Before/after (A/B) comparison of two Switchboard server binaries, measured
# in the same run by the same load generator, so that only the server
# differs. For each round, each scenario is measured on A, then on B, each
# time on a freshly started server (fresh data directory):
#
# 1. fanout-sqlite: fan-out, room mode, SQLite store, SUBSCRIBERS (1000)
#    subscribers at RATE (100) msg/s, the everyday rate: server CPU µs per
#    delivery (user, system, total), deliveries/s, p50/p99 latency.
# 2. fanout-memory: the same flat out (--rate 0), memory store:
#    deliveries/s, server CPU µs per delivery, latency.
# 3. connect: CONNECT_N (5000) idle /ws connections, each joining a room
#    (connect --mode room): server RSS per connection (the connect
#    scenario's own measurement: RSS before, and after it settles), connect
#    and join latency, connects/s, server CPU per connection.
# 4. flat-sqlite: room mode, SQLite store, flat out: deliveries/s (the
#    writer thread's share: compare it with flat-relay of the same run).
# 5. flat-relay: relay mode (/relay/bench, no store) flat out.
#
# Server and bench flags are those of bench/run.sh (its fanout and connect
# functions), which stays the one description of how a measurement is made.
# The report is a table of medians over ROUNDS (A, B, B/A, with the min–max
# spread of each side), in $RESULTS_DIR/ab.md, with every raw result kept
# next to it.
#
#   bench/ab.sh BEFORE_BIN AFTER_BIN [ROUNDS]      (ROUNDS default 3: ~3
#                                                   minutes on 2 cores, up
#                                                   to ~9 if every pair has
#                                                   to be measured again)
#
# The machine may be shared: `uptime` is printed before and after every
# measurement, and a pair (A and B of one scenario in one round) in which
# either side saw more than NOISY_OTHER_PCT % of a core taken by other
# processes (the bench's own `other_cpu_pct`), or failed, is measured again,
# up to MAX_ATTEMPTS times in all; the least disturbed attempt is the one
# kept, and every attempt stays in the raw results.
#
# Overrides (environment): SWITCHBOARD_BENCH_BIN (the load generator;
# default: `cargo build --release -p switchboard-bench` in this tree),
# RESULTS_DIR (default /tmp/switchboard-ab-DATE), DATA_PARENT (where the
# fresh data directories go; default ${TMPDIR:-/tmp}), SUBSCRIBERS, RATE,
# PUBLISHERS, DURATION, WARMUP, SIZE, WINDOW, LEAD, CONNECT_N,
# SCENARIOS (a subset of "fanout-sqlite fanout-memory connect flat-sqlite
# flat-relay"; the default is the first three), NOISY_OTHER_PCT (default 50), MAX_ATTEMPTS (default 3),
# BENCH_TIMEOUT (longest one bench run may take, default 180s).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
. bench/lib.sh

usage() { echo "usage: bench/ab.sh BEFORE_BIN AFTER_BIN [ROUNDS]" >&2; exit 2; }
[ $# -ge 2 ] && [ $# -le 3 ] || usage
BIN_A=$(realpath "$1")
BIN_B=$(realpath "$2")
ROUNDS=${3:-3}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || usage
for bin in "$BIN_A" "$BIN_B"; do
  [ -x "$bin" ] || { echo "bench/ab.sh: $bin is not an executable" >&2; exit 2; }
done
command -v node >/dev/null || { echo "bench/ab.sh: node is needed (results, as in bench/run.sh)" >&2; exit 1; }

SUBSCRIBERS=${SUBSCRIBERS:-1000}
RATE=${RATE:-100}
PUBLISHERS=${PUBLISHERS:-1}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-1s}
SIZE=${SIZE:-100}
WINDOW=${WINDOW:-64}
LEAD=${LEAD:-$WINDOW}
CONNECT_N=${CONNECT_N:-5000}
NOISY_OTHER_PCT=${NOISY_OTHER_PCT:-50}
MAX_ATTEMPTS=${MAX_ATTEMPTS:-3}
SCENARIOS=${SCENARIOS:-fanout-sqlite fanout-memory connect}
for scenario in $SCENARIOS; do
  case $scenario in
    fanout-sqlite | fanout-memory | connect | flat-sqlite | flat-relay) ;;
    *) echo "bench/ab.sh: unknown scenario $scenario in SCENARIOS" >&2; exit 2 ;;
  esac
done
[[ $MAX_ATTEMPTS =~ ^[1-9][0-9]*$ ]] || { echo "bench/ab.sh: MAX_ATTEMPTS must be a positive integer" >&2; exit 2; }
BENCH_TIMEOUT=${BENCH_TIMEOUT:-180s}

say() { printf '==> %s\n' "$*" >&2; }

# seconds DURATION: a bench duration (500ms, 10s, 1m) in seconds, for sleep.
seconds() {
  case $1 in
    *ms) awk -v v="${1%ms}" 'BEGIN { print v / 1000 }' ;;
    *s) echo "${1%s}" ;;
    *m) awk -v v="${1%m}" 'BEGIN { print v * 60 }' ;;
    *) echo "bench/ab.sh: cannot read the duration $1 (ms, s or m)" >&2; exit 2 ;;
  esac
}
WARMUP_S=$(seconds "$WARMUP")
DURATION_S=$(seconds "$DURATION")

if [ -n "${SWITCHBOARD_BENCH_BIN:-}" ]; then
  BENCH_BIN=$(realpath "$SWITCHBOARD_BENCH_BIN")
else
  say "building switchboard-bench (release)"
  cargo build --release -p switchboard-bench --quiet
  BENCH_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/switchboard-bench
fi
[ -x "$BENCH_BIN" ] || { echo "bench/ab.sh: no load generator at $BENCH_BIN" >&2; exit 1; }
# Thousands of client sockets, and the server's side of each.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

RESULTS_DIR=${RESULTS_DIR:-/tmp/switchboard-ab-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS_DIR"
RD=$(realpath "$RESULTS_DIR")
: >"$RD/runs.jsonl"
: >"$RD/uptime.log"
if [ -n "${DATA_PARENT:-}" ]; then
  mkdir -p "$DATA_PARENT"
  DATA_ROOT=$(mktemp -d "$DATA_PARENT/switchboard-ab.XXXXXX")
else
  DATA_ROOT=$(mktemp -d)
fi

# Every process this script starts is one of these two; the trap ends them
# whatever way the script leaves.
SERVER_PID=""
BENCH_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    stop_pid "$SERVER_PID"
    SERVER_PID=""
  fi
}
# The bench runs under `timeout`, which leads its own process group and
# passes a TERM on to the whole group (connect's worker processes too).
stop_bench() {
  if [ -n "$BENCH_PID" ]; then
    stop_pid "$BENCH_PID"
    BENCH_PID=""
  fi
}
cleanup() {
  stop_bench
  stop_server
  rm -rf "$DATA_ROOT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# uptime_line NAME WHEN: `uptime` (printed, and kept in uptime.log); sets
# LOAD1 to its one-minute load average.
uptime_line() {
  local line
  line=$(uptime)
  printf '%s %-6s %s\n' "$1" "$2" "$line" >>"$RD/uptime.log"
  say "uptime ($2 $1): $line"
  LOAD1=$(cut -d' ' -f1 /proc/loadavg)
}

# start_switchboard NAME BIN STORE [FLAG...]: a fresh server (bench/run.sh's
# SB_SERVE flags) on a fresh data directory, on 127.0.0.1 and a free port;
# waits for its "listening on" line. Sets SERVER_PID and PORT.
start_switchboard() {
  local name=$1 bin=$2 store=$3
  shift 3
  local serve=(serve --listen 127.0.0.1:0 --rate-limit 0 --max-queue 16MiB)
  # Thousands of clients from one address: lift the per-IP limits where the
  # server has them.
  if "$bin" serve --help | grep -q -- '--connect-rate-per-ip'; then
    serve+=(--max-connections-per-ip 0 --connect-rate-per-ip 0)
  fi
  mkdir -p "$DATA_ROOT/$name"
  printf '%s\n' "$bin ${serve[*]} --store $store --data-dir DIR $*" >"$RD/$name.server-cmd"
  # Created here, not by the background job's redirection, which may not
  # have happened yet when we first look.
  : >"$RD/$name.server-out"
  : >"$RD/$name.server-err"
  "$bin" "${serve[@]}" --store "$store" --data-dir "$DATA_ROOT/$name" "$@" \
    >>"$RD/$name.server-out" 2>>"$RD/$name.server-err" &
  SERVER_PID=$!
  if PORT=$(listening_port "$RD/$name.server-out" "$SERVER_PID"); then
    return 0
  fi
  echo "bench/ab.sh: $name did not start:" >&2
  cat "$RD/$name.server-out" "$RD/$name.server-err" >&2
  exit 1
}

# cpu_ticks PID: "UTIME STIME" of a process, in clock ticks (fields 14 and
# 15 of /proc/PID/stat, counted after the command name, which may contain
# spaces).
cpu_ticks() {
  local stat
  stat=$(cat "/proc/$1/stat") || return 1
  # shellcheck disable=SC2086 # splitting the fields is the point
  set -- ${stat##*) }
  echo "${12} ${13}"
}

# run_bench NAME ARG...: `switchboard-bench ARG...` against the running
# server (--server-pid, --json NAME.json added), in the background under
# `timeout` (so that no wait on it is unbounded). Sets BENCH_PID.
run_bench() {
  local name=$1
  shift
  : >"$RD/$name.log"
  timeout --kill-after=5s "$BENCH_TIMEOUT" "$BENCH_BIN" "$@" --server switchboard \
    --server-pid "$SERVER_PID" --json "$RD/$name.json" >"$RD/$name.txt" 2>"$RD/$name.log" &
  BENCH_PID=$!
}

# finish_bench NAME: waits for the bench (bounded by its timeout); prints
# its summary. Returns its exit status.
finish_bench() {
  local name=$1 status=0
  wait "$BENCH_PID" || status=$?
  BENCH_PID=""
  sed 's/^/    /' "$RD/$name.txt" >&2
  if [ "$status" != 0 ]; then
    say "FAILED: $name (exit status $status):"
    tail -n 5 "$RD/$name.log" >&2
  fi
  return "$status"
}

# fanout NAME BIN STORE RATE [MODE]: one fan-out measurement (bench/run.sh's
# fanout flags, room mode unless MODE says relay) on a fresh server. Besides the bench's own CPU
# reading, the server's user and system CPU time is read over the measured
# window, which opens WARMUP after the bench says "publishing" and lasts
# DURATION: the sleeps below are that clock, not a synchronisation.
fanout() {
  local name=$1 bin=$2 store=$3 rate=$4 mode=${5:-room} status=0 ticks0="" ticks1=""
  start_switchboard "$name" "$bin" "$store"
  uptime_line "$name" before
  local load_before=$LOAD1
  run_bench "$name" fanout --url "ws://127.0.0.1:$PORT" --mode "$mode" \
    --subscribers "$SUBSCRIBERS" --publishers "$PUBLISHERS" --rate "$rate" \
    --duration "$DURATION" --warmup "$WARMUP" --size "$SIZE" --window "$WINDOW" --lead "$LEAD" \
    --label "$name" --store "$store"
  # The "connected N in Xs; publishing" line: the window opens WARMUP later.
  # Connecting 1000 subscribers takes seconds; 120 s is a failure.
  local started=false
  for _ in $(seq 2400); do
    if grep -q '; publishing$' "$RD/$name.log"; then started=true; break; fi
    kill -0 "$BENCH_PID" 2>/dev/null || break
    sleep 0.05
  done
  if $started; then
    sleep "$WARMUP_S"
    ticks0=$(cpu_ticks "$SERVER_PID" || true)
    sleep "$DURATION_S"
    ticks1=$(cpu_ticks "$SERVER_PID" || true)
  fi
  finish_bench "$name" || status=$?
  uptime_line "$name" after
  stop_server
  rm -rf "${DATA_ROOT:?}/$name"
  record "$name" "$status" "$load_before" "$LOAD1" "$ticks0" "$ticks1"
}

# connect NAME BIN: CONNECT_N idle connections, each joining a room
# (bench/run.sh's connect: memory store, --max-connections 100000; the
# connect scenario's own settle and hold for the RSS per connection).
connect() {
  local name=$1 bin=$2 status=0
  start_switchboard "$name" "$bin" memory --max-connections 100000
  uptime_line "$name" before
  local load_before=$LOAD1
  run_bench "$name" connect --url "ws://127.0.0.1:$PORT" --mode room \
    --connections "$CONNECT_N" --label "$name" --store memory
  finish_bench "$name" || status=$?
  uptime_line "$name" after
  stop_server
  rm -rf "${DATA_ROOT:?}/$name"
  record "$name" "$status" "$load_before" "$LOAD1" "" ""
}

# record NAME STATUS LOAD_BEFORE LOAD_AFTER TICKS0 TICKS1: the metrics of
# one measurement, as one object in NAME.run (the pair logic below decides
# whether it is kept). Identity (scenario, side, round, attempt) comes from
# the globals set by the loop.
record() {
  local name=$1
  SC=$SCENARIO SIDE=$SIDE ROUND=$ROUND ATTEMPT=$ATTEMPT STATUS=$2 LOAD_BEFORE=$3 LOAD_AFTER=$4 \
    TICKS0=$5 TICKS1=$6 NOISY=$NOISY_OTHER_PCT NAME=$name node -e '
    const fs = require("fs");
    const e = process.env;
    const run = {
      name: e.NAME, scenario: e.SC, side: e.SIDE, round: +e.ROUND, attempt: +e.ATTEMPT,
      load_before: +e.LOAD_BEFORE, load_after: +e.LOAD_AFTER, problems: [], metrics: {},
    };
    let r = null;
    try { r = JSON.parse(fs.readFileSync(process.argv[1], "utf8")); } catch (_) {}
    if (e.STATUS !== "0" || !r) {
      run.problems.push(`bench failed (exit status ${e.STATUS})`);
    } else {
      run.other_cpu_pct = r.other_cpu_pct;
      run.server_cpu_pct = r.server_cpu_pct;
      const m = run.metrics;
      if (r.scenario === "fanout") {
        m.deliveries_per_sec = r.deliveries_per_sec;
        m.p50_us = r.latency_us.p50;
        m.p99_us = r.latency_us.p99;
        // The bench reads the server CPU over exactly the measured window;
        // the split into user and system comes from our own reading of
        // the same window (a few ms off at most).
        if (r.server_cpu_pct != null && r.deliveries > 0) {
          const total = (r.server_cpu_pct / 100) * r.duration_s * 1e6 / r.deliveries;
          m.cpu_us_per_delivery = total;
          const t0 = e.TICKS0.split(" ").map(Number), t1 = e.TICKS1.split(" ").map(Number);
          const u = t1[0] - t0[0], s = t1[1] - t0[1];
          if (e.TICKS0 && e.TICKS1 && u + s > 0) {
            m.cpu_us_per_delivery_user = total * u / (u + s);
            m.cpu_us_per_delivery_system = total * s / (u + s);
          } else {
            run.problems.push("no user/system reading of the server");
          }
        }
        if (r.lost) run.problems.push(`${r.lost} deliveries lost`);
        if (r.disconnected_subscribers) run.problems.push(`${r.disconnected_subscribers} subscribers disconnected`);
        if (r.server_errors) run.problems.push(`${r.server_errors} server errors`);
        if ((r.publisher_errors || []).length) run.problems.push("publisher errors");
      } else {
        m.rss_per_conn_bytes = r.rss_per_conn_bytes;
        m.rss_anon_per_conn_bytes = r.rss_anon_per_conn_bytes;
        m.ready_p50_us = r.ready_us.p50;
        m.ready_p99_us = r.ready_us.p99;
        m.handshake_p50_us = r.handshake_us.p50;
        m.handshake_p99_us = r.handshake_us.p99;
        m.connects_per_sec = r.connects_per_sec;
        m.server_cpu_us_per_conn = r.server_cpu_us_per_conn;
        if (r.failed) run.problems.push(`${r.failed} connections failed`);
        if (r.dropped) run.problems.push(`${r.dropped} connections dropped`);
        if (r.settled === false) run.problems.push("server RSS did not settle");
      }
    }
    run.noisy = run.other_cpu_pct != null && run.other_cpu_pct > +e.NOISY;
    fs.writeFileSync(process.argv[2], JSON.stringify(run) + "\n");
  ' "$RD/$name.json" "$RD/$name.run"
}

# keep NAME KEPT: appends the run to runs.jsonl, marked kept (true) or not.
keep() {
  node -e 'const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    r.kept = process.argv[2] === "true";
    process.stdout.write(JSON.stringify(r) + "\n");' "$RD/$1.run" "$2" >>"$RD/runs.jsonl"
}

# disturbance NAME_A NAME_B: the most CPU other processes took during either
# run (% of one core); 1000000 when one failed or has no reading.
disturbance() {
  node -e 'const fs = require("fs");
    const ds = process.argv.slice(1).map((f) => {
      const r = JSON.parse(fs.readFileSync(f, "utf8"));
      const failed = r.problems.some((p) => p.startsWith("bench failed"));
      return failed || r.other_cpu_pct == null ? 1e6 : r.other_cpu_pct;
    });
    console.log(Math.max(...ds));' "$RD/$1.run" "$RD/$2.run"
}

# measure SCENARIO NAME BIN: one measurement of SCENARIO.
measure() {
  case $1 in
    fanout-sqlite) fanout "$2" "$3" sqlite "$RATE" ;;
    fanout-memory) fanout "$2" "$3" memory 0 ;;
    connect) connect "$2" "$3" ;;
    flat-sqlite) fanout "$2" "$3" sqlite 0 ;;
    flat-relay) fanout "$2" "$3" memory 0 relay ;;
  esac
}

STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')
STARTED_S=$(date +%s)
say "A = $BIN_A"
say "B = $BIN_B"
say "load generator: $BENCH_BIN; results in $RD"
for ROUND in $(seq "$ROUNDS"); do
  for SCENARIO in $SCENARIOS; do
    # A then B; the pair again (both, so that A and B still share their
    # conditions) while either was disturbed or failed, up to MAX_ATTEMPTS;
    # the least disturbed pair is kept.
    tried=()
    best=""
    best_d=""
    for ATTEMPT in $(seq "$MAX_ATTEMPTS"); do
      names=()
      for SIDE in A B; do
        if [ "$SIDE" = A ]; then bin=$BIN_A; else bin=$BIN_B; fi
        name="$SCENARIO-r$ROUND-$SIDE-$ATTEMPT"
        say "round $ROUND/$ROUNDS, $SCENARIO, $SIDE (attempt $ATTEMPT)"
        measure "$SCENARIO" "$name" "$bin"
        names+=("$name")
      done
      tried+=("${names[@]}")
      d=$(disturbance "${names[@]}")
      if [ -z "$best" ] || awk -v d="$d" -v b="$best_d" 'BEGIN { exit !(d < b) }'; then
        best=" ${names[*]} "
        best_d=$d
      fi
      if awk -v d="$d" -v max="$NOISY_OTHER_PCT" 'BEGIN { exit !(d <= max) }'; then
        break
      fi
      if [ "$ATTEMPT" -lt "$MAX_ATTEMPTS" ]; then
        say "round $ROUND, $SCENARIO: other processes took $d % of a core (or a run failed): measuring the pair again"
      else
        say "round $ROUND, $SCENARIO: still disturbed after $MAX_ATTEMPTS attempts; keeping the least disturbed"
      fi
    done
    for name in "${tried[@]}"; do
      if [[ $best == *" $name "* ]]; then keep "$name" true; else keep "$name" false; fi
    done
  done
done
ELAPSED_S=$(($(date +%s) - STARTED_S))

# The table: medians of the kept runs, B/A, spreads; then every run.
STARTED=$STARTED ELAPSED_S=$ELAPSED_S BIN_A=$BIN_A BIN_B=$BIN_B BENCH_BIN=$BENCH_BIN ROUNDS=$ROUNDS \
  SUBSCRIBERS=$SUBSCRIBERS RATE=$RATE CONNECT_N=$CONNECT_N DURATION=$DURATION WARMUP=$WARMUP \
  NOISY=$NOISY_OTHER_PCT node -e '
  const fs = require("fs");
  const e = process.env;
  const runs = fs.readFileSync(process.argv[1], "utf8").split("\n").filter(Boolean).map(JSON.parse);
  // What a flat-out fan-out is judged on (throughput first).
  const flatOut = [
    ["deliveries_per_sec", "deliveries/s", "higher", 0],
    ["cpu_us_per_delivery", "server CPU µs/delivery, total", "lower", 3],
    ["cpu_us_per_delivery_user", "server CPU µs/delivery, user", "lower", 3],
    ["cpu_us_per_delivery_system", "server CPU µs/delivery, system", "lower", 3],
    ["p50_us", "latency p50 µs", "lower", 0],
    ["p99_us", "latency p99 µs", "lower", 0],
  ];
  const scenarios = [
    ["fanout-sqlite", `1. fan-out, room, SQLite, ${e.SUBSCRIBERS} subscribers at ${e.RATE} msg/s`, [
      ["cpu_us_per_delivery_user", "server CPU µs/delivery, user", "lower", 3],
      ["cpu_us_per_delivery_system", "server CPU µs/delivery, system", "lower", 3],
      ["cpu_us_per_delivery", "server CPU µs/delivery, total", "lower", 3],
      ["deliveries_per_sec", "deliveries/s", "higher", 0],
      ["p50_us", "latency p50 µs", "lower", 0],
      ["p99_us", "latency p99 µs", "lower", 0],
    ]],
    ["fanout-memory", `2. fan-out, room, memory, ${e.SUBSCRIBERS} subscribers flat out`, flatOut],
    ["connect", `3. connect, ${e.CONNECT_N} idle /ws connections + join (memory)`, [
      ["rss_per_conn_bytes", "server RSS per connection, bytes", "lower", 0],
      ["rss_anon_per_conn_bytes", "server anon RSS per connection, bytes", "lower", 0],
      ["ready_p50_us", "connect + join latency p50 µs", "lower", 0],
      ["ready_p99_us", "connect + join latency p99 µs", "lower", 0],
      ["handshake_p50_us", "handshake latency p50 µs", "lower", 0],
      ["handshake_p99_us", "handshake latency p99 µs", "lower", 0],
      ["connects_per_sec", "connects/s", "higher", 0],
      ["server_cpu_us_per_conn", "server CPU µs per connection", "lower", 0],
    ]],
    ["flat-sqlite", `4. fan-out, room, SQLite, ${e.SUBSCRIBERS} subscribers flat out`, flatOut],
    ["flat-relay", `5. fan-out, relay (no store), ${e.SUBSCRIBERS} subscribers flat out`, flatOut],
  ];
  const median = (xs) => {
    const s = [...xs].sort((a, b) => a - b);
    const n = s.length;
    return n === 0 ? null : n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
  };
  const fmt = (v, d) => (v == null ? "n/a" : v.toFixed(d));
  const out = [];
  out.push("# A/B: server before (A) and after (B), same run, same load generator", "");
  out.push(`- started ${e.STARTED}, ${Math.round(e.ELAPSED_S / 60)} min ${e.ELAPSED_S % 60} s, ${e.ROUNDS} rounds (A, B alternating; fresh server each)`);
  out.push(`- A: \`${e.BIN_A}\``, `- B: \`${e.BIN_B}\``, `- load generator: \`${e.BENCH_BIN}\``);
  out.push(`- windows: ${e.DURATION} measured after ${e.WARMUP} warm-up (fan-out); median of the kept runs; spread = min–max of the kept runs`);
  out.push("");
  out.push("| scenario | metric | better | A median | B median | B/A | A min–max | B min–max |");
  out.push("|---|---|---|---:|---:|---:|---:|---:|");
  for (const [sc, title, metrics] of scenarios) {
    if (!runs.some((r) => r.scenario === sc)) continue;
    for (const [key, label, better, d] of metrics) {
      const vals = (side) => runs.filter((r) => r.kept && r.scenario === sc && r.side === side)
        .map((r) => r.metrics[key]).filter((v) => v != null);
      const a = vals("A"), b = vals("B");
      const ma = median(a), mb = median(b);
      const ratio = ma && mb != null ? (mb / ma).toFixed(3) : "n/a";
      const range = (xs, d) => (xs.length ? `${fmt(Math.min(...xs), d)}–${fmt(Math.max(...xs), d)}` : "n/a");
      out.push(`| ${title} | ${label} | ${better} | ${fmt(ma, d)} | ${fmt(mb, d)} | ${ratio} | ${range(a, d)} | ${range(b, d)} |`);
    }
  }
  out.push("", "## Every run", "");
  out.push(`Other CPU: what the rest of the machine (other processes, interrupts) took during the measured window, in % of one core (bench \`other_cpu_pct\`); over ${e.NOISY} % the pair was measured again (the least disturbed attempt kept). Load: 1-minute load average before → after.`, "");
  out.push("| run | kept | server CPU % | other CPU % | load | key figures | problems |");
  out.push("|---|---|---:|---:|---|---|---|");
  for (const r of runs) {
    const m = r.metrics;
    const key = r.scenario === "connect"
      ? `RSS/conn ${fmt(m.rss_per_conn_bytes, 0)} B, ready p50/p99 ${fmt(m.ready_p50_us, 0)}/${fmt(m.ready_p99_us, 0)} µs`
      : `${fmt(m.deliveries_per_sec, 0)} deliveries/s, ${fmt(m.cpu_us_per_delivery, 3)} µs/delivery (u ${fmt(m.cpu_us_per_delivery_user, 3)}, s ${fmt(m.cpu_us_per_delivery_system, 3)}), p50/p99 ${fmt(m.p50_us, 0)}/${fmt(m.p99_us, 0)} µs`;
    out.push(`| ${r.name} | ${r.kept ? "yes" : "no"} | ${fmt(r.server_cpu_pct, 1)} | ${fmt(r.other_cpu_pct, 1)} | ${r.load_before.toFixed(2)} → ${r.load_after.toFixed(2)} | ${key} | ${r.problems.join("; ") || "–"} |`);
  }
  process.stdout.write(out.join("\n") + "\n");
' "$RD/runs.jsonl" >"$RD/ab.md"
cat "$RD/ab.md"
say "wrote $RD/ab.md in $((ELAPSED_S / 60)) min $((ELAPSED_S % 60)) s (raw results next to it)"
# A kept run that failed (its pair failed twice) makes the exit status 1, as
# in bench/run.sh.
if ! node -e 'const runs = require("fs").readFileSync(process.argv[1], "utf8").split("\n").filter(Boolean).map(JSON.parse);
  process.exit(runs.some((r) => r.kept && r.problems.some((p) => p.startsWith("bench failed"))) ? 1 : 0);' "$RD/runs.jsonl"; then
  say "some measurements failed twice (see $RD/ab.md)"
  exit 1
fi
