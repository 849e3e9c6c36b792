#!/usr/bin/env bash
# Benchmarks, one after the other on this machine, each server alone (and
# freshly started, on a fresh data directory) while it is measured. Writes
# BENCHMARKS.md.
#
# 1. Fan-out: Switchboard (room mode and relay mode) against the Node.js `ws`
#    broadcast baseline. Each target is measured twice: flat out (--rate 0:
#    throughput, and the latency that comes with it) and at a fixed rate that
#    every target sustains (--rate RATE: latency without a backlog).
# 2. Publish (the cost of durability): acked publishes per second and ack
#    latency, Switchboard with the SQLite store (WAL, synchronous=FULL) and
#    with the in-memory store, same pipeline, measurement by measurement
#    side by side: 16 publishers in 16 rooms and in 1 room, ack windows 1
#    and 64, plus 1 publisher with window 1 (one commit per publish); all of
#    it three times over (rounds), the report taking medians.
#
#   bench/run.sh           release build, 1000 subscribers, 10 s per
#                          measurement; rewrites BENCHMARKS.md (~9 minutes)
#   bench/run.sh --smoke   fan-out with 50 subscribers, 2 s per measurement,
#                          and a 2 s publish run against the SQLite store, all
#                          --strict (fails on lost messages, missing acks,
#                          dropped connections, server errors; never on
#                          timing); writes nothing. Uses the debug build
#                          unless SWITCHBOARD_BIN is set.
#
#   bench/run.sh --report DIR
#                          renders BENCHMARKS.md again from the raw results a
#                          full run keeps (in target/bench-results, or
#                          RESULTS_DIR), without measuring.
#
# Overrides (environment): SWITCHBOARD_BIN (skip the build), SUBSCRIBERS,
# PUBLISHERS, DURATION, WARMUP, SIZE, WINDOW, LEAD, RATE (fan-out);
# PUB_PUBLISHERS, PUB_WINDOW (the large window; the small one is 1),
# PUB_RETENTION (--retention-count of those servers), PUB_ROUNDS (times each
# publish measurement is made; the report takes medians) (publish);
# DATA_PARENT (where the servers' fresh data directories are made; default
# a new directory under ${TMPDIR:-/tmp}: put it on the disk you want to measure).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

smoke=false
usage() { echo "usage: bench/run.sh [--smoke | --report RESULTS-DIR]" >&2; exit 2; }
case "${1:-}" in
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
    mv "$results/BENCHMARKS.md" BENCHMARKS.md
    echo "==> wrote BENCHMARKS.md from $results" >&2
    exit 0
    ;;
  "") ;;
  *) usage ;;
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
PUB_PUBLISHERS=${PUB_PUBLISHERS:-16}
PUB_WINDOW=${PUB_WINDOW:-64}
# Messages kept per room in the publish measurements: by default out of
# reach, so that neither store trims during a measurement and the comparison
# is of storing alone (the memory store's trim is far slower than SQLite's).
PUB_RETENTION=${PUB_RETENTION:-1000000000}
PUB_ROUNDS=${PUB_ROUNDS:-3}

say() { printf '==> %s\n' "$*" >&2; }

command -v node >/dev/null || { echo "bench/run.sh: node is needed for the baseline server" >&2; exit 1; }
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -n "${SWITCHBOARD_BIN:-}" ]; then
  BIN=$SWITCHBOARD_BIN
elif $smoke; then
  say "building switchboard (debug)"
  cargo build -p switchboard --quiet
  BIN=$TARGET_DIR/debug/switchboard
else
  say "building switchboard (release)"
  cargo build --release -p switchboard --quiet
  BIN=$TARGET_DIR/release/switchboard
fi
if [ ! -d bench/baselines/node_modules/ws ]; then
  say "installing ws for the Node baseline"
  (cd bench/baselines && npm ci --no-audit --no-fund --loglevel=error)
fi
# A thousand subscribers, plus the server's side of each connection.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

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

# start_server NAME COMMAND...: starts it in the background and waits for its
# "listening on SCHEME://HOST:PORT" line; sets SERVER_PID and PORT.
start_server() {
  local name=$1
  shift
  # Created here, not by the background job's redirection, which may not
  # have happened yet when we first look.
  : >"$WORK/$name.out"
  : >"$WORK/$name.err"
  "$@" >>"$WORK/$name.out" 2>>"$WORK/$name.err" &
  SERVER_PID=$!
  PORT=""
  for _ in $(seq 200); do
    PORT=$(sed -n 's|.*listening on [a-z]*://[^ ]*:\([0-9][0-9]*\).*|\1|p' "$WORK/$name.out" | head -n1)
    [ -n "$PORT" ] && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "bench/run.sh: $name did not start:" >&2
  cat "$WORK/$name.out" "$WORK/$name.err" >&2
  exit 1
}

# bench NAME LABEL MODE RATE: runs the fanout scenario against the running server.
COMMANDS=()
PUB_COMMANDS=()
bench() {
  local name=$1 label=$2 mode=$3 rate=$4
  local args=(bench fanout --url "ws://127.0.0.1:$PORT" --mode "$mode"
    --subscribers "$SUBSCRIBERS" --publishers "$PUBLISHERS" --rate "$rate"
    --duration "$DURATION" --warmup "$WARMUP" --size "$SIZE"
    --window "$WINDOW" --lead "$LEAD")
  COMMANDS+=("switchboard ${args[*]}")
  say "$label: fanout --mode $mode --rate $rate, $SUBSCRIBERS subscribers, $DURATION"
  local extra=(--label "$label" --server-pid "$SERVER_PID" --json "$WORK/$name.json")
  if $smoke; then extra+=(--strict); fi
  "$BIN" "${args[@]}" "${extra[@]}" | tee "$WORK/$name.txt" >&2
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
  start_server "$name" "$BIN" "${SB_SERVE[@]}" --store "$store" --data-dir "$DATA_ROOT/$name" "$@"
}

# measure NAME LABEL MODE RATE [SERVER-COMMAND...]: one fanout measurement,
# fresh server: Switchboard (SQLite store) for LABEL switchboard, else the
# command given.
measure() {
  local name=$1 label=$2 mode=$3 rate=$4
  shift 4
  if [ "$label" = switchboard ]; then
    start_switchboard "$name" sqlite
  else
    start_server "$name" "$@"
  fi
  bench "$name" "$label" "$mode" "$rate"
  if [ "$label" = switchboard ]; then server_notes "$name"; fi
  stop_server
  rm -rf "${DATA_ROOT:?}/$name"
}

# measure_publish NAME STORE PUBLISHERS ROOMS WINDOW: one publish
# measurement, fresh server (and fresh data directory).
measure_publish() {
  local name=$1 store=$2 publishers=$3 rooms=$4 window=$5
  start_switchboard "$name" "$store" --retention-count "$PUB_RETENTION"
  local args=(bench publish --url "ws://127.0.0.1:$PORT" --publishers "$publishers"
    --rooms "$rooms" --window "$window" --duration "$PUB_DURATION" --warmup "$WARMUP" --size "$SIZE")
  if [ "${round:-1}" = 1 ]; then PUB_COMMANDS+=("switchboard ${args[*]}    # --store $store"); fi
  say "${round:+round $round/$PUB_ROUNDS: }switchboard --store $store: publish, $publishers publishers, $rooms rooms, window $window, $PUB_DURATION"
  local extra=(--label "$store" --server-pid "$SERVER_PID" --json "$WORK/$name.json")
  if $smoke; then extra+=(--strict); fi
  "$BIN" "${args[@]}" "${extra[@]}" | tee "$WORK/$name.txt" >&2
  server_notes "$name"
  stop_server
  rm -rf "${DATA_ROOT:?}/$name"
  echo "$name" >>"$WORK/publish.list"
}

SB_SERVE=(serve --listen 127.0.0.1:0 --rate-limit 0 --max-queue 16MiB)
# A thousand clients from one address: lift the per-IP limits where the
# server has them.
if "$BIN" serve --help | grep -q -- '--connect-rate-per-ip'; then
  SB_SERVE+=(--max-connections-per-ip 0 --connect-rate-per-ip 0)
fi
NODE_SERVE=(node bench/baselines/node-ws-broadcast.js 0)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')

for rate in 0 "$RATE"; do
  if [ "$rate" = 0 ]; then set=flat; else set=fixed; fi
  measure "$set-switchboard-room" switchboard room "$rate"
  measure "$set-switchboard-relay" switchboard relay "$rate"
  measure "$set-node" node-ws relay "$rate" "${NODE_SERVE[@]}"
done

# The cost of durability: each configuration against SQLite, then at once
# against the memory store.
if $smoke; then
  PUB_DURATION=$DURATION
  measure_publish "publish-smoke-sqlite" sqlite 4 2 8
  # --- smoke: bench direct, resume, churn (tiny, --strict; fresh server each) ---
  # smoke_session_scenario NAME STORE SCENARIO [ARG...]
  smoke_session_scenario() {
    local name=$1 store=$2
    shift 2
    start_switchboard "$name" "$store"
    say "switchboard --store $store: bench $*"
    "$BIN" bench "$@" --url "ws://127.0.0.1:$PORT" --server-pid "$SERVER_PID" \
      --label "$store" --json "$WORK/$name.json" --strict | tee "$WORK/$name.txt" >&2
    server_notes "$name"
    stop_server
    rm -rf "${DATA_ROOT:?}/$name"
  }
  smoke_session_scenario direct-smoke-memory memory direct --pairs 10 \
    --duration "$DURATION" --warmup "$WARMUP"
  smoke_session_scenario resume-smoke-sqlite sqlite resume --clients 200 --rooms 10 \
    --before 5 --offline 5 --during 5 --timeout 30s
  smoke_session_scenario churn-smoke-sqlite sqlite churn --rate 50 --duration "$DURATION"
  # --- end smoke: bench direct, resume, churn ---
  say "smoke run passed (BENCHMARKS.md not rewritten)"
  exit 0
fi
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
BENCH_LOAD_BEFORE=$LOAD_BEFORE
BENCH_LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")
BENCH_CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -n1)
BENCH_NPROC=$(nproc)
BENCH_KERNEL=$(uname -sr)
BENCH_MEM=$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo 2>/dev/null || echo "?")
BENCH_RUSTC=$(rustc --version 2>/dev/null || echo "?")
BENCH_NODE=$(node --version)
BENCH_WS=$(node -p 'require("./bench/baselines/node_modules/ws/package.json").version')
BENCH_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo "?")
git diff --quiet HEAD 2>/dev/null || BENCH_COMMIT="$BENCH_COMMIT (with uncommitted changes)"
BENCH_SB_SERVE="switchboard ${SB_SERVE[*]}"
BENCH_NODE_SERVE="${NODE_SERVE[*]}"
BENCH_RATE=$RATE
BENCH_PUB_RETENTION=$PUB_RETENTION
BENCH_PUB_ROUNDS=$PUB_ROUNDS
BENCH_COMMANDS=$(printf '%s\n' "${COMMANDS[@]}" | sed 's/127\.0\.0\.1:[0-9]*/127.0.0.1:$PORT/')
BENCH_PUB_COMMANDS=$(printf '%s\n' "${PUB_COMMANDS[@]}" | sed 's/127\.0\.0\.1:[0-9]*/127.0.0.1:$PORT/')
export BENCH_PUB_COMMANDS BENCH_PUB_RETENTION BENCH_PUB_ROUNDS BENCH_DISK_DF BENCH_DISK_MOUNT BENCH_DISK_CACHE BENCH_DISK_DSYNC_APPEND_S \
  BENCH_DISK_DSYNC_OVERWRITE_S
export BENCH_WORK BENCH_STARTED BENCH_LOAD_BEFORE BENCH_LOAD_AFTER BENCH_CPU_MODEL BENCH_NPROC BENCH_KERNEL \
  BENCH_MEM BENCH_RUSTC BENCH_NODE BENCH_WS BENCH_COMMIT BENCH_SB_SERVE BENCH_NODE_SERVE BENCH_RATE BENCH_COMMANDS
# Keep the raw results (JSON lines, outputs, server notes, this environment),
# so that `bench/run.sh --report DIR` can render them again.
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
mv "$WORK/BENCHMARKS.md" BENCHMARKS.md
say "wrote BENCHMARKS.md (raw results in $RESULTS_DIR; bench/run.sh --report $RESULTS_DIR renders them again)"
