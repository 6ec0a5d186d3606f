#!/usr/bin/env bash
# Deletes the TPU VM (and its queued resource with QUEUED=1). Checkpoints on gs:// stay;
# everything on the VM's disks (run directories, logs) goes: run collect.sh first.
#
#   tpu_scripts/delete.sh [--dry-run]
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
((${#ARGS[@]} == 0)) || die "unexpected arguments: ${ARGS[*]}"

if [[ $QUEUED == 1 ]]; then
  gc compute tpus queued-resources delete "$QUEUED_NAME" --zone="$ZONE" --force --quiet
else
  gc compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
fi
