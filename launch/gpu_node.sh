#!/usr/bin/env bash
# Run a command on a CUDA node (all local GPUs form the mesh). Multi-node: launch one process
# per node with JAX_COORDINATOR_ADDRESS=host:port JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i set
# (or under SLURM, where jax.distributed discovers them).
#
#   launch/gpu_node.sh python -m mdpo_jax.train --config configs/llada8b_sft.py --workdir /runs/x
#
# DRY_RUN=1 prints the command instead of running it; COMPILE_CACHE=DIR keeps compiled programs
# across restarts (launch/common.sh). Under SLURM: launch/slurm_gpu.sbatch.
set -euo pipefail
cd "$(dirname "$0")/.."
. launch/common.sh
if [ -z "${DRY_RUN:-}" ]; then
  [ -d .venv ] || (python3 -m venv .venv && . .venv/bin/activate && pip install -q -e ".[cuda]")
  . .venv/bin/activate
fi
# Let XLA overlap collectives with compute and keep 10% of memory for the runtime.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
cache=()
if [ -n "${JAX_COMPILATION_CACHE_DIR:-}" ]; then cache=("JAX_COMPILATION_CACHE_DIR=$JAX_COMPILATION_CACHE_DIR"); fi
run env XLA_PYTHON_CLIENT_MEM_FRACTION="$XLA_PYTHON_CLIENT_MEM_FRACTION" XLA_FLAGS="$XLA_FLAGS" \
  ${cache[@]+"${cache[@]}"} "$@"
