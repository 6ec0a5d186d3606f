#!/usr/bin/env bash
# Launches a config on every worker of the TPU VM (detached: closing this terminal does not
# stop it) and streams worker 0's log until it ends.
#
#   tpu_scripts/launch.sh [--dry-run] [--no-follow] [--module MODULE] CONFIG [KEY=VALUE ...]
#
#   CONFIG         a path relative to the checkout, e.g. configs/llama31_8b_sst2_pact.yaml
#   KEY=VALUE      config overrides, e.g. train.batch_size=32 (see docs/tpu.md for the
#                  per-topology ones)
#   --module M     stjax.train (default) or stjax.safety_tokens
#   --no-follow    return once started (FOLLOW=0); stream later with logs.sh
#
# Environment (plus TPU_NAME, ZONE, ... from tpu_scripts/common.sh):
#   RUN_NAME         log and run name (default: CONFIG's file name without .yaml)
#   CHECKPOINT_DIR   adds checkpoint.dir=CHECKPOINT_DIR, e.g. gs://BUCKET/stjax/RUN_NAME (needed
#                    on multi-host slices, whose workers must share it, and to survive preemption)
#
# Exit status: the run's (worker 0), when followed.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
: "${FOLLOW:=1}"
module=stjax.train
rest=()
set -- "${ARGS[@]}"
while (($#)); do
  case "$1" in
    --no-follow) FOLLOW=0 ;;
    --module) module=${2:?--module needs a value}; shift ;;
    *) rest+=("$1") ;;
  esac
  shift
done
((${#rest[@]} >= 1)) || die "usage: launch.sh [--dry-run] [--no-follow] [--module M] CONFIG [KEY=VALUE ...]"
config=${rest[0]}
overrides=("${rest[@]:1}")
[[ -f $STJAX_REPO/$config ]] || die "$config: not found in $STJAX_REPO (give a path relative to the checkout)"
: "${RUN_NAME:=$(basename "$config" .yaml)}"
[[ -n ${CHECKPOINT_DIR:-} ]] && overrides+=("checkpoint.dir=$CHECKPOINT_DIR")

log "launching $config as '$RUN_NAME' on every worker of $TPU_NAME"
launch_run "$RUN_NAME" "$module" "$config" "${overrides[@]}"
if [[ $FOLLOW == 1 ]]; then
  follow_run "$RUN_NAME"
else
  log "started; stream the log with: RUN_NAME=$RUN_NAME tpu_scripts/logs.sh"
fi
