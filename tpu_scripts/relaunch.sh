#!/usr/bin/env bash
# Runs a config to the end through preemptions: (re)creates the TPU VM when it is missing or
# was preempted, sets it up, launches, follows; a run stopped by SIGTERM (preemption notice)
# or lost with its VM is launched again and resumes from its last checkpoint (the trainer
# does that by itself with train.resume=auto, the default).
#
#   tpu_scripts/relaunch.sh [--dry-run] CONFIG [KEY=VALUE ...]
#
# Environment (plus TPU_NAME, TPU_TYPE, ZONE, SPOT, QUEUED, ... from tpu_scripts/common.sh and
# setup.sh's JAX_VERSION, MODELS, HF_TOKEN):
#   CHECKPOINT_DIR    required, gs://BUCKET/...: checkpoints must outlive the VM
#                     (ALLOW_LOCAL_CHECKPOINTS=1 accepts a path on the VM's disk)
#   RUN_NAME          default: CONFIG's file name without .yaml
#   MAX_FAILURES      consecutive failed attempts on a healthy VM before giving up (default 3)
#   MAX_ATTEMPTS      attempts in all (default 50)
#   COLLECT_DIR       after every attempt, copy the run directory and logs to
#                     COLLECT_DIR/attempt-N (default: tpu_runs/RUN_NAME; "" skips)
#   DELETE_WHEN_DONE  1: delete the TPU VM once the run has finished (default 0)
#   SETUP_ON_READY    1: run setup.sh even when the VM already exists and is READY (default 0)
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
((${#ARGS[@]} >= 1)) || die "usage: relaunch.sh [--dry-run] CONFIG [KEY=VALUE ...]"
config=${ARGS[0]}
overrides=("${ARGS[@]:1}")
[[ -f $STJAX_REPO/$config ]] || die "$config: not found in $STJAX_REPO (give a path relative to the checkout)"
: "${RUN_NAME:=$(basename "$config" .yaml)}"
: "${MAX_FAILURES:=3}"
: "${MAX_ATTEMPTS:=50}"
: "${COLLECT_DIR=tpu_runs/$RUN_NAME}"
: "${DELETE_WHEN_DONE:=0}"
: "${SETUP_ON_READY:=0}"
[[ -n ${CHECKPOINT_DIR:-} ]] || die "set CHECKPOINT_DIR (gs://BUCKET/stjax/$RUN_NAME): a preempted VM loses its disk"
if [[ $CHECKPOINT_DIR != gs://* && ${ALLOW_LOCAL_CHECKPOINTS:-0} != 1 ]]; then
  die "CHECKPOINT_DIR=$CHECKPOINT_DIR is not on gs://; a re-created VM would start from scratch (ALLOW_LOCAL_CHECKPOINTS=1 to accept)"
fi
overrides+=("checkpoint.dir=$CHECKPOINT_DIR" "train.resume=auto")
here=$(dirname "$0")
flags=()
[[ $DRY_RUN == 1 ]] && flags+=(--dry-run)

recreate() {
  if [[ $1 != MISSING ]]; then
    log "TPU $TPU_NAME is $1: deleting it"
    "$here/delete.sh" "${flags[@]}"
  fi
  "$here/create.sh" "${flags[@]}"
  "$here/setup.sh" "${flags[@]}"
}

failures=0
for ((attempt = 1; attempt <= MAX_ATTEMPTS; attempt++)); do
  tpu_state
  log "attempt $attempt: TPU $TPU_NAME is $TPU_STATE"
  case "$TPU_STATE" in
    READY) [[ $SETUP_ON_READY == 1 && $attempt == 1 ]] && "$here/setup.sh" "${flags[@]}" ;;
    CREATING | STARTING | PROVISIONING | WAITING_FOR_RESOURCES | ACCEPTED | RESTARTING | REPAIRING)
      wait_ready ;;
    *) recreate "$TPU_STATE" ;;
  esac
  status=0
  launch_run "$RUN_NAME" stjax.train "$config" "${overrides[@]}" || status=$?
  if ((status == 0)); then
    follow_run "$RUN_NAME" || true
  else
    RUN_RESULT=lost
  fi
  if [[ -n $COLLECT_DIR && $RUN_RESULT != lost ]]; then
    collect_run "$RUN_NAME" "$COLLECT_DIR/attempt-$attempt" || log "could not collect attempt $attempt"
  fi
  case "$RUN_RESULT" in
    finished)
      log "$RUN_NAME finished (attempt $attempt)"
      [[ $DELETE_WHEN_DONE == 1 ]] && "$here/delete.sh" "${flags[@]}"
      exit 0 ;;
    stopped)
      failures=0
      log "$RUN_NAME stopped by SIGTERM (preemption or maintenance): relaunching" ;;
    *)
      tpu_state
      if [[ $TPU_STATE == READY ]]; then
        failures=$((failures + 1))
        log "$RUN_NAME $RUN_RESULT on a READY TPU ($failures/$MAX_FAILURES); see its log"
        ((failures < MAX_FAILURES)) || die "giving up after $failures failures in a row"
      else
        failures=0
        log "$RUN_NAME $RUN_RESULT and TPU $TPU_STATE: preempted; relaunching"
      fi ;;
  esac
  [[ $DRY_RUN == 1 ]] || sleep "${POLL_S:-30}"
done
die "no finished run after $MAX_ATTEMPTS attempts"
