"""The memory planner's grid and tables: one plan per (slice × micro-batch × remat), a verdict
per row against the slice's chip, and the compiled programs behind them (`python -m
mdpo_jax.plan`; the accounting is `memory_plan`'s, the chips `hardware`'s)."""

from __future__ import annotations

import dataclasses
import re
import sys

import jax

from mdpo_jax import config as config_lib
from mdpo_jax import parallel
from mdpo_jax.training import hardware, memory_plan

_KINDS = {False: ("sft", "eval"), True: ("update", "logprobs", "rollout", "eval")}


@dataclasses.dataclass(frozen=True)
class Row:
  slice: hardware.Slice
  config: config_lib.RunConfig    # the planned variant (micro-batch, remat)
  plan: memory_plan.Plan

  @property
  def verdict(self) -> str:
    return hardware.verdict(self.plan.total, self.slice.hbm_bytes)


def parse_mesh(text: str) -> dict[str, int]:
  """`--mesh`: `fsdp=16` / `data=2,fsdp=8,tensor=1` → sizes of all three axes (unnamed: 1)."""
  sizes = dict.fromkeys(parallel.MESH_AXES, 1)
  for entry in text.split(","):
    name, _, value = entry.strip().partition("=")
    if name not in parallel.MESH_AXES or not re.fullmatch(r"[1-9]\d*", value.strip()):
      raise ValueError(f"--mesh={text}: {entry.strip()!r} is not axis=size; allowed: "
                       "comma-separated data|fsdp|tensor=N with N ≥ 1")
    sizes[name] = int(value)
  return sizes


# Trainers whose programs the planner cannot build yet, and why.
PLAN_UNSUPPORTED = {
    "cogrpo": "its rollouts use the scheduled sampler and its rows hold every step ([N, S, L])",
    "ilm": "the insertion model's step and while-loop sampler are not modelled",
}


def check_programs(config: config_lib.RunConfig, names) -> tuple[str, ...]:
  """The program kinds to compile: `names`, each one the trainer has (default: all of them)."""
  if config.trainer in PLAN_UNSUPPORTED:
    raise ValueError(f"trainer={config.trainer!r}: the memory planner does not model it yet "
                     f"({PLAN_UNSUPPORTED[config.trainer]}); allowed: another trainer")
  allowed = _KINDS[config.is_rl]
  if not names:
    return allowed
  bad = [n for n in names if n not in allowed]
  if bad:
    raise ValueError(f"--programs={','.join(names)}: {bad[0]!r} is not a program of "
                     f"trainer={config.trainer!r}; allowed: {','.join(allowed)}")
  return tuple(names)


def _mesh(config: config_lib.RunConfig, devices: list, sizes: dict[str, int] | None):
  """The slice's mesh: `sizes` (--mesh), or the config's mesh.* resolved to the devices."""
  if sizes is None:
    sizes = {"data": config.mesh.data, "fsdp": config.mesh.fsdp, "tensor": config.mesh.tensor}
  return parallel.make_mesh(**sizes, devices=devices)


def _variant(config: config_lib.RunConfig, micro_batch, remat) -> config_lib.RunConfig:
  try:
    return memory_plan.variant(config, micro_batch=micro_batch, remat=remat)
  except ValueError as e:
    given = [f"--micro_batches={micro_batch}"] * (micro_batch is not None)
    given += [f"--remat={remat}"] * (remat is not None)
    raise ValueError(f"{' '.join(given)}: {e}" if given else str(e)) from e


def run_grid(config: config_lib.RunConfig, slices, mesh_sizes, micro_batches, remats,
             programs, *, log=sys.stderr) -> list[Row]:
  """One `Row` per slice × micro-batch × remat (None: the config's), programs compiled once
  per distinct mesh and setting they depend on."""
  devices = jax.devices()
  need = max(s.devices for s in slices)
  if len(devices) < need:
    raise ValueError(f"the plan needs {need} devices but JAX has {len(devices)}; run it as "
                     "`python -m mdpo_jax.plan` (which sets XLA_FLAGS="
                     f"--xla_force_host_platform_device_count={need}) or set that flag")
  variants = [_variant(config, m, r) for m in micro_batches for r in remats]
  cache, rows = {}, []
  for sl in slices:
    mesh = _mesh(config, devices[:sl.devices], mesh_sizes)
    for variant in variants:
      before = len(cache)
      plan = memory_plan.plan(variant, mesh, programs=programs, cache=cache)
      if len(cache) > before and log is not None:
        print(f"planned {sl.name} {_mesh_text(plan.mesh)} micro-batch "
              f"{memory_plan.rows_per_micro_batch(variant)} remat {variant.model.remat}: "
              f"{len(cache) - before} program(s) compiled", file=log, flush=True)
      rows.append(Row(sl, variant, plan))
  return rows


_UNIT = {"GiB": hardware.GIB, "MiB": 2**20}


def _unit(rows: list[Row]) -> str:
  """GiB, or MiB for plans under 1 GiB per device (tiny models)."""
  return "GiB" if max(r.plan.total for r in rows) >= hardware.GIB else "MiB"


def _fmt(n: int, unit: str) -> str:
  return f"{n / _UNIT[unit]:.2f}"


def _mesh_text(mesh: dict[str, int]) -> str:
  return ",".join(f"{k}={v}" for k, v in mesh.items() if v > 1) or "1 device"


def summary_table(rows: list[Row], unit: str = "GiB") -> str:
  """One line per row: resident bytes by kind, what each kind of program needs beyond them
  (its largest), the total (resident + the largest need), the chip and the verdict."""
  fmt = lambda n: _fmt(n, unit)  # noqa: E731
  kinds = [k for k in memory_plan.PROGRAMS
           if any(q.kind == k for r in rows for q in r.plan.programs)]
  lora = any(r.plan.base for r in rows)
  head = (["slice", "mesh", "micro-batch", "remat", "params", "optimizer", "reference"]
          + ["frozen base"] * lora + [f"+ {k}" for k in kinds]
          + ["total", "HBM / chip", "use", "verdict"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    p = r.plan
    need = [max((q.extra for q in p.programs if q.kind == k), default=None) for k in kinds]
    cells = ([r.slice.name, _mesh_text(p.mesh), str(memory_plan.rows_per_micro_batch(r.config)),
              r.config.model.remat, fmt(p.params), fmt(p.optimizer), fmt(p.reference)]
             + [fmt(p.base)] * lora + ["-" if n is None else fmt(n) for n in need]
             + [f"**{fmt(p.total)}**", fmt(r.slice.hbm_bytes),
                f"{100 * p.total / r.slice.hbm_bytes:.0f}%", r.verdict])
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def programs_table(rows: list[Row], unit: str = "GiB") -> str:
  """Every compiled program once: XLA's figures per device and the need beyond resident."""
  fmt = lambda n: _fmt(n, unit)  # noqa: E731
  lines = ["| mesh | program | micro-batch | remat | arguments | outputs | donated | temporaries "
           "| need beyond resident | compile s |", "|" + "---|" * 10]
  seen = set()
  for r in rows:
    for p in r.plan.programs:
      key = (tuple(r.plan.mesh.items()), p.name, p.micro_batch, p.remat)
      if key in seen:
        continue
      seen.add(key)
      lines.append(f"| {_mesh_text(r.plan.mesh)} | {p.name} | {p.micro_batch or '-'} | "
                   f"{p.remat or '-'} | {fmt(p.argument)} | {fmt(p.output)} | {fmt(p.alias)} "
                   f"| {fmt(p.temp)} | {fmt(p.extra)} | {p.seconds:.1f} |")
  return "\n".join(lines)


def report(config: config_lib.RunConfig, rows: list[Row], seconds: float) -> str:
  """The printed plan: what was planned, both tables, and how long it took."""
  model_cfg = memory_plan.model_config(config)
  compiled = len({(tuple(r.plan.mesh.items()), p.name, p.micro_batch, p.remat)
                  for r in rows for p in r.plan.programs})
  unit = _unit(rows)
  head = (f"Memory plan per device ({unit}) — trainer={config.trainer}, model "
          f"{config.model.family}/{config.model.preset} ({model_cfg.num_params() / 1e9:.2f} B "
          f"params, param_dtype={model_cfg.param_dtype}, dtype={model_cfg.dtype}); "
          f"{compiled} programs compiled for CPU in {seconds:.0f} s. Verdict: fits ≤ "
          f"{100 * (1 - hardware.HEADROOM):.0f}% of a chip's HBM, tight ≤ 100%.")
  return "\n\n".join([head, summary_table(rows, unit), "Compiled programs:",
                      programs_table(rows, unit)])


def to_json(config: config_lib.RunConfig, rows: list[Row], seconds: float) -> dict:
  return {"config": config.to_json(), "seconds": seconds,
          "rows": [{"slice": r.slice.name, "chip": r.slice.chip.name, "devices": r.slice.devices,
                    "hbm_bytes": r.slice.hbm_bytes, "micro_batch":
                    memory_plan.rows_per_micro_batch(r.config), "remat": r.config.model.remat,
                    "verdict": r.verdict, **r.plan.to_json()} for r in rows]}
