#!/usr/bin/env bash
# Everyday fan-out (issue 12): what one delivery costs the server at a
# moderate rate, where each message reaches each subscriber on its own (no
# batching). SUBSCRIBERS (1000) subscribers, one publisher at RATE (100)
# msg/s, SIZE (100) byte bodies: 100,000 deliveries/s. Three servers, each
# started afresh for each measurement, in the same run:
#
#   node   the Node.js `ws` broadcast baseline (bench/baselines)
#   relay  Switchboard `/relay/bench` (SQLite store)
#   room   Switchboard room mode, `/ws` JSON protocol, SQLite store
#
# ROUNDS (3) rounds, the order of the three rotated from round to round;
# the report takes medians. Over the measured window (the load
# generator's: DURATION, 10 s, opening WARMUP, 2 s, after it starts
# publishing; less 0.5 s at each end for the readings below), per server:
# - deliveries/s (the load generator's count over its own window);
# - server CPU µs per delivery, user and system apart: utime and stime of
#   /proc/PID/stat, read at both ends of the window;
# - syscalls per delivery, counted by `perf stat` over the same window (it
#   is attached, disabled, when the server starts, and enabled and disabled
#   through its control FIFO at the ends of the window): the total
#   (raw_syscalls:sys_enter), the write family (write, writev, sendto,
#   sendmsg, sendmmsg; writes to the server's eventfds are counted apart, as
#   they are wake-ups, not deliveries), and each other syscall by name
#   (what no named tracepoint caught is "other");
# - VmRSS at the end of the window;
# - the ratio of CPU per delivery, Node ÷ Switchboard, within each round.
# Counting syscalls costs the server a little time per syscall; every
# server pays it, in the same window as its CPU reading.
#
# Writes RESULTS_DIR (target/bench-results-everyday): runs.jsonl (one line
# per measurement), the raw files of each, everyday.env, everyday.md (the
# section), and puts the "## Everyday fan-out" section and its rows of the
# summary into BENCHMARKS.md (bench/everyday-report.js --splice), unless
# SPLICE=0 (bench/run.sh runs it that way, as one of its steps, and renders
# the section with the rest). The targets are bench/targets.json's
# everyday_fanout. About 2.5 minutes on 2 cores.
#
#   bench/everyday.sh                  measure, write the section
#   bench/everyday.sh --report DIR     render the section again from DIR
#
# The machine must be quiet for the figures to mean anything: run it when no
# other heavy process is running (the load generator's "other CPU" is kept
# with each measurement, and the report warns when it was high).
#
# Overrides (environment): SWITCHBOARD_BIN, SWITCHBOARD_BENCH_BIN (both set:
# no build), SUBSCRIBERS, RATE, SIZE, DURATION, WARMUP, WINDOW, ROUNDS,
# SERVERS (a subset of "node relay room"), RESULTS_DIR, SPLICE, PERF (the
# perf binary; when it cannot count, the syscall columns are n/a),
# DATA_PARENT (where the fresh data directories go).
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
    [ -f "${2:-}/everyday.env" ] || { echo "usage: bench/everyday.sh [--report RESULTS-DIR]" >&2; exit 2; }
    node bench/everyday-report.js "$2" >"$2/everyday.md"
    node bench/everyday-report.js --splice "$2" BENCHMARKS.md
    echo "==> wrote the everyday fan-out section of BENCHMARKS.md from $2" >&2
    exit 0
    ;;
  "") ;;
  *) echo "bench/everyday.sh: unknown option $1; usage: bench/everyday.sh [--report RESULTS-DIR] (--help explains)" >&2; exit 2 ;;
esac

target() {
  node -p 'require("./bench/targets.json").everyday_fanout[process.argv[1]]' "$1"
}
SUBSCRIBERS=${SUBSCRIBERS:-$(target subscribers)}
RATE=${RATE:-$(target rate)}
SIZE=${SIZE:-100}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
WINDOW=${WINDOW:-64}
ROUNDS=${ROUNDS:-3}
SERVERS=${SERVERS:-node relay room}
SPLICE=${SPLICE:-1}
PERF=${PERF:-perf}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RESULTS_DIR=${RESULTS_DIR:-$TARGET_DIR/bench-results-everyday}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "bench/everyday.sh: ROUNDS must be a positive integer" >&2; exit 2; }
for s in $SERVERS; do
  case $s in node | relay | room) ;; *) echo "bench/everyday.sh: unknown server $s in SERVERS" >&2; exit 2 ;; esac
done

say() { printf '==> %s\n' "$*" >&2; }
command -v node >/dev/null || { echo "bench/everyday.sh: node is needed (baseline, results)" >&2; exit 1; }

# seconds DURATION: a bench duration (500ms, 10s, 1m) in seconds, for sleep.
seconds() {
  case $1 in
    *ms) awk -v v="${1%ms}" 'BEGIN { print v / 1000 }' ;;
    *s) echo "${1%s}" ;;
    *m) awk -v v="${1%m}" 'BEGIN { print v * 60 }' ;;
    *) echo "bench/everyday.sh: cannot read the duration $1 (ms, s or m)" >&2; exit 2 ;;
  esac
}
WARMUP_S=$(seconds "$WARMUP")
DURATION_S=$(seconds "$DURATION")
MARGIN_S=0.5
awk -v d="$DURATION_S" 'BEGIN { exit !(d > 2) }' || { echo "bench/everyday.sh: DURATION must be over 2 s" >&2; exit 2; }

if [ -n "${SWITCHBOARD_BIN:-}" ] && [ -n "${SWITCHBOARD_BENCH_BIN:-}" ]; then
  BIN=$(realpath "$SWITCHBOARD_BIN")
  BENCH_BIN=$(realpath "$SWITCHBOARD_BENCH_BIN")
else
  say "building switchboard and switchboard-bench (release)"
  cargo build --release -p switchboard -p switchboard-bench --quiet
  BIN=${SWITCHBOARD_BIN:-$TARGET_DIR/release/switchboard}
  BENCH_BIN=${SWITCHBOARD_BENCH_BIN:-$TARGET_DIR/release/switchboard-bench}
fi
if [ ! -d bench/baselines/node_modules/ws ]; then
  say "installing ws for the baseline"
  (cd bench/baselines && npm ci --no-audit --no-fund --loglevel=error)
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# perf must be able to count syscall tracepoints of another process here;
# when it cannot, the measurements go on without syscall counts.
PERF_OK=false
if command -v "$PERF" >/dev/null && "$PERF" stat -e raw_syscalls:sys_enter -o /dev/null -- true 2>/dev/null; then
  PERF_OK=true
else
  say "perf cannot count syscall tracepoints here: no syscall counts"
fi
CLK_TCK=$(getconf CLK_TCK)
RUN_STARTED_S=$(date +%s)
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

WORK=$(mktemp -d)
if [ -n "${DATA_PARENT:-}" ]; then
  mkdir -p "$DATA_PARENT"
  DATA_ROOT=$(mktemp -d "$DATA_PARENT/switchboard-everyday.XXXXXX")
else
  DATA_ROOT=$(mktemp -d)
fi
: >"$WORK/runs.jsonl"

# Every process this script starts is one of these; the trap ends them.
SERVER_PID=""
BENCH_PID=""
PERF_PID=""
stop_all() {
  exec 7>&- 8<&- 2>/dev/null || true
  for var in PERF_PID BENCH_PID SERVER_PID; do
    if [ -n "${!var}" ]; then
      stop_pid "${!var}"
      printf -v "$var" '%s' ""
    fi
  done
}
trap 'stop_all; rm -rf "$WORK" "$DATA_ROOT"' EXIT
trap 'exit 130' INT TERM

SB_SERVE=(serve --listen 127.0.0.1:0 --rate-limit 0 --max-queue 16MiB)
if "$BIN" serve --help | grep -q -- '--connect-rate-per-ip'; then
  SB_SERVE+=(--max-connections-per-ip 0 --connect-rate-per-ip 0)
fi
NODE_SERVE=(node bench/baselines/node-ws-broadcast.js 0)

# start NAME SERVER: a fresh server; waits for its "listening on" line. Sets
# SERVER_PID and PORT.
start() {
  local name=$1 server=$2 cmd
  case $server in
    node) cmd=("${NODE_SERVE[@]}") ;;
    *)
      mkdir -p "$DATA_ROOT/$name"
      cmd=("$BIN" "${SB_SERVE[@]}" --store sqlite --data-dir "$DATA_ROOT/$name")
      ;;
  esac
  printf '%s\n' "${cmd[*]}" | sed -e "s|$BIN|switchboard|" -e "s|$DATA_ROOT/[^ ]*|DIR|" >"$WORK/$name.cmd"
  : >"$WORK/$name.out"
  : >"$WORK/$name.err"
  "${cmd[@]}" >>"$WORK/$name.out" 2>>"$WORK/$name.err" &
  SERVER_PID=$!
  if PORT=$(listening_port "$WORK/$name.out" "$SERVER_PID"); then
    return 0
  fi
  echo "bench/everyday.sh: $name did not start:" >&2
  cat "$WORK/$name.out" "$WORK/$name.err" >&2
  exit 1
}

# The syscalls counted by name (raw_syscalls:sys_enter counts them all).
SYSCALLS=(write writev sendto sendmsg sendmmsg read readv recvfrom recvmsg
  epoll_wait epoll_pwait epoll_pwait2 epoll_ctl futex sched_yield nanosleep clock_nanosleep
  accept4 close shutdown mmap munmap madvise brk mprotect mremap
  pwrite64 pread64 fsync fdatasync getrandom ioctl fcntl io_uring_enter)

# perf_attach NAME: perf stat on the server, counters disabled until the
# window opens (its control FIFO, fds 7 and 8). Writes to the server's
# eventfds (tokio's and libuv's wake-ups) are counted as their own event.
perf_attach() {
  local name=$1 events=(-e raw_syscalls:sys_enter) efds="" fd
  $PERF_OK || return 0
  for s in "${SYSCALLS[@]}"; do events+=(-e "syscalls:sys_enter_$s"); done
  for fd in /proc/"$SERVER_PID"/fd/*; do
    if [ "$(readlink "$fd" 2>/dev/null)" = "anon_inode:[eventfd]" ]; then
      efds+="${efds:+ || }fd == ${fd##*/}"
    fi
  done
  if [ -n "$efds" ]; then
    events+=(-e syscalls:sys_enter_write --filter "$efds")
    printf '%s\n' "$efds" >"$WORK/$name.eventfds"
  fi
  rm -f "$WORK/perf-ctl" "$WORK/perf-ack"
  mkfifo "$WORK/perf-ctl" "$WORK/perf-ack"
  "$PERF" stat -x, -o "$WORK/$name.perf" -D -1 --control "fifo:$WORK/perf-ctl,$WORK/perf-ack" \
    "${events[@]}" -p "$SERVER_PID" 2>"$WORK/$name.perf-err" &
  PERF_PID=$!
  # Read-write opens: they do not block (a plain open of a FIFO waits for
  # the other end, forever should perf have failed to start).
  exec 7<>"$WORK/perf-ctl" 8<>"$WORK/perf-ack"
}
# perf_ctl enable|disable: and waits for perf's ack (5 s at most).
perf_ctl() {
  [ -n "$PERF_PID" ] || return 0
  echo "$1" >&7
  local ack=""
  read -r -t 5 ack <&8 || say "perf did not acknowledge $1"
}
perf_detach() {
  [ -n "$PERF_PID" ] || return 0
  exec 7>&- 8<&-
  kill -INT "$PERF_PID" 2>/dev/null || true
  wait "$PERF_PID" 2>/dev/null || true
  PERF_PID=""
}

# cpu_ticks PID: "UTIME STIME" (clock ticks) from /proc/PID/stat.
cpu_ticks() {
  local stat
  stat=$(cat "/proc/$1/stat") || return 1
  # shellcheck disable=SC2086 # splitting the fields is the point
  set -- ${stat##*) }
  echo "${12} ${13}"
}

# measure NAME SERVER ROUND: one measurement on a fresh server.
measure() {
  local name=$1 server=$2 round=$3 mode url status=0 t0="" t1="" w0="" w1="" rss=""
  start "$name" "$server"
  perf_attach "$name"
  case $server in
    room) mode=room ;;
    *) mode=relay ;;
  esac
  url="ws://127.0.0.1:$PORT"
  local srv=switchboard
  [ "$server" = node ] && srv=node-ws
  local args=(fanout --url "$url" --mode "$mode" --subscribers "$SUBSCRIBERS" --publishers 1
    --rate "$RATE" --duration "$DURATION" --warmup "$WARMUP" --size "$SIZE" --window "$WINDOW"
    --lead "$WINDOW" --label "everyday $server" --server "$srv" --server-pid "$SERVER_PID")
  [ "$srv" = switchboard ] && args+=(--store sqlite)
  printf '%s\n' "switchboard-bench ${args[*]}" | sed -e 's/127\.0\.0\.1:[0-9]*/127.0.0.1:$PORT/' \
    -e 's/--server-pid [0-9]*/--server-pid PID/' >>"$WORK/$name.cmd"
  : >"$WORK/$name.log"
  timeout --kill-after=5s 180s "$BENCH_BIN" "${args[@]}" --json "$WORK/$name.json" \
    >"$WORK/$name.txt" 2>"$WORK/$name.log" &
  BENCH_PID=$!
  # The window opens WARMUP after "publishing" (the load generator's own
  # clock does the same): these sleeps are that clock.
  local started=false
  for _ in $(seq 2400); do
    if grep -q '; publishing$' "$WORK/$name.log"; then started=true; break; fi
    kill -0 "$BENCH_PID" 2>/dev/null || break
    sleep 0.05
  done
  if $started; then
    # MARGIN_S inside the load generator's window at both ends, so that
    # neither the last connections nor the first closes fall into ours.
    sleep "$(awk -v w="$WARMUP_S" -v m="$MARGIN_S" 'BEGIN { print w + m }')"
    perf_ctl enable
    w0=$(date +%s.%N)
    t0=$(cpu_ticks "$SERVER_PID" || true)
    sleep "$(awk -v d="$DURATION_S" -v m="$MARGIN_S" 'BEGIN { print d - 2 * m }')"
    t1=$(cpu_ticks "$SERVER_PID" || true)
    w1=$(date +%s.%N)
    perf_ctl disable
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$SERVER_PID/status" 2>/dev/null || true)
  fi
  wait "$BENCH_PID" || status=$?
  BENCH_PID=""
  perf_detach
  sed 's/^/    /' "$WORK/$name.txt" >&2
  [ "$status" = 0 ] || { say "FAILED: $name (exit status $status)"; tail -n 5 "$WORK/$name.log" >&2; }
  stop_pid "$SERVER_PID"
  SERVER_PID=""
  rm -rf "${DATA_ROOT:?}/$name"
  NAME=$name SERVER=$server ROUND=$round STATUS=$status T0=$t0 T1=$t1 W0=$w0 W1=$w1 RSS_KIB=$rss \
    CLK_TCK=$CLK_TCK node -e '
    const fs = require("fs");
    const e = process.env;
    const [json, perfFile, out] = process.argv.slice(1);
    const run = { name: e.NAME, server: e.SERVER, round: +e.ROUND, problems: [] };
    let r = null;
    try { r = JSON.parse(fs.readFileSync(json, "utf8")); } catch (_) {}
    if (e.STATUS !== "0" || !r) run.problems.push(`bench failed (exit status ${e.STATUS})`);
    if (r) {
      run.deliveries_per_sec = r.deliveries_per_sec;
      run.publishes_per_sec = r.publishes_per_sec;
      run.latency_us = r.latency_us;
      run.server_cpu_pct = r.server_cpu_pct;
      run.client_cpu_pct = r.client_cpu_pct;
      run.other_cpu_pct = r.other_cpu_pct;
      if (r.lost) run.problems.push(`${r.lost} deliveries lost`);
      if (r.disconnected_subscribers) run.problems.push(`${r.disconnected_subscribers} subscribers disconnected`);
      if (r.server_errors) run.problems.push(`${r.server_errors} server errors`);
    }
    const wall = +e.W1 - +e.W0;
    const deliveries = r && wall > 0 ? r.deliveries_per_sec * wall : null;
    run.window_s = wall > 0 ? wall : null;
    if (e.RSS_KIB) run.rss_bytes = +e.RSS_KIB * 1024;
    if (deliveries && e.T0 && e.T1) {
      const [u0, s0] = e.T0.split(" ").map(Number), [u1, s1] = e.T1.split(" ").map(Number);
      const us = (ticks) => ticks / +e.CLK_TCK * 1e6 / deliveries;
      run.cpu_us_user = us(u1 - u0);
      run.cpu_us_system = us(s1 - s0);
      run.cpu_us = run.cpu_us_user + run.cpu_us_system;
      run.cpu_pct_window = ((u1 - u0) + (s1 - s0)) / +e.CLK_TCK / wall * 100;
    } else {
      run.problems.push("no CPU reading over the window");
    }
    // perf stat -x, lines: COUNT,UNIT,EVENT,... (a filtered event is
    // the second sys_enter_write line).
    let text = null;
    try { text = fs.readFileSync(perfFile, "utf8"); } catch (_) {}
    if (text && deliveries) {
      const counts = {};
      let total = null, eventfd = null;
      for (const l of text.split("\n")) {
        const f = l.split(",");
        if (f.length < 3 || l.startsWith("#")) continue;
        const n = Number(f[0]);
        if (!Number.isFinite(n)) continue;
        if (f[2] === "raw_syscalls:sys_enter") { total = n; continue; }
        const m = /^syscalls:sys_enter_(\w+)$/.exec(f[2]);
        if (!m) continue;
        if (m[1] === "write" && counts.write != null) { eventfd = n; continue; }
        counts[m[1]] = n;
      }
      if (total != null) {
        const writeFamily = ["write", "writev", "sendto", "sendmsg", "sendmmsg"];
        const per = (n) => n / deliveries;
        const named = Object.values(counts).reduce((a, b) => a + b, 0);
        if (eventfd != null) counts.write -= eventfd;
        const writes = writeFamily.reduce((a, k) => a + (counts[k] || 0), 0);
        run.syscalls = {
          total: per(total),
          write_family: per(writes),
          not_write: per(total - writes),
          eventfd_write: eventfd == null ? null : per(eventfd),
          by_name: {},
        };
        for (const [k, v] of Object.entries(counts)) if (v > 0) run.syscalls.by_name[k] = per(v);
        if (eventfd) run.syscalls.by_name["write (eventfd)"] = per(eventfd);
        if (total - named > 0) run.syscalls.by_name.other = per(total - named);
        run.syscalls.counts = { total, ...counts, eventfd_write: eventfd };
      }
    }
    if (!run.syscalls) run.problems.push("no syscall counts");
    fs.appendFileSync(out, JSON.stringify(run) + "\n");
  ' "$WORK/$name.json" "$WORK/$name.perf" "$WORK/runs.jsonl"
}

SERVER_LIST=($SERVERS)
for round in $(seq "$ROUNDS"); do
  # Rotate the order, so that no server is always measured first or last.
  n=${#SERVER_LIST[@]}
  for i in $(seq 0 $((n - 1))); do
    server=${SERVER_LIST[$(((i + round - 1) % n))]}
    say "round $round/$ROUNDS: $server, $SUBSCRIBERS subscribers at $RATE msg/s (load $(cut -d' ' -f1 /proc/loadavg))"
    measure "everyday-$server-r$round" "$server" "$round"
  done
done

{
  printf 'export EVERYDAY_STARTED=%q\n' "$STARTED"
  printf 'export EVERYDAY_ELAPSED_S=%q\n' "$(($(date +%s) - RUN_STARTED_S))"
  printf 'export EVERYDAY_LOAD_BEFORE=%q\n' "$LOAD_BEFORE"
  printf 'export EVERYDAY_LOAD_AFTER=%q\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
  printf 'export EVERYDAY_NPROC=%q\n' "$(nproc)"
  printf 'export EVERYDAY_COMMIT=%q\n' "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo ' (with uncommitted changes)')"
  printf 'export EVERYDAY_NODE=%q\n' "$(node --version), ws $(node -p 'require("./bench/baselines/node_modules/ws/package.json").version')"
  printf 'export EVERYDAY_SUBSCRIBERS=%q\n' "$SUBSCRIBERS"
  printf 'export EVERYDAY_RATE=%q\n' "$RATE"
  printf 'export EVERYDAY_SIZE=%q\n' "$SIZE"
  printf 'export EVERYDAY_DURATION=%q\n' "$DURATION"
  printf 'export EVERYDAY_WARMUP=%q\n' "$WARMUP"
  printf 'export EVERYDAY_ROUNDS=%q\n' "$ROUNDS"
  printf 'export EVERYDAY_PERF=%q\n' "$($PERF_OK && "$PERF" --version || echo none)"
} >"$WORK/everyday.env"
rm -rf "$RESULTS_DIR"
mkdir -p "$RESULTS_DIR"
cp "$WORK"/runs.jsonl "$WORK"/everyday.env "$WORK"/*.json "$WORK"/*.txt "$WORK"/*.log "$WORK"/*.cmd \
  "$WORK"/*.perf "$RESULTS_DIR/" 2>/dev/null || true
node bench/everyday-report.js "$RESULTS_DIR" >"$RESULTS_DIR/everyday.md"
if [ "$SPLICE" = 1 ]; then
  node bench/everyday-report.js --splice "$RESULTS_DIR" BENCHMARKS.md
  say "wrote the everyday fan-out section of BENCHMARKS.md (raw results in $RESULTS_DIR)"
else
  say "everyday fan-out: results in $RESULTS_DIR"
fi
cat "$RESULTS_DIR/everyday.md" >&2
if grep -q '"bench failed' "$RESULTS_DIR/runs.jsonl"; then
  say "some everyday measurements failed"
  exit 1
fi
