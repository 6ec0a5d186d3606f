#!/usr/bin/env bash
# Creates the TPU VM (or a queued resource with QUEUED=1) and waits until it is READY.
#
#   tpu_scripts/create.sh [--dry-run]
#
# Reads TPU_NAME, TPU_TYPE (v4-8, v5e-8, v5p-8, v6e-8, ...), ZONE, PROJECT, RUNTIME_VERSION,
# SPOT=1, PREEMPTIBLE=1, QUEUED=1 (see tpu_scripts/common.sh for defaults). Examples:
#
#   TPU_TYPE=v5e-8 SPOT=1 tpu_scripts/create.sh
#   TPU_TYPE=v5p-8 QUEUED=1 SPOT=1 ZONE=us-east5-a tpu_scripts/create.sh --dry-run
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
((${#ARGS[@]} == 0)) || die "unexpected arguments: ${ARGS[*]}"

capacity=()
[[ $SPOT == 1 ]] && capacity+=(--spot)
if [[ $PREEMPTIBLE == 1 ]]; then
  [[ $QUEUED == 1 ]] && die "PREEMPTIBLE=1 is for TPU VMs; queued resources take SPOT=1"
  capacity+=(--preemptible)
fi

log "creating $ACCELERATOR_TYPE '$TPU_NAME' in $ZONE (runtime $RUNTIME_VERSION${capacity[*]:+, ${capacity[*]}})"
if [[ $QUEUED == 1 ]]; then
  gc compute tpus queued-resources create "$QUEUED_NAME" --zone="$ZONE" --node-id="$TPU_NAME" \
    --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" "${capacity[@]}"
else
  gc compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR_TYPE" \
    --version="$RUNTIME_VERSION" "${capacity[@]}"
fi
wait_ready
log "TPU $TPU_NAME is READY"
