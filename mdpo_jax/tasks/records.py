"""Reading task records from JSONL files, with errors that name the file and line, and
`RecordTask`, the splits of the tasks whose problems are such records (math, gsm8k)."""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from mdpo_jax.tasks import base


def load_jsonl(path: str | os.PathLike, check: Callable[[dict], dict]) -> list[dict[str, Any]]:
  """One JSON object per non-blank line, each passed through `check` (which validates and may
  fill fields, raising ValueError with what is wrong); errors are re-raised as
  `ValueError("path:line: ...")`."""
  records = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)  # JSONDecodeError is a ValueError
        if not isinstance(rec, dict):
          raise ValueError("expected a JSON object")
        records.append(check(rec))
      except ValueError as e:
        raise ValueError(f"{path}:{lineno}: {e}") from e
  return records


class RecordTask:
  """Splits of a task whose problems are JSONL records the user provides (math, gsm8k).

  train / held-out / validation are the first `task.train_size` / `task.eval_size` /
  `task.val_size` records of `task.train_file` / `task.eval_file` / `task.val_file`, read on
  first use and memoised (a split whose file is unset raises only when it is asked for). The
  files are the user's: their disjointness is not checked. No fresh problems (not procedural).
  Subclasses set `name`, `RECORDS` (what a record holds, for error messages) and `_load`.
  """

  name: str
  procedural = False
  RECORDS = "records"

  def __init__(self, task_cfg, seed: int):
    base.check_sizes(task_cfg)
    self.cfg = task_cfg
    self.seed = seed
    self._splits: dict[str, list] = {}

  @staticmethod
  def _load(path: str) -> list[dict[str, Any]]:
    raise NotImplementedError

  def _split(self, file_key: str, size_key: str, missing: str) -> list:
    if file_key not in self._splits:
      path = getattr(self.cfg, file_key)
      if not path:
        raise ValueError(f"task.{file_key}={path!r}: {missing}")
      try:
        recs = self._load(path)
      except OSError as e:
        raise ValueError(f"task.{file_key}={path!r}: cannot read it ({e})") from e
      self._splits[file_key] = recs[: getattr(self.cfg, size_key)]
    return list(self._splits[file_key])

  def train(self) -> list:
    return self._split("train_file", "train_size",
                       f"task.name={self.name!r} needs training records ({self.RECORDS})")

  def held_out(self) -> list:
    return self._split("eval_file", "eval_size",
                       f"task.name={self.name!r} needs held-out records ({self.RECORDS})")

  def validation(self) -> list:
    return self._split("val_file", "val_size",
                       f"tuning on {self.name} needs validation records (JSONL, disjoint from "
                       "task.eval_file)")

  def fresh(self, n: int, field: str = "rl.fresh_size") -> list:
    raise base.not_procedural(field, n, self.name)
