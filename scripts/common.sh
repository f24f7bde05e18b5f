# scripts/common.sh: shell helpers shared by the benchmark scripts.
# Sourced, not run.

# stop_pid PID: SIGTERM, then SIGKILL (with whatever it forked, such as
# nginx workers) if it is still alive after 5 s; reaps it.
stop_pid() {
  local pid="$1" i
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    pkill -KILL -P "$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# show_log NAME: print a server's log (the file LOGF[NAME] names), indented,
# through the caller's `log`.
show_log() { # show_log NAME: print a server's log, indented
  local f="${LOGF[$1]:-}"
  if [[ -n "$f" && -s "$f" ]]; then
    log "log of $1 ($f):"
    sed 's/^/    /' "$f" >&2 || true
  else
    log "log of $1 is empty${f:+ ($f)}"
  fi
}
