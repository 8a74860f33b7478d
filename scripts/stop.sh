#!/usr/bin/env bash
# Stops the daphne server, the worker pools and the egress proxy started by scripts/run.sh
# (and the single worker of an install from before the pools, if its pid file is left).
source "$(dirname "$0")/lib.sh"
for name in daphne worker-lifecycle worker-commands worker-terminals worker egress; do
  pidfile="$VSB_DATA_DIR/$name.pid"
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    say "stopped $name ($pid)"
  fi
  rm -f "$pidfile"
done
