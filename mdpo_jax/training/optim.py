"""Optimiser from a config section: AdamW with a learning-rate schedule and gradient clipping.

Gradient accumulation is not done here: the train step scans over micro-batches and applies one
update per optimiser step (cheaper than `optax.MultiSteps`, which would dispatch once per
micro-batch), so `optim.grad_accum_steps` is read by the trainers.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import optax

SCHEDULES = ("constant", "cosine", "linear")
MU_DTYPES = ("float32", "bfloat16")   # optim.mu_dtype; "" = the parameters' dtype


def learning_rate_schedule(optim: Mapping[str, Any], num_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to `lr`, then constant, cosine or linear decay to `lr·end_lr_ratio`."""
  lr, warmup = float(optim["lr"]), int(optim["warmup_steps"])
  kind, end = optim["schedule"], float(optim["lr"]) * float(optim["end_lr_ratio"])
  if kind not in SCHEDULES:
    raise ValueError(f"optim.schedule={kind!r}: allowed {SCHEDULES}")
  if lr <= 0:
    raise ValueError(f"optim.lr={lr!r}: must be > 0")
  if warmup < 0 or warmup > num_steps:
    raise ValueError(f"optim.warmup_steps={warmup}: must be in [0, num_steps={num_steps}]")
  decay_steps = max(num_steps - warmup, 1)
  if kind == "constant":
    after = optax.constant_schedule(lr)
  elif kind == "cosine":
    after = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr)
  else:
    after = optax.linear_schedule(lr, end, decay_steps)
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def make_optimizer(optim: Mapping[str, Any], num_steps: int) -> optax.GradientTransformation:
  """clip_by_global_norm → AdamW(schedule), inside `optax.apply_if_finite`. `optim` keys: lr,
  schedule, warmup_steps, end_lr_ratio, b1, b2, eps, weight_decay, clip_norm (0 = no clipping),
  mu_dtype (optional: the first moment's dtype, e.g. bfloat16 beside float32 master weights;
  the second moment stays in the parameters' dtype).

  A step whose gradient holds a NaN/Inf is skipped (params and moments unchanged) and counted in
  the state (`skipped_in_a_row`); the loops stop the run after `optim.max_skipped_steps` in a
  row. The wrapper itself never gives up (optax would apply the bad update after its limit)."""
  for key in ("b1", "b2"):
    if not 0 <= float(optim[key]) < 1:
      raise ValueError(f"optim.{key}={optim[key]!r}: must be in [0, 1)")
  if float(optim["weight_decay"]) < 0:
    raise ValueError(f"optim.weight_decay={optim['weight_decay']!r}: must be ≥ 0")
  if float(optim["clip_norm"]) < 0:
    raise ValueError(f"optim.clip_norm={optim['clip_norm']!r}: must be ≥ 0 (0 = off)")
  schedule = learning_rate_schedule(optim, num_steps)
  mu_dtype = optim.get("mu_dtype") or None   # optax: None = the parameters' dtype
  adamw = optax.adamw(schedule, b1=float(optim["b1"]), b2=float(optim["b2"]),
                      eps=float(optim["eps"]), weight_decay=float(optim["weight_decay"]),
                      mu_dtype=mu_dtype)
  if float(optim["clip_norm"]) > 0:
    adamw = optax.chain(optax.clip_by_global_norm(float(optim["clip_norm"])), adamw)
  return optax.apply_if_finite(adamw, max_consecutive_errors=_NEVER)


_NEVER = 2**31 - 2   # optax's counter saturates at int32 max; the loops stop long before


def skipped_in_a_row(opt_state) -> jax.Array:
  """How many optimiser steps in a row, up to now, were skipped for a non-finite gradient."""
  return opt_state.notfinite_count
