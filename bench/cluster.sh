#!/usr/bin/env bash
# The cluster benchmark (issue 11): NODES (3) Switchboard nodes on one Redis
# against a single node (SQLite store, the same release binary), measured in
# the same run, each server set started afresh (a fresh Redis, in a fresh
# temporary directory, for every cluster measurement). The load generator
# spreads subscribers and publishers round-robin over the nodes (several
# --url).
#
# 1. Fan-out: SUBSCRIBERS (1000) subscribers in one room, PUBLISHERS (3)
#    publishers (one per node in the cluster), flat out (--rate 0):
#    deliveries/s, latency p50/p99 (and, in the cluster, cross-node apart:
#    2 of 3 deliveries have their publisher on another node). Then both at
#    half of the cluster's flat-out publish rate (HALF_RATE, msg/s per
#    publisher, overrides it): latency without a backlog.
# 2. Publish: acked publishes/s, PUB_PUBLISHERS (16) publishers in as many
#    rooms, ack windows PUB_WINDOW (64) and 1: single node (SQLite, WAL,
#    synchronous=FULL) against the cluster (Redis with appendonly yes,
#    appendfsync always: an ack waits for Redis' fsync).
# 3. Idle connections: NODES × IDLE_PER_NODE (15,000) /ws connections held
#    at once (more than the ~19,900 one process can hold here: 20,000 files
#    per process), from several load-generator processes bound to several
#    127.0.0.x; RSS per connection per node. The single node holds
#    IDLE_PER_NODE for comparison.
# CPU: every bench command gets --server-pid for every node and Redis, so
# "server CPU" is their sum (each one's share is in the JSON, and the report
# shows Redis' apart), and server CPU per delivery is derived from it. The
# harness measures user+system together (from /proc/PID/stat); it has no
# user/system split, so neither has this.
#
# Writes the "## Cluster mode (3 nodes on one Redis)" section of
# BENCHMARKS.md (replacing that section only, or appending it), rendered by
# bench/cluster-report.js; the raw results stay in RESULTS_DIR
# (target/bench-results-cluster). `bench/cluster.sh --report DIR` renders
# the section again from them. About 6 minutes on 2 cores.
#
# bench/run.sh runs it at its end with CLUSTER=1 (opt-in: it needs
# redis-server, adds minutes, and holds 45,000 connections); without it
# run.sh carries the previous cluster section over into the BENCHMARKS.md it
# writes.
#
# Overrides (environment): SWITCHBOARD_BIN, SWITCHBOARD_BENCH_BIN (both set:
# no build), NODES, SUBSCRIBERS, PUBLISHERS, DURATION, WARMUP, SIZE, WINDOW,
# HALF_RATE, PUB_PUBLISHERS, PUB_WINDOW, IDLE_PER_NODE, RESULTS_DIR,
# DATA_PARENT (where the data and Redis directories go).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
. bench/lib.sh

case "${1:-}" in
  -h | --help)
    sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "$0"
    exit 0
    ;;
  --report)
    [ -f "${2:-}/cluster.env" ] || { echo "usage: bench/cluster.sh [--report RESULTS-DIR]" >&2; exit 2; }
    node bench/cluster-report.js "$2" >"$2/cluster.md"
    node bench/cluster-report.js --splice "$2/cluster.md" BENCHMARKS.md
    echo "==> wrote the cluster section of BENCHMARKS.md from $2" >&2
    exit 0
    ;;
  "") ;;
  *) echo "bench/cluster.sh: unknown option $1; usage: bench/cluster.sh [--report RESULTS-DIR] (--help explains)" >&2; exit 2 ;;
esac

NODES=${NODES:-3}
SUBSCRIBERS=${SUBSCRIBERS:-1000}
PUBLISHERS=${PUBLISHERS:-$NODES}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-1s}
SIZE=${SIZE:-100}
WINDOW=${WINDOW:-64}
HALF_RATE=${HALF_RATE:-}
PUB_PUBLISHERS=${PUB_PUBLISHERS:-16}
PUB_WINDOW=${PUB_WINDOW:-64}
IDLE_PER_NODE=${IDLE_PER_NODE:-15000}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RESULTS_DIR=${RESULTS_DIR:-$TARGET_DIR/bench-results-cluster}

say() { printf '==> %s\n' "$*" >&2; }
command -v redis-server >/dev/null || { echo "bench/cluster.sh: redis-server not found (apt-get install redis-server)" >&2; exit 1; }
command -v node >/dev/null || { echo "bench/cluster.sh: node renders the report" >&2; exit 1; }

WORK=$(mktemp -d)
DATA_ROOT=$(mktemp -d "${DATA_PARENT:-${TMPDIR:-/tmp}}/switchboard-cluster.XXXXXX")
if [ -n "${SWITCHBOARD_BIN:-}" ] && [ -n "${SWITCHBOARD_BENCH_BIN:-}" ]; then
  BIN=$SWITCHBOARD_BIN
  BENCH_BIN=$SWITCHBOARD_BENCH_BIN
else
  say "building switchboard and switchboard-bench (release)"
  cargo build --release -p switchboard -p switchboard-bench --quiet
  # Copies: a rebuild in the same checkout during the run cannot swap the
  # binaries between two measurements.
  cp "$TARGET_DIR/release/switchboard" "$TARGET_DIR/release/switchboard-bench" "$WORK/"
  BIN=$WORK/switchboard
  BENCH_BIN=$WORK/switchboard-bench
fi
# 15,000 connections per node plus the load generator's side of them.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
RUN_STARTED_S=$(date +%s)

PIDS=()     # the server processes of the current measurement
REDIS_PID=""
stop_servers() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
  REDIS_PID=""
}
trap 'stop_servers; rm -rf "$WORK" "$DATA_ROOT"' EXIT

free_port() {
  node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
}

SB_FLAGS=(--rate-limit 0 --max-queue 16MiB --max-connections-per-ip 0 --connect-rate-per-ip 0)

# wait_listening NAME PID: the port from the server's "listening on" line.
wait_listening() {
  local name=$1 pid=$2
  listening_port "$WORK/$name.out" "$pid" && return 0
  echo "bench/cluster.sh: $name did not start:" >&2
  cat "$WORK/$name.out" "$WORK/$name.err" >&2
  exit 1
}

# start_single NAME: one node, SQLite store, fresh data directory. Sets
# URLS and SERVER_PIDS.
start_single() {
  local name=$1
  mkdir -p "$DATA_ROOT/$name"
  : >"$WORK/$name.out"
  : >"$WORK/$name.err"
  "$BIN" serve --listen 127.0.0.1:0 "${SB_FLAGS[@]}" --store sqlite --data-dir "$DATA_ROOT/$name" \
    >>"$WORK/$name.out" 2>>"$WORK/$name.err" &
  PIDS=($!)
  URLS="ws://127.0.0.1:$(wait_listening "$name" "${PIDS[0]}")"
  SERVER_PIDS=${PIDS[0]}
}

# start_cluster NAME: a fresh redis-server (durable: AOF, appendfsync
# always, noeviction; a temporary directory; a free port) and NODES nodes on
# it, each ready (/readyz) before the measurement. Sets URLS and SERVER_PIDS
# (the nodes in URL order, then Redis).
start_cluster() {
  local name=$1 dir="$DATA_ROOT/$1-redis" redis_port i
  mkdir -p "$dir"
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --save '' \
    --appendonly yes --appendfsync always --maxmemory-policy noeviction \
    --daemonize no --logfile "$dir/redis.log" &
  REDIS_PID=$!
  PIDS=("$REDIS_PID")
  for _ in $(seq 100); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  URLS=""
  SERVER_PIDS=""
  local node_pids=()
  for i in $(seq 1 "$NODES"); do
    : >"$WORK/$name-node$i.out"
    : >"$WORK/$name-node$i.err"
    "$BIN" serve --listen 127.0.0.1:0 "${SB_FLAGS[@]}" --redis "redis://127.0.0.1:$redis_port" \
      --node-id "node$i" >>"$WORK/$name-node$i.out" 2>>"$WORK/$name-node$i.err" &
    local pid=$!
    PIDS+=("$pid")
    node_pids+=("$pid")
    local port
    port=$(wait_listening "$name-node$i" "$pid")
    URLS="${URLS:+$URLS,}ws://127.0.0.1:$port"
  done
  # A node serves once it has heard the others: wait for every /readyz.
  local url ok
  for url in ${URLS//,/ }; do
    ok=false
    for _ in $(seq 200); do
      if curl -fsS "http${url#ws}/readyz" >/dev/null 2>&1; then ok=true; break; fi
      sleep 0.05
    done
    $ok || { echo "bench/cluster.sh: $url never became ready" >&2; exit 1; }
  done
  SERVER_PIDS=$(IFS=,; echo "${node_pids[*]},$REDIS_PID")
}

# bench NAME SERVER LABEL ARG...: switchboard-bench ARG... against the
# running servers; NAME.json, NAME.txt. A failure is noted and the run goes
# on (the report marks it).
FAILED=()
bench() {
  local name=$1 server=$2 label=$3
  shift 3
  printf '%s\n' "switchboard-bench $* --server-pid PIDS" |
    sed -e 's/127\.0\.0\.1:[1-9][0-9]*/127.0.0.1:$PORT/g' >"$WORK/$name.cmd"
  if ! "$BENCH_BIN" "$@" --server-pid "$SERVER_PIDS" --label "$label" --server "$server" \
    --json "$WORK/$name.json" 2> >(tee "$WORK/$name.log" >&2) | tee "$WORK/$name.txt" >&2; then
    sleep 0.5
    FAILED+=("$name: $(grep -E '^Error' "$WORK/$name.log" | tail -n1 || echo failed)")
    rm -f "$WORK/$name.json"
    say "FAILED: $name (going on)"
  fi
  # What each server process said at WARN or above.
  local f warns=0
  for f in "$WORK/$name"*.err; do
    [ -f "$f" ] && warns=$((warns + $(grep -cE 'WARN|ERROR' "$f" || true)))
  done
  echo "$warns" >"$WORK/$name.warns"
}

# measure NAME KIND ARG...: a fresh server set (KIND single or cluster),
# one bench command, stop.
measure() {
  local name=$1 kind=$2
  shift 2
  if [ "$kind" = single ]; then start_single "$name"; else start_cluster "$name"; fi
  say "$kind: switchboard-bench $1 (${name})"
  local label="single node (SQLite)"
  [ "$kind" = cluster ] && label="$NODES nodes on Redis"
  bench "$name" "switchboard-$kind" "$label" "$1" --url "$URLS" "${@:2}"
  stop_servers
  rm -rf "${DATA_ROOT:?}/$name" "${DATA_ROOT:?}/$name-redis"
}

json_field() {
  [ -f "$WORK/$1.json" ] || return 0
  node -e 'const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    process.stdout.write(String(eval(process.argv[2])));' "$WORK/$1.json" "$2"
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')
FANOUT=(fanout --mode room --subscribers "$SUBSCRIBERS" --publishers "$PUBLISHERS"
  --duration "$DURATION" --warmup "$WARMUP" --size "$SIZE" --window "$WINDOW")

# 1. Fan-out flat out, then at half the cluster's flat-out publish rate.
measure fanout-flat-single single "${FANOUT[@]}" --rate 0
measure fanout-flat-cluster cluster "${FANOUT[@]}" --rate 0
if [ -z "$HALF_RATE" ]; then
  HALF_RATE=$(json_field fanout-flat-cluster \
    "Math.max(1, Math.round(r.publishes_per_sec / 2 / $PUBLISHERS * 10) / 10)")
  HALF_RATE_FROM="half of the cluster's flat-out publishes/s"
else
  HALF_RATE_FROM="set by HALF_RATE"
fi
if [ -n "$HALF_RATE" ]; then
  say "fixed rate: $HALF_RATE msg/s per publisher ($HALF_RATE_FROM)"
  measure fanout-half-single single "${FANOUT[@]}" --rate "$HALF_RATE"
  measure fanout-half-cluster cluster "${FANOUT[@]}" --rate "$HALF_RATE"
else
  FAILED+=("fanout-half: no flat-out cluster rate to halve")
fi

# 2. Acked publishes: window PUB_WINDOW, then 1 (one publish in flight per
# publisher: the ack latency is the commit/fsync latency).
for window in "$PUB_WINDOW" 1; do
  for kind in single cluster; do
    measure "publish-w$window-$kind" "$kind" publish --publishers "$PUB_PUBLISHERS" \
      --rooms "$PUB_PUBLISHERS" --window "$window" --duration "$DURATION" --warmup "$WARMUP" --size "$SIZE"
  done
done

# 3. Idle connections: the single node holds one node's share; the cluster
# NODES times that (one load-generator process per 15,000 connections;
# past 5,000 per source address they bind 127.0.0.2, 127.0.0.3, …).
measure connect-single single connect --mode ws --connections "$IDLE_PER_NODE" --hold 2s
measure connect-cluster cluster connect --mode ws --connections "$((NODES * IDLE_PER_NODE))" --hold 2s

{
  printf 'export CLUSTER_STARTED=%q\n' "$STARTED"
  printf 'export CLUSTER_ELAPSED_S=%q\n' "$(($(date +%s) - RUN_STARTED_S))"
  printf 'export CLUSTER_LOAD_BEFORE=%q\n' "$LOAD_BEFORE"
  printf 'export CLUSTER_LOAD_AFTER=%q\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
  printf 'export CLUSTER_NPROC=%q\n' "$(nproc)"
  printf 'export CLUSTER_CPU_MODEL=%q\n' "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
  printf 'export CLUSTER_REDIS=%q\n' "$(redis-server --version | sed 's/ sha=.*//')"
  printf 'export CLUSTER_DISK=%q\n' "$(df -hT "$DATA_ROOT" | tail -n1 | awk '{print $1, $2}')"
  printf 'export CLUSTER_COMMIT=%q\n' "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo ' (with uncommitted changes)')"
  printf 'export CLUSTER_NODES=%q\n' "$NODES"
  printf 'export CLUSTER_SUBSCRIBERS=%q\n' "$SUBSCRIBERS"
  printf 'export CLUSTER_PUBLISHERS=%q\n' "$PUBLISHERS"
  printf 'export CLUSTER_HALF_RATE=%q\n' "$HALF_RATE"
  printf 'export CLUSTER_HALF_RATE_FROM=%q\n' "${HALF_RATE_FROM:-}"
  printf 'export CLUSTER_PUB_PUBLISHERS=%q\n' "$PUB_PUBLISHERS"
  printf 'export CLUSTER_PUB_WINDOW=%q\n' "$PUB_WINDOW"
  printf 'export CLUSTER_IDLE_PER_NODE=%q\n' "$IDLE_PER_NODE"
  printf 'export CLUSTER_SB_FLAGS=%q\n' "${SB_FLAGS[*]}"
  printf 'export CLUSTER_FAILED=%q\n' "$(printf '%s\n' "${FAILED[@]}")"
} >"$WORK/cluster.env"
rm -rf "$RESULTS_DIR"
mkdir -p "$RESULTS_DIR"
cp "$WORK"/*.json "$WORK"/*.txt "$WORK"/*.cmd "$WORK"/*.warns "$WORK/cluster.env" "$RESULTS_DIR/" 2>/dev/null || true
node bench/cluster-report.js "$RESULTS_DIR" >"$RESULTS_DIR/cluster.md"
node bench/cluster-report.js --splice "$RESULTS_DIR/cluster.md" BENCHMARKS.md
say "wrote the cluster section of BENCHMARKS.md in $((($(date +%s) - RUN_STARTED_S) / 60)) min (raw results in $RESULTS_DIR)"
if [ "${#FAILED[@]}" -gt 0 ]; then
  say "${#FAILED[@]} measurement(s) failed:"
  printf '    %s\n' "${FAILED[@]}" >&2
  exit 1
fi
