# shellcheck shell=bash
# Shared by the tpu_scripts: settings, --dry-run, gcloud wrappers. Sourced, never run.
#
# Settings (environment variables; every script reads the same ones):
#   TPU_NAME          TPU VM name (default: stjax-tpu); a queued resource is named $TPU_NAME-qr
#   TPU_TYPE          v4-8 | v5e-8 | v5p-8 | v6e-8 | any <family>-<cores or chips> (default: v5e-8)
#   ACCELERATOR_TYPE  gcloud's name, derived from TPU_TYPE (v5e-8 -> v5litepod-8, others as is)
#   ZONE              default per family: v4 us-central2-b, v5e us-west4-a, v5p us-east5-a,
#                     v6e us-east5-b (check your quota; any zone that offers the type works)
#   PROJECT           GCP project (default: gcloud's configured project)
#   RUNTIME_VERSION   TPU VM image, default per family: v4 tpu-ubuntu2204-base,
#                     v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
#   SPOT=1            spot capacity (cheapest; can be preempted at any time)
#   PREEMPTIBLE=1     legacy preemptible TPU VM (create.sh only; not with QUEUED=1)
#   QUEUED=1          create through a queued resource (waits for capacity instead of failing)
#   REMOTE_DIR        working directory on every worker, relative to the home directory
#                     (default: stjax-work; holds stjax/ with configs, runs and logs,
#                     shared/data/ and models/, the layout the configs' relative paths expect)
#   DRY_RUN=1         print the gcloud (and local build) commands instead of running them;
#                     the same as the --dry-run flag every script accepts
#   DRY_RUN_STATES    dry runs only: the TPU states relaunch.sh reads, in turn (default:
#                     READY), e.g. "MISSING READY PREEMPTED"; the last one repeats
#   DRY_RUN_RESULTS   dry runs only: how each launched run ends, in turn: finished | stopped |
#                     failed (default: finished)

# shellcheck disable=SC2034  # used by the scripts that source this file
STJAX_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

: "${TPU_NAME:=stjax-tpu}"
: "${TPU_TYPE:=v5e-8}"
: "${REMOTE_DIR:=stjax-work}"
: "${DRY_RUN:=0}"
: "${SPOT:=0}"
: "${PREEMPTIBLE:=0}"
: "${QUEUED:=0}"

die() {
  echo "$(basename "$0"): error: $*" >&2
  exit 2
}

log() {
  echo "[$(basename "$0") $(date +%H:%M:%S)] $*" >&2
}

usage() {  # the comment block at the top of the calling script
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
}

# parse_common_flags "$@": handles --dry-run and -h/--help; the rest is left in ARGS.
parse_common_flags() {
  ARGS=()
  while (($#)); do
    case "$1" in
      --dry-run) DRY_RUN=1 ;;
      -h | --help) usage; exit 0 ;;
      *) ARGS+=("$1") ;;
    esac
    shift
  done
  derive_settings
}

tpu_family() {  # v5e-8 -> v5e; v5litepod-8 -> v5e
  local family=${TPU_TYPE%%-*}
  [[ $family == v5litepod ]] && family=v5e
  echo "$family"
}

derive_settings() {
  local family
  family=$(tpu_family)
  case "$family" in
    v4) : "${ZONE:=us-central2-b}" "${RUNTIME_VERSION:=tpu-ubuntu2204-base}" ;;
    v5e) : "${ZONE:=us-west4-a}" "${RUNTIME_VERSION:=v2-alpha-tpuv5-lite}" ;;
    v5p) : "${ZONE:=us-east5-a}" "${RUNTIME_VERSION:=v2-alpha-tpuv5}" ;;
    v6e) : "${ZONE:=us-east5-b}" "${RUNTIME_VERSION:=v2-alpha-tpuv6e}" ;;
    *) die "TPU_TYPE=$TPU_TYPE: unknown family '$family' (expected v4, v5e, v5p or v6e)" ;;
  esac
  if [[ -z ${ACCELERATOR_TYPE:-} ]]; then
    if [[ $family == v5e ]]; then
      ACCELERATOR_TYPE="v5litepod-${TPU_TYPE##*-}"
    else
      ACCELERATOR_TYPE=$TPU_TYPE
    fi
  fi
  QUEUED_NAME="$TPU_NAME-qr"
}

quote() {  # shell words, quoted only where needed, for readable and re-runnable output
  local out=() word
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      out+=("$word")
    else
      out+=("'${word//\'/\'\\\'\'}'")
    fi
  done
  echo "${out[*]}"
}

print_cmd() {  # "+ command" on stdout (dry run) or stderr; secrets masked
  local line
  line=$(quote "$@")
  if [[ -n ${HF_TOKEN:-} ]]; then
    line=${line//"$HF_TOKEN"/***}
  fi
  if [[ $DRY_RUN == 1 ]]; then
    echo "+ $line"
  else
    echo "+ $line" >&2
  fi
}

run() {  # a local command, printed; skipped in dry runs
  print_cmd "$@"
  [[ $DRY_RUN == 1 ]] && return 0
  "$@"
}

gc() {  # gcloud with the project flag; printed; skipped in dry runs
  local args=("$@")
  [[ -n ${PROJECT:-} ]] && args+=("--project=$PROJECT")
  print_cmd gcloud "${args[@]}"
  [[ $DRY_RUN == 1 ]] && return 0
  gcloud "${args[@]}"
}

tpu_ssh() {  # tpu_ssh WORKER COMMAND: run COMMAND on one worker (0, 1, ...) or on all
  gc compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker="$1" --command="$2"
}

# tpu_state: sets TPU_STATE to READY, CREATING, PREEMPTED, TERMINATED, FAILED, MISSING, ...
# (a queued resource's ACTIVE reads READY; SUSPENDED and FAILED read PREEMPTED).
tpu_state() {
  if [[ $DRY_RUN == 1 ]]; then
    local states
    read -r -a states <<<"${DRY_RUN_STATES:-READY}"
    TPU_STATE=${states[0]}
    if ((${#states[@]} > 1)); then
      DRY_RUN_STATES=${states[*]:1}
    fi
    echo "# state: $TPU_STATE"
    return 0
  fi
  local value
  if [[ $QUEUED == 1 ]]; then
    if ! value=$(gcloud compute tpus queued-resources describe "$QUEUED_NAME" --zone="$ZONE" \
      ${PROJECT:+"--project=$PROJECT"} --format='value(state.state)' 2>/dev/null); then
      TPU_STATE=MISSING
      return 0
    fi
    case "$value" in
      ACTIVE) TPU_STATE=READY ;;
      SUSPENDED | SUSPENDING | FAILED) TPU_STATE=PREEMPTED ;;
      *) TPU_STATE=$value ;;
    esac
  elif ! TPU_STATE=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" \
    ${PROJECT:+"--project=$PROJECT"} --format='value(state)' 2>/dev/null); then
    TPU_STATE=MISSING
  fi
  [[ -n $TPU_STATE ]] || TPU_STATE=MISSING
}

wait_ready() {  # polls until READY; fails on a state that will not become READY
  if [[ $DRY_RUN == 1 ]]; then
    echo "# (waits until $TPU_NAME is READY)"
    return 0
  fi
  local timeout=${READY_TIMEOUT_S:-7200} start=$SECONDS
  while :; do
    tpu_state
    case "$TPU_STATE" in
      READY) return 0 ;;
      PREEMPTED | TERMINATED | FAILED | MISSING) die "TPU $TPU_NAME is $TPU_STATE" ;;
    esac
    ((SECONDS - start < timeout)) || die "TPU $TPU_NAME not READY after ${timeout}s (state $TPU_STATE)"
    log "TPU $TPU_NAME is $TPU_STATE; waiting"
    sleep "${POLL_S:-30}"
  done
}

# launch_run RUN_NAME MODULE CONFIG [OVERRIDES...]: starts `python3 -m MODULE --config CONFIG
# OVERRIDES` detached on every worker (all of them must run it: JAX joins them into one run),
# each logging to $REMOTE_DIR/stjax/logs/RUN_NAME.<hostname>.log. Refuses when that run is
# still going on a worker.
launch_run() {
  local name=$1 module=$2 config=$3
  shift 3
  local command
  command=$(quote "${PYTHON:-python3}" -u -m "$module" --config "$config" "$@")
  local remote="cd $REMOTE_DIR/stjax && mkdir -p logs"
  remote+=" && if [ -f logs/$name.pid ] && kill -0 \"\$(cat logs/$name.pid)\" 2>/dev/null; then"
  remote+=" echo \"run $name is already running on \$(hostname)\" >&2; exit 3; fi"
  remote+=" && rm -f logs/$name.pid logs/$name.exit"
  remote+=" && (setsid nohup bash tpu_scripts/remote_run.sh $name $command"
  remote+=" >>logs/$name.\$(hostname).log 2>&1 </dev/null &)"
  tpu_ssh all "$remote"
}

# follow_run RUN_NAME [WORKER]: streams a worker's log (default 0) until the run ends; the last
# line says `stjax-run: RUN_NAME finished|stopped|failed (exit N)`, the exit status is N.
# Sets RUN_RESULT (finished, stopped, failed, or lost when the worker cannot be reached).
follow_run() {
  local name=$1 worker=${2:-0}
  local remote="cd $REMOTE_DIR/stjax"
  remote+=" && while [ ! -f logs/$name.pid ]; do sleep 2; done"
  remote+=" && tail -n +1 -F --pid=\"\$(cat logs/$name.pid)\" logs/$name.*.log"
  remote+="; status=\$(cat logs/$name.exit 2>/dev/null || echo 255)"
  remote+="; if [ \"\$status\" = 75 ]; then result=stopped"  # stjax train: SIGTERM, checkpoint saved
  remote+="; elif [ \"\$status\" != 0 ]; then result=failed"
  remote+="; else result=finished; fi"
  remote+="; echo \"stjax-run: $name \$result (exit \$status)\"; exit \"\$status\""
  if [[ $DRY_RUN == 1 ]]; then
    tpu_ssh "$worker" "$remote"
    local results
    read -r -a results <<<"${DRY_RUN_RESULTS:-finished}"
    RUN_RESULT=${results[0]}
    if ((${#results[@]} > 1)); then
      DRY_RUN_RESULTS=${results[*]:1}
    fi
    echo "stjax-run: $name $RUN_RESULT (dry run)"
    return 0
  fi
  local out status=0
  out=$(mktemp)
  tpu_ssh "$worker" "$remote" | tee "$out" || status=$?
  RUN_RESULT=$(sed -n 's/^stjax-run: [^ ]* \([a-z]*\) (exit .*/\1/p' "$out" | tail -n 1)
  rm -f "$out"
  [[ -n $RUN_RESULT ]] || RUN_RESULT=lost
  return "$status"
}

# collect_run RUN_NAME DEST: worker 0's run directory and every worker's log, into DEST.
collect_run() {
  local name=$1 dest=$2 run_dir=${3:-runs/$1}
  run mkdir -p "$dest/logs"
  gc compute tpus tpu-vm scp --recurse "$TPU_NAME:$REMOTE_DIR/stjax/$run_dir" "$dest/" \
    --zone="$ZONE" --worker=0
  gc compute tpus tpu-vm scp "$TPU_NAME:$REMOTE_DIR/stjax/logs/$name.*.log" "$dest/logs/" \
    --zone="$ZONE" --worker=all
}
