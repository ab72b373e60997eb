r"""Memory plan CLI: what a run needs per device, from the compiler, for the slices users have.

  python -m mdpo_jax.plan --config configs/llada8b_countdown_mdpo.py \
      [--slices=v5e-16,v5p-8,v6e-8,8xH100] [--mesh=fsdp=16] [--micro_batches=1,4] \
      [--remat=none,full] [--programs=update,rollout] [--json=plan.json] [--config.k=v ...]

The run's own jitted programs (the SFT step or the RL update, old/reference log-probs, the
rollout and evaluation samplers) are lowered against abstract parameters on a mesh of virtual
CPU devices and compiled; no weight is materialised and no accelerator is needed
(`training/memory_plan.py` says what is counted). One row per (slice × micro-batch × remat):
per-device parameters, optimiser state, reference copy, what each kind of program needs beyond
them, the total (resident + the largest need), the chip's memory and a verdict
(`training/hardware.py`: fits ≤ 90%, tight ≤ 100%, does not fit); then every compiled program
with XLA's figures.

Slices: `--slices` names them (v5e-N, v5p-N (N TensorCores = N/2 chips), v6e-N, NxH100,
NxH200); the mesh is the config's `mesh.*` resolved to the slice's chips, or `--mesh` (e.g.
`fsdp=16`, `data=2,fsdp=8`; its size must be the slice's). `--mesh` alone plans that mesh and
judges it against every chip of the table. The process needs as many CPU devices as the largest
slice has chips: it re-executes itself with `XLA_FLAGS=--xla_force_host_platform_device_count=N`
and `JAX_PLATFORMS=cpu` (set before JAX starts; the planner never uses an accelerator).

Micro-batch: RL `rl.micro_batch` rows; SFT rows per micro-batch (`optim.grad_accum_steps =
data.batch_size / micro-batch`). A compile of an 8B program takes tens of seconds; a whole plan
stays under 1 GB of host memory (README "Memory plan" has the timings).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

from absl import flags
from ml_collections import config_flags

from mdpo_jax import cli
from mdpo_jax import config as config_lib
from mdpo_jax.training import hardware, plan_report

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (a Python file).",
                                          lock_config=True)
_SLICES = flags.DEFINE_list("slices", None, "Slices to plan for (default: "
                            f"{','.join(hardware.DEFAULT_SLICES)}, or every chip at --mesh's "
                            "size when --mesh is given alone).")
_MESH = flags.DEFINE_string("mesh", None, "Mesh axes, e.g. fsdp=16 or data=2,fsdp=8 (default: "
                            "the config's mesh.* on each slice).")
_MICRO = flags.DEFINE_list("micro_batches", None, "Rows per forward/backward to plan (default: "
                           "the config's).")
_REMAT = flags.DEFINE_list("remat", None, "model.remat values to plan (default: the config's).")
_PROGRAMS = flags.DEFINE_list("programs", None, "Programs to compile (default: all of the "
                              "trainer): sft, update, logprobs, rollout, eval.")
_JSON = flags.DEFINE_string("json", None, "Also write every figure to this JSON file.")

_DEVICES_ENV = "MDPO_PLAN_DEVICES"


def _targets() -> tuple[list[hardware.Slice], dict[str, int] | None]:
  """(slices, mesh sizes or None) from --slices / --mesh."""
  mesh = plan_report.parse_mesh(_MESH.value) if _MESH.value else None
  size = None if mesh is None else mesh["data"] * mesh["fsdp"] * mesh["tensor"]
  if _SLICES.value:
    slices = [hardware.parse_slice(s) for s in _SLICES.value]
  elif mesh is not None:
    slices = hardware.slices_of(size)
  else:
    slices = [hardware.parse_slice(s) for s in hardware.DEFAULT_SLICES]
  bad = [s.name for s in slices if size is not None and s.devices != size]
  if bad:
    raise ValueError(f"--mesh={_MESH.value}: uses {size} devices but slice {bad[0]} has "
                     f"{slices[[s.name for s in slices].index(bad[0])].devices} chips; allowed: "
                     "a mesh of each slice's size (or leave --mesh out)")
  return slices, mesh


def _ensure_devices(count: int) -> None:
  """Re-execute this command with `count` virtual CPU devices unless it already has them (XLA
  reads the flag once, when JAX starts its backend)."""
  if os.environ.get(_DEVICES_ENV) == str(count):
    return
  xla = re.sub(r"--xla_force_host_platform_device_count=\S+", "",
               os.environ.get("XLA_FLAGS", "")).strip()
  env = dict(os.environ, JAX_PLATFORMS="cpu", **{_DEVICES_ENV: str(count)},
             XLA_FLAGS=f"{xla} --xla_force_host_platform_device_count={count}".strip())
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, "-m", "mdpo_jax.plan", *sys.argv[1:]], env)


def _ints(values, name: str) -> list[int]:
  if not all(re.fullmatch(r"[1-9]\d*", v.strip()) for v in values):
    raise ValueError(f"--{name}={','.join(values)}: allowed: comma-separated positive integers")
  return [int(v) for v in values]


def main(argv):
  del argv
  slices, mesh_sizes = _targets()
  _ensure_devices(max(s.devices for s in slices))
  config = config_lib.parse(cli.config_value(_CONFIG))
  micro = _ints(_MICRO.value, "micro_batches") if _MICRO.value else [None]
  remats = list(_REMAT.value) if _REMAT.value else [None]
  programs = plan_report.check_programs(config, _PROGRAMS.value)
  started = time.perf_counter()
  rows = plan_report.run_grid(config, slices, mesh_sizes, micro, remats, programs)
  seconds = time.perf_counter() - started
  print(plan_report.report(config, rows, seconds))
  if _JSON.value:
    with open(_JSON.value, "w", encoding="utf-8") as f:
      json.dump(plan_report.to_json(config, rows, seconds), f, indent=1)


if __name__ == "__main__":
  cli.run(main, required=["config"])
