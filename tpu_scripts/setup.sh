#!/usr/bin/env bash
# Sets up every worker: stjax (a wheel built from this checkout, with the `tpu` extra and a
# pinned jax), the configs, the shared data files and the models.
#
#   tpu_scripts/setup.sh [--dry-run]
#
# Environment (plus TPU_NAME, ZONE, ... from tpu_scripts/common.sh):
#   JAX_VERSION    jax[tpu] version to pin (default: 0.10.2, the version stjax is tested with)
#   STJAX_VERSION  expected stjax version (default: the version in pyproject.toml); the wheel
#                  built from this checkout must carry it
#   DATA_DIR       local directory copied to $REMOTE_DIR/shared/data on every worker
#                  (default: ../shared/data next to the checkout; skipped when absent)
#   MODELS         Hugging Face repos to download into every worker's Hugging Face cache, where
#                  the configs' Hub ids find them offline (default: the Llama 3.1 8B pair; Qwen:
#                  "Qwen/Qwen2.5-7B-Instruct Qwen/Qwen2.5-7B"; MODELS="" skips). Only the files
#                  stjax reads are fetched (safetensors, config, tokenizer, generation config).
#   HF_TOKEN       passed to the downloads (Llama is gated: accept its licence on the Hub first);
#                  masked in printed commands
#   PYTHON         remote python (default: python3); packages go to its --user site
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
((${#ARGS[@]} == 0)) || die "unexpected arguments: ${ARGS[*]}"

: "${JAX_VERSION:=0.10.2}"
: "${STJAX_VERSION:=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$STJAX_REPO/pyproject.toml")}"
: "${DATA_DIR:=$STJAX_REPO/../shared/data}"
: "${MODELS=meta-llama/Llama-3.1-8B-Instruct meta-llama/Llama-3.1-8B}"
: "${PYTHON:=python3}"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
wheel="stjax-$STJAX_VERSION-py3-none-any.whl"

log "building $wheel and the file bundle in $stage"
run python3 -m pip wheel --quiet --no-deps --wheel-dir "$stage" "$STJAX_REPO"
if [[ $DRY_RUN != 1 && ! -f $stage/$wheel ]]; then
  die "the wheel built from $STJAX_REPO is not $wheel (got: $(ls "$stage")); set STJAX_VERSION"
fi
run tar -czf "$stage/stjax-files.tgz" -C "$STJAX_REPO" configs tpu_scripts/remote_run.sh
uploads=("$stage/$wheel" "$stage/stjax-files.tgz")
if [[ -d $DATA_DIR || $DRY_RUN == 1 ]]; then
  run tar -czf "$stage/shared-data.tgz" -C "$DATA_DIR" .
  uploads+=("$stage/shared-data.tgz")
else
  log "no $DATA_DIR: skipping the shared data (configs that read ../shared/data will not find it)"
fi

tpu_ssh all "mkdir -p $REMOTE_DIR/stjax/logs $REMOTE_DIR/shared/data $REMOTE_DIR/models"
gc compute tpus tpu-vm scp "${uploads[@]}" "$TPU_NAME:$REMOTE_DIR/" --zone="$ZONE" --worker=all

install="cd $REMOTE_DIR && tar -xzf stjax-files.tgz -C stjax"
[[ ${#uploads[@]} == 3 ]] && install+=" && tar -xzf shared-data.tgz -C shared/data"
install+=" && $PYTHON -m pip install --user --quiet --upgrade pip"
install+=" && $PYTHON -m pip install --user --quiet './${wheel}[tpu]' 'jax[tpu]==$JAX_VERSION' gcsfs"
install+=" && $PYTHON -c 'import jax, stjax; print(jax.__version__, jax.device_count(), \"devices\")'"
tpu_ssh all "$install"

for repo in $MODELS; do
  fetch="from stjax.hub import local_dir; print(local_dir('$repo'))"
  tpu_ssh all "cd $REMOTE_DIR && ${HF_TOKEN:+HF_TOKEN=$HF_TOKEN }$PYTHON -c \"$fetch\""
done
log "workers ready: stjax $STJAX_VERSION, jax[tpu] $JAX_VERSION, models: ${MODELS:-none}"
