#!/usr/bin/env bash
# Runs on a TPU worker (launch.sh starts it detached): runs a command, forwards SIGTERM/SIGINT
# to it (the trainer then saves a checkpoint and exits 75) and records its exit status.
#
#   remote_run.sh RUN_NAME COMMAND...
#
# Writes logs/RUN_NAME.pid (this wrapper) and, when the command ends, logs/RUN_NAME.exit.
set -uo pipefail
name=$1
shift
mkdir -p logs
rm -f "logs/$name.exit"
echo $$ >"logs/$name.pid"
"$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM
trap 'kill -INT "$child" 2>/dev/null' INT
status=0
while :; do
  wait "$child"
  status=$?
  kill -0 "$child" 2>/dev/null || break  # still running: a trapped signal interrupted wait
done
echo "$status" >"logs/$name.exit"
exit "$status"
