#!/usr/bin/env bash
# Fan-out benchmark: Switchboard (room mode and relay mode) against the
# Node.js `ws` broadcast baseline, one after the other on this machine, each
# server alone (and freshly started) while it is measured. Writes
# BENCHMARKS.md.
#
#   bench/run.sh           release build, 1000 subscribers, 10 s per
#                          measurement; rewrites BENCHMARKS.md
#   bench/run.sh --smoke   50 subscribers, 2 s per measurement, --strict
#                          (fails on lost messages, dropped connections,
#                          server errors; never on timing); writes nothing.
#                          Uses the debug build unless SWITCHBOARD_BIN is set.
#
# Each target is measured twice: flat out (--rate 0: throughput, and the
# latency that comes with it) and at a fixed rate that every target sustains
# (--rate RATE: latency without a backlog).
#
# Overrides (environment): SWITCHBOARD_BIN (skip the build), SUBSCRIBERS,
# PUBLISHERS, DURATION, WARMUP, SIZE, WINDOW, LEAD, RATE.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

smoke=false
case "${1:-}" in
  --smoke) smoke=true ;;
  "") ;;
  *) echo "usage: bench/run.sh [--smoke]" >&2; exit 2 ;;
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
SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}
trap 'stop_server; rm -rf "$WORK"' EXIT

# start_server NAME COMMAND...: starts it in the background and waits for its
# "listening on SCHEME://HOST:PORT" line; sets SERVER_PID and PORT.
start_server() {
  local name=$1
  shift
  "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
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
  } >"$WORK/$name.server"
}

# measure NAME LABEL MODE RATE SERVER-COMMAND...: one measurement, fresh server.
measure() {
  local name=$1 label=$2 mode=$3 rate=$4
  shift 4
  start_server "$name" "$@"
  bench "$name" "$label" "$mode" "$rate"
  if [ "$label" = switchboard ]; then server_notes "$name"; fi
  stop_server
}

SB_SERVE=(serve --listen 127.0.0.1:0 --rate-limit 0 --max-queue 16MiB)
NODE_SERVE=(node bench/baselines/node-ws-broadcast.js 0)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')

for rate in 0 "$RATE"; do
  if [ "$rate" = 0 ]; then set=flat; else set=fixed; fi
  measure "$set-switchboard-room" switchboard room "$rate" "$BIN" "${SB_SERVE[@]}"
  measure "$set-switchboard-relay" switchboard relay "$rate" "$BIN" "${SB_SERVE[@]}"
  measure "$set-node" node-ws relay "$rate" "${NODE_SERVE[@]}"
done

if $smoke; then
  say "smoke run passed (BENCHMARKS.md not rewritten)"
  exit 0
fi

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
BENCH_COMMANDS=$(printf '%s\n' "${COMMANDS[@]}" | sed 's/127\.0\.0\.1:[0-9]*/127.0.0.1:$PORT/')
export BENCH_WORK BENCH_STARTED BENCH_LOAD_BEFORE BENCH_LOAD_AFTER BENCH_CPU_MODEL BENCH_NPROC BENCH_KERNEL \
  BENCH_MEM BENCH_RUSTC BENCH_NODE BENCH_WS BENCH_COMMIT BENCH_SB_SERVE BENCH_NODE_SERVE BENCH_RATE BENCH_COMMANDS
node bench/report.js >"$WORK/BENCHMARKS.md"
mv "$WORK/BENCHMARKS.md" BENCHMARKS.md
say "wrote BENCHMARKS.md"
