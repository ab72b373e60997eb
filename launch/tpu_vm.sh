#!/usr/bin/env bash
# Run a command on every worker of a TPU VM slice (single host or pod), from your workstation.
#
#   launch/tpu_vm.sh TPU_NAME ZONE "python -m mdpo_jax.train --config configs/llada8b_sft.py \
#       --workdir gs://BUCKET/run --config.model.hf_checkpoint=/data/LLaDA-8B-Instruct"
#
# Every worker must run the same command: jax.distributed discovers the slice by itself
# (mdpo_jax.parallel.initialize_distributed). The repo is synced to ~/mdpo_jax on each worker
# and installed with the TPU extra on first use.
#
# DRY_RUN=1 prints the two gcloud commands instead of running them; COMPILE_CACHE=gs://BUCKET/dir
# gives every worker JAX's persistent compilation cache (launch/common.sh).
set -euo pipefail
name=${1:?TPU name}; zone=${2:?zone}; cmd=${3:?command}
repo=$(cd "$(dirname "$0")/.." && pwd)
. "$repo/launch/common.sh"
cache=""
if [ -n "${COMPILE_CACHE:-}" ]; then cache="export JAX_COMPILATION_CACHE_DIR=$COMPILE_CACHE"; fi
run gcloud compute tpus tpu-vm scp --recurse --worker=all --zone "$zone" "$repo" "$name":~/
run gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "
  set -e; cd ~/$(basename "$repo")
  [ -d .venv ] || (python3 -m venv .venv && . .venv/bin/activate && pip install -q -e '.[tpu]')
  . .venv/bin/activate
  export TPU_STDERR_LOG_LEVEL=0 TPU_MIN_LOG_LEVEL=0
  $cache
  $cmd"
