# Shared by the bench scripts (sourced, not run): starting and stopping the
# servers they measure.

# stop_pid PID: TERM, then KILL if it is still there after 10 s; reaps it.
stop_pid() {
  local pid=$1
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 200); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# listening_port FILE PID: the port of the server's first line
# ("switchboard listening on http://ADDR:PORT") in FILE, waiting up to 10 s
# for it to be written; fails if PID exits first or the time runs out.
listening_port() {
  local file=$1 pid=$2 port
  for _ in $(seq 200); do
    port=$(sed -n 's|.*listening on [a-z]*://[^ ]*:\([0-9][0-9]*\).*|\1|p' "$file" | head -n1)
    if [ -n "$port" ]; then
      echo "$port"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}
