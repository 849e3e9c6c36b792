#!/usr/bin/env bash
# Benchmarks, one after the other on this machine, each server alone (and
# freshly started, on a fresh data directory) while it is measured. Writes
# BENCHMARKS.md, with a verdict against each target and every ratio taken
# against baselines measured in the same run.
#
# 1. Fan-out, SUBSCRIBERS (1000) subscribers: Switchboard (room mode and
#    relay mode, SQLite store) against the Node.js `ws` broadcast baseline
#    and the Socket.IO broadcast baseline. Each target is measured twice:
#    flat out (--rate 0: throughput, and the latency that comes with it) and
#    at a fixed rate that every target sustains (--rate RATE: latency
#    without a backlog).
# 1b. Everyday fan-out (issue 12): bench/everyday.sh, SUBSCRIBERS
#    subscribers at RATE msg/s: Node ws, Switchboard /relay and room mode
#    (SQLite), EVERYDAY_ROUNDS (3) rounds, a fresh server each: CPU per
#    delivery (user and system) and syscalls per delivery (perf stat), the
#    ratio to Node. Runs alone as bench/everyday.sh (which then writes only
#    its section of BENCHMARKS.md); EVERYDAY=0 skips it here.
# 2. Fan-out, SUBSCRIBERS_BIG (10,000) subscribers: the same four targets
#    flat out; then Switchboard room and relay at a fixed rate of half the
#    publishes/s Switchboard room reached flat out (BIG_RATE overrides it),
#    and at a calm BIG_CALM_RATE (2 msg/s): one fan-out's CPU and latency
#    with nothing queued, and the server's CPU per thread.
# 3. Connect: CONNECT_N (19,000) idle connections held at once, a fresh
#    server each (Switchboard with the memory store): Switchboard /ws (no
#    room), /ws + join, /relay; Node ws; Socket.IO. Connects/s, handshake
#    latency, server RSS per connection. Then Switchboard /ws once more with
#    CONNECT_FEW (1,000) connections: what one connection costs a small server.
# 4. Direct: DIRECT_PAIRS (1000) pairs of users sending each other direct
#    messages (memory store), flat out, then at a fixed rate of half that
#    (DIRECT_RATE overrides it). No baseline speaks direct messages.
# 5. Resume storm: RESUME_CLIENTS (10,000) clients in RESUME_ROOMS (100)
#    rooms reconnect at once and replay what they missed (SQLite store).
# 6. Churn: CHURN_RATE (200) short sessions per second (connect, join,
#    publish, close) for CHURN_DURATION (10 s), SQLite store.
# 6b. Presence at scale (memory store): PRESENCE_USERS (10,000) users join
#    one room, spread over PRESENCE_OVER (10 s); presence frames per member.
#    The unbatched baseline (--presence-batch-above 1000000) and batching at
#    the same size run at PRESENCE_BASE_USERS (2,000): at 10,000 the
#    baseline would be ~50 million frames.
# 7. Publish (the cost of durability): acked publishes per second and ack
#    latency, Switchboard with the SQLite store (WAL, synchronous=FULL) and
#    with the in-memory store, same pipeline, measurement by measurement
#    side by side: 16 publishers in 16 rooms and in 1 room, ack windows 1
#    and 64, plus 1 publisher with window 1 (one commit per publish); all of
#    it three times over (rounds), the report taking medians.
# The targets the report judges (and the sizes they are stated for, the
# defaults of SUBSCRIBERS_BIG, CONNECT_N and RESUME_CLIENTS) are in
# bench/targets.json, and nowhere else. Every result, with its identity
# (scenario, server, mode, store, label, parameters), or the identity and
# why it failed, is one line of results.jsonl, which bench/report.js reads.
# BENCHMARKS.md ends with bench/profile-notes.md (hand-written), copied as is.
# 8. Cluster mode (CLUSTER=1 only): bench/cluster.sh at the end, which
#    writes the "## Cluster mode" section (3 nodes on one Redis against a
#    single node). Opt-in because it needs redis-server, takes ~6 more
#    minutes and holds 45,000 connections; without it the cluster section
#    of the previous BENCHMARKS.md is carried over as it was (with its own
#    date), so a default run neither needs Redis nor loses that section.
#
#   bench/run.sh           release build, every measurement above (10 s
#                          each); rewrites BENCHMARKS.md (~15 minutes on 2
#                          cores: fan-out ~3.5, everyday ~2.5, connect ~1,
#                          direct, resume and churn ~1, publish rounds ~6). A measurement that
#                          fails is marked in the report and the run goes on;
#                          the script then exits 1.
#   bench/run.sh --smoke   fan-out with 50 subscribers (Socket.IO flat out
#                          only), 2 s per measurement, a 2 s publish run
#                          against the SQLite store, 200 idle connections,
#                          and tiny direct, resume, churn, presence and chaos runs
#                          (chaos twice: auth off, and on with expiring
#                          tokens), all --strict (fails on lost messages,
#                          missing acks, failed or dropped connections,
#                          server errors; never on timing); writes nothing
#                          (~55 s). Uses the debug builds unless
#                          SWITCHBOARD_BIN and SWITCHBOARD_BENCH_BIN are set.
#
#   bench/run.sh --report DIR
#                          renders BENCHMARKS.md again from the raw results a
#                          full run keeps (in target/bench-results, or
#                          RESULTS_DIR), without measuring.
#
# Overrides (environment): CLUSTER=1 (step 8); EVERYDAY=0, EVERYDAY_ROUNDS
# (step 1b); SWITCHBOARD_BIN and SWITCHBOARD_BENCH_BIN (the
# server and the load generator; both set: skip the build), RESULTS_DIR;
# SUBSCRIBERS, PUBLISHERS, DURATION, WARMUP, SIZE, WINDOW, LEAD, RATE
# (fan-out; DURATION and WARMUP also for direct and publish); SUBSCRIBERS_BIG,
# BIG_RATE (msg/s per publisher at the fixed rate; default half of room's
# peak), BIG_CALM_RATE (the calm rate; default 2) (fan-out at 10k);
# CONNECT_N, CONNECT_FEW, FEW_ROUNDS (fresh servers measured at CONNECT_FEW;
# default 3) (connect); DIRECT_PAIRS, DIRECT_RATE
# (msg/s per connection at the fixed rate; default half the flat-out
# throughput) (direct); RESUME_CLIENTS, RESUME_ROOMS (resume); CHURN_RATE,
# CHURN_DURATION (churn); PRESENCE_USERS, PRESENCE_BASE_USERS, PRESENCE_OVER
# (presence); PUB_PUBLISHERS, PUB_WINDOW (the large window; the
# small one is 1), PUB_RETENTION (--retention-count of those servers),
# PUB_ROUNDS (times each publish measurement is made; the report takes
# medians), PUB_DURATION (publish); DATA_PARENT (where the servers' fresh
# data directories are made; default a new directory under ${TMPDIR:-/tmp}:
# put it on the disk you want to measure).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
. bench/lib.sh

# carry_cluster_section FILE: puts the "## Cluster mode" section of the
# current BENCHMARKS.md (bench/cluster.sh's; report.js does not render it)
# into FILE, a freshly rendered report.
carry_cluster_section() {
  if [ -f BENCHMARKS.md ] && grep -q '^## Cluster mode' BENCHMARKS.md; then
    sed -n '/^## Cluster mode/,/^## /{/^## /{/^## Cluster mode/!d}; p}' BENCHMARKS.md >"$1.cluster-section"
    node bench/cluster-report.js --splice "$1.cluster-section" "$1"
    rm -f "$1.cluster-section"
  fi
}

smoke=false
usage() { echo "usage: bench/run.sh [--smoke | --report RESULTS-DIR] (bench/run.sh --help explains)" >&2; exit 2; }
case "${1:-}" in
  -h | --help)
    # The header comment is the manual.
    sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "$0"
    exit 0
    ;;
  --smoke) smoke=true ;;
  --report)
    # Re-render BENCHMARKS.md from the kept results of an earlier run.
    results=${2:-}
    [ -f "$results/bench.env" ] || usage
    # shellcheck disable=SC1091
    . "$results/bench.env"
    BENCH_WORK=$results
    export BENCH_WORK
    node bench/report.js >"$results/BENCHMARKS.md"
    carry_cluster_section "$results/BENCHMARKS.md"
    mv "$results/BENCHMARKS.md" BENCHMARKS.md
    echo "==> wrote BENCHMARKS.md from $results" >&2
    exit 0
    ;;
  "") ;;
  *) echo "bench/run.sh: unknown option '$1'" >&2; usage ;;
esac

if $smoke; then
  SUBSCRIBERS=${SUBSCRIBERS:-50}; DURATION=${DURATION:-2s}; WARMUP=${WARMUP:-500ms}
else
  SUBSCRIBERS=${SUBSCRIBERS:-1000}; DURATION=${DURATION:-10s}; WARMUP=${WARMUP:-1s}
fi
PUBLISHERS=${PUBLISHERS:-1}
SIZE=${SIZE:-100}
WINDOW=${WINDOW:-64}
LEAD=${LEAD:-$WINDOW}
RATE=${RATE:-100}
# target KEY.FIELD: a value from bench/targets.json.
target() {
  node -p 'const [k, f] = process.argv[1].split("."); require("./bench/targets.json")[k][f]' "$1"
}
command -v node >/dev/null || { echo "bench/run.sh: node is needed for the baseline servers" >&2; exit 1; }
SUBSCRIBERS_BIG=${SUBSCRIBERS_BIG:-$(target fanout_vs_node.subscribers)}
BIG_RATE=${BIG_RATE:-}
BIG_CALM_RATE=${BIG_CALM_RATE:-2}
CONNECT_N=${CONNECT_N:-$(target idle_memory.connections)}
CONNECT_FEW=${CONNECT_FEW:-$(target idle_memory.few_connections)}
FEW_ROUNDS=${FEW_ROUNDS:-3}
DIRECT_PAIRS=${DIRECT_PAIRS:-1000}
DIRECT_RATE=${DIRECT_RATE:-}
RESUME_CLIENTS=${RESUME_CLIENTS:-$(target resume_storm.clients)}
RESUME_ROOMS=${RESUME_ROOMS:-100}
CHURN_RATE=${CHURN_RATE:-200}
CHURN_DURATION=${CHURN_DURATION:-10s}
PRESENCE_USERS=${PRESENCE_USERS:-10000}
PRESENCE_BASE_USERS=${PRESENCE_BASE_USERS:-2000}
PRESENCE_OVER=${PRESENCE_OVER:-10s}
PUB_PUBLISHERS=${PUB_PUBLISHERS:-16}
PUB_WINDOW=${PUB_WINDOW:-64}
# Messages kept per room in the publish measurements: by default out of
# reach, so that neither store trims during a measurement and the comparison
# is of storing alone (the memory store's trim is far slower than SQLite's).
PUB_RETENTION=${PUB_RETENTION:-1000000000}
PUB_ROUNDS=${PUB_ROUNDS:-3}

say() { printf '==> %s\n' "$*" >&2; }

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# The server (BIN) and the load generator (BENCH_BIN) are separate binaries.
if [ -n "${SWITCHBOARD_BIN:-}" ] && [ -n "${SWITCHBOARD_BENCH_BIN:-}" ]; then
  BIN=$SWITCHBOARD_BIN
  BENCH_BIN=$SWITCHBOARD_BENCH_BIN
else
  if $smoke; then profile=debug; else profile=release; fi
  say "building switchboard and switchboard-bench ($profile)"
  if $smoke; then
    # Every target, as `cargo test --workspace` builds them: the same
    # dependency features, so after `scripts/test`'s test build this only
    # adds the load generator. `-p switchboard -p switchboard-bench` leaves
    # out the dev-dependencies, whose features change tokio's, hyper's, …:
    # 101 s of dependencies built a second time on a fresh machine.
    cargo build --workspace --all-targets --quiet
  else
    cargo build --release -p switchboard -p switchboard-bench --quiet
  fi
  BIN=${SWITCHBOARD_BIN:-$TARGET_DIR/$profile/switchboard}
  BENCH_BIN=${SWITCHBOARD_BENCH_BIN:-$TARGET_DIR/$profile/switchboard-bench}
fi
if [ ! -d bench/baselines/node_modules/ws ] || [ ! -d bench/baselines/node_modules/socket.io ]; then
  say "installing ws and socket.io for the baselines"
  (cd bench/baselines && npm ci --no-audit --no-fund --loglevel=error)
fi
# Ten thousand subscribers, or 19,000 idle connections, plus the server's
# side of each connection (in another process).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
RUN_STARTED_S=$(date +%s)

WORK=$(mktemp -d)
if [ -n "${DATA_PARENT:-}" ]; then
  mkdir -p "$DATA_PARENT"
  DATA_ROOT=$(mktemp -d "$DATA_PARENT/switchboard-bench.XXXXXX")
else
  DATA_ROOT=$(mktemp -d)
fi
SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}
trap 'stop_server; rm -rf "$WORK" "$DATA_ROOT"' EXIT

# The commands of each section of the report, as run (with 127.0.0.1:$PORT
# for the port, DIR for the data directory and `switchboard` and
# `switchboard-bench` for the binaries): servers in commands-SECTION.servers, bench commands in
# commands-SECTION.bench. SECTION is set before each part of the run.
SECTION=fanout
record() {
  local kind=$1 line=$2
  local file="$WORK/commands-$SECTION.$kind"
  line=$(printf '%s' "$line" | sed -e "s|$BENCH_BIN|switchboard-bench|g" -e "s|$BIN|switchboard|g" -e "s|$DATA_ROOT/[^ ]*|DIR|g" \
    -e 's/127\.0\.0\.1:[1-9][0-9]*/127.0.0.1:$PORT/g')
  touch "$file"
  grep -qxF -- "$line" "$file" || printf '%s\n' "$line" >>"$file"
}

# start_server NAME COMMENT COMMAND...: starts it in the background and
# waits for its "listening on SCHEME://HOST:PORT" line; sets SERVER_PID and
# PORT. COMMENT goes next to the command in the report.
start_server() {
  local name=$1 comment=$2
  shift 2
  record servers "$*    # $comment"
  # Created here, not by the background job's redirection, which may not
  # have happened yet when we first look.
  : >"$WORK/$name.out"
  : >"$WORK/$name.err"
  "$@" >>"$WORK/$name.out" 2>>"$WORK/$name.err" &
  SERVER_PID=$!
  if PORT=$(listening_port "$WORK/$name.out" "$SERVER_PID"); then
    return 0
  fi
  echo "bench/run.sh: $name did not start:" >&2
  cat "$WORK/$name.out" "$WORK/$name.err" >&2
  exit 1
}

# collect NAME SERVER STORE LABEL WHY ARG...: appends the measurement NAME to
# results.jsonl: its result (NAME.json, written by switchboard-bench with its
# identity), or, when WHY says why there is none, the identity and parameters
# read from its command line ARG... (`--subscribers 50` → "subscribers": 50).
# `run` names the measurement's other files (NAME.server).
collect() {
  node -e '
    const fs = require("fs");
    const [json, name, server, store, label, why, scenario, ...args] = process.argv.slice(1);
    let r;
    if (!why) {
      r = JSON.parse(fs.readFileSync(json, "utf8"));
    } else {
      r = { scenario, server, store: store || null, label };
      for (let i = 0; i < args.length; i++) {
        const flag = /^--(.+)$/.exec(args[i]);
        if (!flag) continue;
        const key = flag[1].replace(/-/g, "_");
        const value = args[i + 1];
        if (value === undefined || value.startsWith("--")) {
          r[key] = true;
        } else {
          r[key] = value !== "" && Number.isFinite(Number(value)) ? Number(value) : value;
          i++;
        }
      }
      r.failure = why;
    }
    r.run = name;
    fs.appendFileSync(process.env.RESULTS_FILE, JSON.stringify(r) + "\n");
  ' "$WORK/$1.json" "$@"
}
RESULTS_FILE=$WORK/results.jsonl
export RESULTS_FILE

# run_bench NAME SERVER STORE COMMENT ARG...: `switchboard-bench ARG...`
# against the running server SERVER (switchboard, node-ws, socketio; STORE:
# sqlite, memory, or empty), recorded for the report (with COMMENT), with
# --label, --server, --store, --server-pid, --json and, in the smoke run,
# --strict added. Output in NAME.txt and NAME.log; the result in NAME.json and
# results.jsonl. A failure stops the smoke run; in a full run it is noted in
# results.jsonl (and FAILED) and the run goes on.
FAILED=()
run_bench() {
  local name=$1 server=$2 store=$3 comment=$4
  shift 4
  record bench "switchboard-bench $*    # $comment"
  local extra=(--label "$comment" --server "$server" --server-pid "$SERVER_PID" --json "$WORK/$name.json")
  if [ -n "$store" ]; then extra+=(--store "$store"); fi
  if $smoke; then extra+=(--strict); fi
  local status=0
  "$BENCH_BIN" "$@" "${extra[@]}" 2> >(tee "$WORK/$name.log" >&2) | tee "$WORK/$name.txt" >&2 || status=$?
  if [ "$status" != 0 ]; then
    if $smoke; then
      echo "bench/run.sh: $name failed (exit status $status)" >&2
      exit 1
    fi
    sleep 0.5 # for the tee of stderr to finish
    local why
    why=$(grep -E '^Error' "$WORK/$name.log" | tail -n1 || true)
    why=${why:-exit status $status}
    rm -f "$WORK/$name.json"
    collect "$name" "$server" "$store" "$comment" "$why" "$@"
    FAILED+=("$name: $why")
    say "FAILED: $name: $why (going on)"
  else
    collect "$name" "$server" "$store" "$comment" "" "$@"
  fi
}

# skipped NAME WHY SERVER STORE LABEL ARG...: a measurement that could not be
# made, with the identity and parameters it would have had.
skipped() {
  local name=$1 why=$2
  shift 2
  collect "$name" "$1" "$2" "$3" "$why" "${@:4}"
  FAILED+=("$name: $why")
  say "SKIPPED: $name: $why"
}

# json_field NAME EXPRESSION: a value computed from NAME.json (`r` is the
# result), or nothing when there is no result.
json_field() {
  [ -f "$WORK/$1.json" ] || return 0
  node -e 'const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    process.stdout.write(String(eval(process.argv[2])));' "$WORK/$1.json" "$2"
}

# server_notes NAME: what Switchboard said about the run.
server_notes() {
  local name=$1
  {
    curl -fsS "http://127.0.0.1:$PORT/metrics" 2>/dev/null |
      grep -E '^switchboard_(slow_consumer_disconnects_total|heartbeat_timeouts_total|errors_total|connections_refused_total)[ {]' |
      grep -v ' 0$' || true
    echo "log lines at WARN or ERROR: $(grep -cE 'WARN|ERROR' "$WORK/$name.err" || true)"
    # What the store left on disk (database, WAL), while the server still runs.
    if [ -n "$(ls -A "$DATA_ROOT/$name" 2>/dev/null)" ]; then
      echo "data dir: $(du -sh "$DATA_ROOT/$name" | cut -f1)B"
    fi
  } >"$WORK/$name.server"
}

# start_switchboard NAME STORE [FLAG...]: a fresh Switchboard with store
# STORE (sqlite or memory) on a fresh data directory.
start_switchboard() {
  local name=$1 store=$2
  shift 2
  mkdir -p "$DATA_ROOT/$name"
  start_server "$name" "Switchboard, started afresh per measurement" \
    "$BIN" "${SB_SERVE[@]}" --store "$store" --data-dir "$DATA_ROOT/$name" "$@"
}

# start_target NAME TARGET STORE [FLAG...]: a fresh server for TARGET
# (switchboard: with STORE and the flags; node; socketio).
start_target() {
  local name=$1 target=$2 store=$3
  shift 3
  case $target in
    switchboard) start_switchboard "$name" "$store" "$@" ;;
    node) start_server "$name" "Node.js ws baseline (after npm ci in bench/baselines)" "${NODE_SERVE[@]}" ;;
    socketio) start_server "$name" "Socket.IO baseline" "${SIO_SERVE[@]}" ;;
  esac
}

# finish NAME TARGET: server notes (Switchboard), stop, drop the data.
finish() {
  if [ "$2" = switchboard ]; then server_notes "$1"; fi
  stop_server
  rm -rf "${DATA_ROOT:?}/$1"
}

# label TARGET MODE: what a measurement is called in the commands and JSON.
label() {
  case $1 in
    switchboard) echo "switchboard $2" ;;
    node) echo "node-ws" ;;
    *) echo "$1" ;;
  esac
}

# server_of TARGET: the `server` of its results (switchboard, node-ws, socketio).
server_of() {
  case $1 in
    node) echo "node-ws" ;;
    *) echo "$1" ;;
  esac
}

# fanout NAME TARGET MODE RATE SUBSCRIBERS [BENCH-FLAG...]: one fanout
# measurement, fresh server (Switchboard with the SQLite store).
fanout() {
  local name=$1 target=$2 mode=$3 rate=$4 subscribers=$5
  shift 5
  start_target "$name" "$target" sqlite
  say "$target: fanout --mode $mode --rate $rate, $subscribers subscribers, $DURATION"
  local store=""
  if [ "$target" = switchboard ]; then store=sqlite; fi
  run_bench "$name" "$(server_of "$target")" "$store" "$(label "$target" "$mode")" fanout --url "ws://127.0.0.1:$PORT" --mode "$mode" \
    --subscribers "$subscribers" --publishers "$PUBLISHERS" --rate "$rate" \
    --duration "$DURATION" --warmup "$WARMUP" --size "$SIZE" --window "$WINDOW" --lead "$LEAD" "$@"
  finish "$name" "$target"
}

# connect NAME TARGET MODE [BENCH-FLAG...]: idle connections, fresh server
# (Switchboard with the memory store).
connect() {
  local name=$1 target=$2 mode=$3
  shift 3
  start_target "$name" "$target" memory --max-connections 100000
  say "$target: connect --mode $mode, $CONNECT_N connections"
  local store=""
  if [ "$target" = switchboard ]; then store=memory; fi
  run_bench "$name" "$(server_of "$target")" "$store" "$(label "$target" "$mode")" connect --url "ws://127.0.0.1:$PORT" --mode "$mode" \
    --connections "$CONNECT_N" "$@"
  finish "$name" "$target"
}

# measure_publish NAME STORE PUBLISHERS ROOMS WINDOW: one publish
# measurement, fresh server (and fresh data directory).
measure_publish() {
  local name=$1 store=$2 publishers=$3 rooms=$4 window=$5
  start_switchboard "$name" "$store" --retention-count "$PUB_RETENTION"
  say "${round:+round $round/$PUB_ROUNDS: }switchboard --store $store: publish, $publishers publishers, $rooms rooms, window $window, $PUB_DURATION"
  run_bench "$name" switchboard "$store" "$store" publish --url "ws://127.0.0.1:$PORT" --publishers "$publishers" \
    --rooms "$rooms" --window "$window" --duration "$PUB_DURATION" --warmup "$WARMUP" --size "$SIZE"
  finish "$name" switchboard
}

SB_SERVE=(serve --listen 127.0.0.1:0 --rate-limit 0 --max-queue 16MiB)
# Thousands of clients from one address: lift the per-IP limits where the
# server has them.
if "$BIN" serve --help | grep -q -- '--connect-rate-per-ip'; then
  SB_SERVE+=(--max-connections-per-ip 0 --connect-rate-per-ip 0)
fi
NODE_SERVE=(node bench/baselines/node-ws-broadcast.js 0)
SIO_SERVE=(node bench/baselines/socketio-broadcast.js 0)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')

# 1. Fan-out, SUBSCRIBERS subscribers: flat out, then at RATE.
SECTION=fanout
for rate in 0 "$RATE"; do
  if [ "$rate" = 0 ]; then set=flat; else set=fixed; fi
  fanout "$set-switchboard-room" switchboard room "$rate" "$SUBSCRIBERS"
  fanout "$set-switchboard-relay" switchboard relay "$rate" "$SUBSCRIBERS"
  # The HTTP fallback's cost against the WebSocket's, same run.
  fanout "$set-switchboard-sse" switchboard room "$rate" "$SUBSCRIBERS" --transport sse
  fanout "$set-node" node relay "$rate" "$SUBSCRIBERS"
  # The smoke run checks the Socket.IO client once (flat out: quickest).
  if ! $smoke || [ "$set" = flat ]; then
    fanout "$set-socketio" socketio socketio "$rate" "$SUBSCRIBERS"
  fi
done

if $smoke; then
  # The cost of durability, once, against SQLite.
  SECTION=publish
  PUB_DURATION=$DURATION
  measure_publish "publish-smoke-sqlite" sqlite 4 2 8
  # Idle connections, a few hundred.
  SECTION=connect
  CONNECT_N=200
  connect connect-smoke-room switchboard room --hold 200ms --settle 1s
  # --- smoke: direct, resume, churn, chaos (tiny, --strict; fresh server each) ---
  # smoke_session_scenario NAME STORE [--serve FLAG... --] SCENARIO [ARG...]
  # (the FLAGs go to the server)
  smoke_session_scenario() {
    local name=$1 store=$2 serve=()
    shift 2
    if [ "$1" = --serve ]; then
      shift
      while [ "$1" != -- ]; do serve+=("$1"); shift; done
      shift
    fi
    start_switchboard "$name" "$store" "${serve[@]}"
    say "switchboard --store $store: switchboard-bench $*"
    "$BENCH_BIN" "$@" --url "ws://127.0.0.1:$PORT" --server-pid "$SERVER_PID" \
      --label "$store" --server switchboard --store "$store" --json "$WORK/$name.json" --strict | tee "$WORK/$name.txt" >&2
    collect "$name" switchboard "$store" "$store" "" "$@"
    server_notes "$name"
    stop_server
    # Whatever the scenario threw at it, the server must not have panicked.
    if grep -q 'panicked' "$WORK/$name.err"; then
      say "the server panicked during $name:"
      grep -A5 'panicked' "$WORK/$name.err" >&2
      exit 1
    fi
    rm -rf "${DATA_ROOT:?}/$name"
  }
  smoke_session_scenario direct-smoke-memory memory direct --pairs 10 \
    --duration "$DURATION" --warmup "$WARMUP"
  smoke_session_scenario resume-smoke-sqlite sqlite resume --clients 200 --rooms 10 \
    --before 5 --offline 5 --during 5 --timeout 30s
  smoke_session_scenario churn-smoke-sqlite sqlite churn --rate 50 --duration "$DURATION"
  smoke_session_scenario presence-smoke-memory memory presence --users 100 --over 1s --quiet 1500ms
  smoke_session_scenario chaos-smoke-memory memory chaos --clients 50 --duration 3s \
    --warmup "$WARMUP" --max-rss 1024
  # Auth on: tokens of 1-3 s, renewed with hello or left to expire (4001,
  # then a resume with a fresh token).
  smoke_session_scenario chaos-auth-smoke-sqlite sqlite \
    --serve --jwt-secret chaos-smoke-secret --jwt-leeway 1s -- \
    chaos --clients 50 --duration 4s --warmup "$WARMUP" --max-rss 1024 \
    --jwt-secret chaos-smoke-secret --jwt-leeway 1s --token-ttl 1s..3s
  # --- end smoke: direct, resume, churn, chaos ---
  # The report renders from the typed results (to nowhere: figures this small
  # are not published).
  BENCH_WORK=$WORK BENCH_SUBSCRIBERS=$SUBSCRIBERS BENCH_SUBSCRIBERS_BIG=$SUBSCRIBERS_BIG \
    BENCH_CONNECT_FEW=$CONNECT_FEW node bench/report.js >/dev/null
  say "smoke run passed in $(($(date +%s) - RUN_STARTED_S)) s (BENCHMARKS.md not rewritten)"
  exit 0
fi

# 1b. Everyday fan-out: its own script, its results under $WORK/everyday
# (report.js renders them with the rest).
if [ "${EVERYDAY:-1}" = 1 ]; then
  SECTION=everyday
  say "everyday fan-out: bench/everyday.sh"
  SPLICE=0 RESULTS_DIR=$WORK/everyday ROUNDS=${EVERYDAY_ROUNDS:-3} SUBSCRIBERS=$SUBSCRIBERS RATE=$RATE \
    SIZE=$SIZE SWITCHBOARD_BIN=$BIN SWITCHBOARD_BENCH_BIN=$BENCH_BIN bench/everyday.sh ||
    FAILED+=("everyday fan-out: bench/everyday.sh failed (see $WORK/everyday)")
fi

# 2. Fan-out, SUBSCRIBERS_BIG subscribers: flat out; then Switchboard at
# half of room's peak publish rate (--rate is per publisher).
SECTION=fanout-big
fanout big-flat-switchboard-room switchboard room 0 "$SUBSCRIBERS_BIG"
fanout big-flat-switchboard-relay switchboard relay 0 "$SUBSCRIBERS_BIG"
fanout big-flat-node node relay 0 "$SUBSCRIBERS_BIG"
fanout big-flat-socketio socketio socketio 0 "$SUBSCRIBERS_BIG"
if [ -n "$BIG_RATE" ]; then
  BIG_RATE_FROM="set by BIG_RATE"
else
  BIG_RATE=$(json_field big-flat-switchboard-room \
    "Math.max(1, Math.round(r.publishes_per_sec / 2 / $PUBLISHERS * 10) / 10)")
  BIG_RATE_FROM="half of room's peak"
fi
if [ -n "$BIG_RATE" ]; then
  say "fixed rate at $SUBSCRIBERS_BIG subscribers: $BIG_RATE msg/s per publisher ($BIG_RATE_FROM)"
  fanout big-fixed-switchboard-room switchboard room "$BIG_RATE" "$SUBSCRIBERS_BIG"
  fanout big-fixed-switchboard-relay switchboard relay "$BIG_RATE" "$SUBSCRIBERS_BIG"
else
  for name in big-fixed-switchboard-room big-fixed-switchboard-relay; do
    mode=${name##*-}
    skipped "$name" "no peak rate to halve: the flat-out room measurement failed" \
      switchboard sqlite "switchboard $mode" fanout --mode "$mode" --subscribers "$SUBSCRIBERS_BIG"
  done
fi
# And at a calm rate (BIG_CALM_RATE, 2 msg/s; at 10 msg/s the server and the
# load generator took 95% + 91% of a core here, 3 December): one message's
# fan-out with nothing queued before it, its CPU (server and load generator)
# and how the server's threads shared it.
say "calm rate at $SUBSCRIBERS_BIG subscribers: $BIG_CALM_RATE msg/s per publisher"
fanout big-calm-switchboard-room switchboard room "$BIG_CALM_RATE" "$SUBSCRIBERS_BIG"
fanout big-calm-switchboard-relay switchboard relay "$BIG_CALM_RATE" "$SUBSCRIBERS_BIG"

# 3. Connect: CONNECT_N idle connections, a fresh server each.
SECTION=connect
connect connect-switchboard-ws switchboard ws
connect connect-switchboard-room switchboard room
connect connect-switchboard-relay switchboard relay
connect connect-switchboard-sse switchboard sse
connect connect-node node relay
connect connect-socketio socketio socketio
many=$CONNECT_N
CONNECT_N=$CONNECT_FEW
# Also read after 8 connections opened and closed one at a time: what a
# connection costs once the one-time costs (code first run, per-thread
# buffers) are paid, which weigh 19 times more per connection here. Those
# one-time costs scatter from one fresh server to the next (1,250-1,850 B
# per connection for the same binary, by hand), so FEW_ROUNDS (3) fresh
# servers are measured and the report takes the median.
for few_round in $(seq "$FEW_ROUNDS"); do
  connect "connect-switchboard-ws-few-$few_round" switchboard ws --warmup-connections 8
done
CONNECT_N=$many

# 4. Direct messages (memory store): flat out, then at half that.
SECTION=direct
direct() {
  local name=$1 rate=$2
  start_switchboard "$name" memory
  say "switchboard --store memory: direct, $DIRECT_PAIRS pairs, rate $rate"
  run_bench "$name" switchboard memory memory direct --url "ws://127.0.0.1:$PORT" --pairs "$DIRECT_PAIRS" \
    --rate "$rate" --duration "$DURATION" --warmup "$WARMUP" --size "$SIZE"
  finish "$name" switchboard
}
direct direct-flat 0
if [ -n "$DIRECT_RATE" ]; then
  DIRECT_RATE_FROM="set by DIRECT_RATE"
else
  # Every send is one delivery: half the flat-out deliveries/s, spread over
  # the 2 × pairs connections.
  DIRECT_RATE=$(json_field direct-flat \
    "Math.max(1, Math.round(r.delivered_per_sec / 2 / (2 * $DIRECT_PAIRS) * 10) / 10)")
  DIRECT_RATE_FROM="half of the flat-out throughput"
fi
if [ -n "$DIRECT_RATE" ]; then
  direct direct-fixed "$DIRECT_RATE"
else
  skipped direct-fixed "no flat-out throughput to halve: the flat-out measurement failed" \
    switchboard memory memory direct --pairs "$DIRECT_PAIRS"
fi

# 5. Resume storm (SQLite store).
SECTION=resume
start_switchboard resume sqlite
say "switchboard --store sqlite: resume storm, $RESUME_CLIENTS clients"
run_bench resume switchboard sqlite sqlite resume --url "ws://127.0.0.1:$PORT" --clients "$RESUME_CLIENTS" \
  --rooms "$RESUME_ROOMS"
finish resume switchboard

# 6. Churn (SQLite store).
SECTION=churn
start_switchboard churn sqlite
say "switchboard --store sqlite: churn, $CHURN_RATE sessions/s for $CHURN_DURATION"
run_bench churn switchboard sqlite sqlite churn --url "ws://127.0.0.1:$PORT" --rate "$CHURN_RATE" \
  --duration "$CHURN_DURATION"
finish churn switchboard

# 6b. Presence at scale (memory store): the storm batched at full size, and
# batched against unbatched at the baseline size.
SECTION=presence
presence_storm() {
  local name=$1 users=$2 comment=$3
  shift 3
  start_switchboard "$name" memory "$@"
  say "switchboard --store memory $*: presence, $users users over $PRESENCE_OVER"
  run_bench "$name" switchboard memory "$comment" presence --url "ws://127.0.0.1:$PORT" --users "$users" \
    --over "$PRESENCE_OVER"
  finish "$name" switchboard
}
presence_storm presence-batched "$PRESENCE_USERS" batched
presence_storm presence-base-batched "$PRESENCE_BASE_USERS" batched
presence_storm presence-base-unbatched "$PRESENCE_BASE_USERS" unbatched --presence-batch-above 1000000

# 7. The cost of durability: each configuration against SQLite, then at
# once against the memory store.
SECTION=publish
# The disk the data directories are on: what fsync costs there.
probe_disk() {
  local probe="$DATA_ROOT/dsync-probe" dev
  BENCH_DISK_DF=$(df -hT "$DATA_ROOT" | tail -n1)
  BENCH_DISK_MOUNT=$(findmnt -no SOURCE,FSTYPE,OPTIONS -T "$DATA_ROOT" 2>/dev/null || echo "?")
  dev=$(basename "$(findmnt -no SOURCE -T "$DATA_ROOT" 2>/dev/null || echo none)")
  BENCH_DISK_CACHE=$(cat "/sys/class/block/$dev/queue/write_cache" 2>/dev/null ||
    cat "/sys/class/block/$dev/../queue/write_cache" 2>/dev/null || echo "?")
  # 1000 synchronous 4 KiB writes (O_DSYNC: each waits for the disk, like a
  # commit), appending to a new file, then overwriting it (as SQLite reuses
  # its WAL file after a checkpoint). Seconds for the 1000.
  dsync() {
    LC_ALL=C dd if=/dev/zero of="$probe" bs=4k count=1000 oflag=dsync "$@" 2>&1 |
      awk '{ for (i = 2; i <= NF; i++) if ($i == "s,") print $(i - 1) }'
  }
  rm -f "$probe"
  BENCH_DISK_DSYNC_APPEND_S=$(dsync)
  sync
  BENCH_DISK_DSYNC_OVERWRITE_S=$(dsync conv=notrunc)
  rm -f "$probe"
  say "data directories on: $BENCH_DISK_DF; 1000 O_DSYNC 4 KiB writes:" \
    "${BENCH_DISK_DSYNC_APPEND_S:-?} s appending, ${BENCH_DISK_DSYNC_OVERWRITE_S:-?} s overwriting"
}
probe_disk

PUB_DURATION=${PUB_DURATION:-$DURATION}
# Rounds: on a small shared machine one measurement can land in a slow or a
# fast scheduling pattern for its whole duration, so every configuration is
# measured PUB_ROUNDS times and the report takes medians.
for round in $(seq "$PUB_ROUNDS"); do
  for config in "$PUB_PUBLISHERS $PUB_PUBLISHERS 1" "$PUB_PUBLISHERS $PUB_PUBLISHERS $PUB_WINDOW" \
    "$PUB_PUBLISHERS 1 1" "$PUB_PUBLISHERS 1 $PUB_WINDOW" "1 1 1"; do
    read -r publishers rooms window <<<"$config"
    for store in sqlite memory; do
      measure_publish "publish-p$publishers-r$rooms-w$window-$store-$round" "$store" "$publishers" "$rooms" "$window"
    done
  done
done

BENCH_WORK=$WORK
BENCH_STARTED=$STARTED
BENCH_ELAPSED_S=$(($(date +%s) - RUN_STARTED_S))
BENCH_LOAD_BEFORE=$LOAD_BEFORE
BENCH_LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")
BENCH_CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -n1)
BENCH_NPROC=$(nproc)
BENCH_KERNEL=$(uname -sr)
BENCH_MEM=$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo 2>/dev/null || echo "?")
BENCH_RUSTC=$(rustc --version 2>/dev/null || echo "?")
BENCH_NODE=$(node --version)
BENCH_WS=$(node -p 'require("./bench/baselines/node_modules/ws/package.json").version')
BENCH_SOCKETIO=$(node -p 'require("./bench/baselines/node_modules/socket.io/package.json").version')
BENCH_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo "?")
git diff --quiet HEAD 2>/dev/null || BENCH_COMMIT="$BENCH_COMMIT (with uncommitted changes)"
BENCH_SB_SERVE="switchboard ${SB_SERVE[*]}"
BENCH_NODE_SERVE="${NODE_SERVE[*]}"
BENCH_SIO_SERVE="${SIO_SERVE[*]}"
BENCH_RATE=$RATE
BENCH_SUBSCRIBERS=$SUBSCRIBERS
BENCH_SUBSCRIBERS_BIG=$SUBSCRIBERS_BIG
BENCH_CONNECT_FEW=$CONNECT_FEW
BENCH_BIG_RATE=$BIG_RATE
BENCH_BIG_RATE_FROM=$BIG_RATE_FROM
BENCH_BIG_CALM_RATE=$BIG_CALM_RATE
BENCH_DIRECT_RATE=$DIRECT_RATE
BENCH_DIRECT_RATE_FROM=$DIRECT_RATE_FROM
BENCH_PUB_RETENTION=$PUB_RETENTION
BENCH_PUB_ROUNDS=$PUB_ROUNDS
BENCH_FAILED=$(printf '%s\n' "${FAILED[@]}")
export BENCH_PUB_RETENTION BENCH_PUB_ROUNDS BENCH_DISK_DF BENCH_DISK_MOUNT BENCH_DISK_CACHE BENCH_DISK_DSYNC_APPEND_S \
  BENCH_DISK_DSYNC_OVERWRITE_S BENCH_ELAPSED_S BENCH_SOCKETIO BENCH_SIO_SERVE BENCH_BIG_RATE BENCH_BIG_RATE_FROM BENCH_BIG_CALM_RATE \
  BENCH_DIRECT_RATE BENCH_DIRECT_RATE_FROM BENCH_FAILED BENCH_SUBSCRIBERS BENCH_SUBSCRIBERS_BIG BENCH_CONNECT_FEW
export BENCH_WORK BENCH_STARTED BENCH_LOAD_BEFORE BENCH_LOAD_AFTER BENCH_CPU_MODEL BENCH_NPROC BENCH_KERNEL \
  BENCH_MEM BENCH_RUSTC BENCH_NODE BENCH_WS BENCH_COMMIT BENCH_SB_SERVE BENCH_NODE_SERVE BENCH_RATE
# Keep the raw results (JSON lines, outputs, commands, server notes, this
# environment), so that `bench/run.sh --report DIR` can render them again.
for var in ${!BENCH_@}; do
  [ "$var" = BENCH_WORK ] || printf 'export %s=%q\n' "$var" "${!var}"
done >"$WORK/bench.env"
RESULTS_DIR=${RESULTS_DIR:-$TARGET_DIR/bench-results}
rm -rf "$RESULTS_DIR"
mkdir -p "$RESULTS_DIR"
cp -r "$WORK"/. "$RESULTS_DIR"
if ! node bench/report.js >"$WORK/BENCHMARKS.md"; then
  echo "bench/run.sh: rendering the report failed; the results are in $RESULTS_DIR" >&2
  exit 1
fi
# The cluster section is bench/cluster.sh's: carried over from the previous
# BENCHMARKS.md (report.js does not render it), or measured anew below.
carry_cluster_section "$WORK/BENCHMARKS.md"
mv "$WORK/BENCHMARKS.md" BENCHMARKS.md
if [ "${CLUSTER:-0}" = 1 ]; then
  say "CLUSTER=1: bench/cluster.sh"
  SWITCHBOARD_BIN=$BIN SWITCHBOARD_BENCH_BIN=$BENCH_BIN bench/cluster.sh || FAILED+=("bench/cluster.sh failed (see above)")
fi
say "wrote BENCHMARKS.md in $((BENCH_ELAPSED_S / 60)) min $((BENCH_ELAPSED_S % 60)) s (raw results in $RESULTS_DIR; bench/run.sh --report $RESULTS_DIR renders them again)"
if [ "${#FAILED[@]}" -gt 0 ]; then
  say "${#FAILED[@]} measurement(s) failed (marked in BENCHMARKS.md):"
  printf '    %s\n' "${FAILED[@]}" >&2
  exit 1
fi
