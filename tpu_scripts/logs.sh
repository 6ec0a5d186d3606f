#!/usr/bin/env bash
# Streams a run's log from a worker (default 0) until the run ends; --collect copies worker
# 0's run directory and every worker's log back instead.
#
#   tpu_scripts/logs.sh [--dry-run] [--worker N] [--collect DEST] [RUN_NAME]
#
#   RUN_NAME       default: $RUN_NAME
#   --collect D    copy runs/RUN_NAME (metrics.jsonl, config.yaml, tensorboard/, adapter/ ...)
#                  from worker 0 and logs/RUN_NAME.*.log from all workers into D
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
worker=0
dest=
set -- "${ARGS[@]}"
while (($#)); do
  case "$1" in
    --worker) worker=${2:?--worker needs a value}; shift ;;
    --collect) dest=${2:?--collect needs a directory}; shift ;;
    *) RUN_NAME=$1 ;;
  esac
  shift
done
[[ -n ${RUN_NAME:-} ]] || die "which run? give RUN_NAME (the config's file name without .yaml)"
if [[ -n $dest ]]; then
  collect_run "$RUN_NAME" "$dest"
else
  follow_run "$RUN_NAME" "$worker"
fi
