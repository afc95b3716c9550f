#!/bin/sh
# Starts, restarts and stops the LLM servers of the tests
# (tests/it/common/llm.rs), and is the daemon's restart command for them,
# as a systemd unit's restart would be: stop the server whose pid is in
# PID_FILE together with its whole process group (vLLM's API server, its
# EngineCore and the worker), even when it is stopped with SIGSTOP; then,
# when a command is given, start it again in a session of its own in the
# background, append one line to RUNS_FILE and write its pid to PID_FILE.
# Usage: restart.sh PID_FILE RUNS_FILE LOG_FILE [COMMAND [ARG...]]
set -eu
pid_file=$1 runs=$2 log=$3
shift 3
if [ -s "$pid_file" ]; then
  old=$(cat "$pid_file")
  # TERM first, as systemd does: vLLM then removes its shared memory and
  # IPC files. CONT, so that a stopped server receives it. What is left
  # after 5 s is killed.
  kill -TERM "-$old" 2>/dev/null || true
  kill -CONT "-$old" 2>/dev/null || true
  waited=0
  # Until the whole group is gone, so that the port is free again.
  while kill -0 "-$old" 2>/dev/null; do
    waited=$((waited + 1))
    if [ "$waited" -eq 50 ]; then kill -KILL "-$old" 2>/dev/null || true; fi
    sleep 0.1
  done
  rm -f "$pid_file"
fi
[ $# -gt 0 ] || exit 0
echo "restart $(date +%s.%N)" >> "$runs"
# setsid: a new session and process group whose id is the server's pid.
setsid "$@" >> "$log" 2>&1 < /dev/null &
echo $! > "$pid_file"
