#!/bin/sh
# The restart command of the MLServer test, as a systemd unit's restart
# would be: kill the server whose pid is in PID_FILE (even when it is
# stopped with SIGSTOP), then start MLServer again on MODEL_DIR in the
# background and write its pid. Each run appends one line to RUNS_FILE.
# Usage: restart.sh MLSERVER_BIN MODEL_DIR PID_FILE RUNS_FILE
set -eu
bin=$1 dir=$2 pid_file=$3 runs=$4
if [ -s "$pid_file" ]; then
  old=$(cat "$pid_file")
  kill -9 "$old" 2>/dev/null || true
  # Wait until the old server is gone, so the ports are free again.
  while kill -0 "$old" 2>/dev/null; do sleep 0.1; done
fi
echo "restart $(date +%s.%N)" >> "$runs"
cd "$dir"
setsid "$bin" start . >> "$dir/mlserver.log" 2>&1 < /dev/null &
echo $! > "$pid_file"
