#!/usr/bin/env bash
# Stops a run on every worker the way a preemption would: SIGTERM, so the trainer saves a
# checkpoint at the next step boundary and exits 75. Relaunching the same config resumes it.
#
#   tpu_scripts/stop.sh [--dry-run] [RUN_NAME]
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
((${#ARGS[@]} <= 1)) || die "unexpected arguments: ${ARGS[*]:1}"
((${#ARGS[@]} == 0)) || RUN_NAME=${ARGS[0]}
[[ -n ${RUN_NAME:-} ]] || die "which run? give RUN_NAME (the config's file name without .yaml)"
tpu_ssh all "cd $REMOTE_DIR/stjax && if [ -f logs/$RUN_NAME.pid ]; then kill -TERM \"\$(cat logs/$RUN_NAME.pid)\" 2>/dev/null || true; fi"
log "SIGTERM sent to $RUN_NAME on every worker; follow it with: tpu_scripts/logs.sh $RUN_NAME"
