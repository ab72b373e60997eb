"""Metrics: JSONL always, TensorBoard event files (tensorboardX, no TensorFlow), W&B when asked.

Only process 0 writes. `metrics.jsonl` is strict JSON: a NaN/Inf value is written as null. Values are converted to Python floats on write, so callers pass device
scalars and the transfer happens once per logging interval, not per step.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np


class MetricWriter:
  """`write(step, {name: value})` to `WORKDIR/metrics.jsonl`, TensorBoard and optionally W&B."""

  def __init__(self, workdir: str | Path, *, tensorboard: bool = True, wandb: bool = False,
               wandb_project: str = "mdpo_jax", run_config: Mapping[str, Any] | None = None):
    self._active = jax.process_index() == 0
    self._tb = self._wandb = None
    self._file = None
    if not self._active:
      return
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self._file = open(workdir / "metrics.jsonl", "a", encoding="utf-8")
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(workdir / "tensorboard"))
    if wandb:
      try:
        import wandb as wandb_lib
      except ImportError:
        logging.warning("logging.wandb=True but wandb is not installed; skipping W&B")
      else:
        self._wandb = wandb_lib.init(project=wandb_project, dir=str(workdir),
                                     config=dict(run_config or {}), resume="allow")

  def write(self, step: int, metrics: Mapping[str, Any]) -> dict:
    values = {k: float(np.asarray(v)) for k, v in jax.device_get(dict(metrics)).items()}
    if not self._active:
      return values
    strict = {k: v if math.isfinite(v) else None for k, v in values.items()}   # JSON has no NaN
    self._file.write(json.dumps({"step": int(step), "time": time.time(), **strict},
                                allow_nan=False) + "\n")
    self._file.flush()
    if self._tb is not None:
      for name, value in values.items():
        self._tb.add_scalar(name, value, int(step))
      self._tb.flush()
    if self._wandb is not None:
      self._wandb.log(values, step=int(step))
    return values

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()


def read_jsonl(path: str | Path) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
