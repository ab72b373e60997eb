"""The `Task` protocol every task implements, and helpers the task classes share.

A task object is built once per run (`mdpo_jax.tasks.build(config.task, config.seed)`) and
memoises its splits, so asking for a split twice costs nothing and gives equal lists:

* `train()`: what SFT trains on and RL samples from (with `rl.prompt_source="train"`);
* `held_out()`: evaluation problems, disjoint from `train()`;
* `validation()`: problems to tune on, disjoint from `train()` and `held_out()`;
* `fresh(n)`: the first `n` problems of one fixed sequence per seed, disjoint from all three
  (procedural tasks only), so equal `n` always gives the same problems.

Procedural tasks (countdown, sudoku) generate their splits from the run's seed plus a fixed
offset per split (`HELD_OUT_SEED`, `VALIDATION_SEED`, `FRESH_SEED`; the training split uses the
seed itself), each split excluding every problem of the splits before it. Record tasks (math,
gsm8k) read JSONL files (`mdpo_jax.tasks.records.RecordTask`).

`reward` is an attribute, not a method: a module-level function (or a `functools.partial` of
one with small arguments) that pickles by reference, since reward workers receive it; a bound
method would pickle the task with all its memoised splits.

Config errors are one-line ValueErrors that name the key: ``"task.<key>=<value>: <allowed>"``.
Constructors check the task's own keys (cheap checks only); problems are generated or read on
first use.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Hashable, Protocol, Sequence, runtime_checkable

__all__ = ["FRESH_SEED", "HELD_OUT_SEED", "VALIDATION_SEED", "ProceduralTask", "Task",
           "check_choice", "check_fresh_size", "check_int", "check_sizes", "not_procedural",
           "sft_problems"]

# Seed offsets of the procedural splits (the training split uses the run's seed itself).
HELD_OUT_SEED, VALIDATION_SEED, FRESH_SEED = 1_000_003, 2_000_003, 3_000_017
SIZE_KEYS = ("train_size", "eval_size", "val_size", "sft_extra_fresh")


@runtime_checkable
class Task(Protocol):
  """What the training, RL and evaluation code use of a task (see the module docstring)."""

  name: str
  procedural: bool  # True when fresh problems can be generated (countdown, sudoku)
  reward: Callable[[str, Any], float]  # reward(completion, problem) in [0, 1]; picklable

  def train(self) -> list: ...

  def held_out(self) -> list: ...

  def validation(self) -> list: ...

  def fresh(self, n: int, field: str = "rl.fresh_size") -> list: ...

  def prompt(self, problem) -> str: ...

  def sft_answer(self, problem) -> str: ...

  def key(self, problem) -> Hashable: ...


def check_choice(task_cfg, key: str, allowed: Sequence) -> Any:
  """`task_cfg.<key>`, which must be one of `allowed`; else ``task.<key>=<value>: allowed ...``."""
  value = getattr(task_cfg, key)
  if value not in allowed:
    raise ValueError(f"task.{key}={value!r}: allowed {tuple(allowed)}")
  return value


def check_int(task_cfg, key: str, low: int | None = 0, high: int | None = None,
              allowed: str | None = None) -> int:
  """`task_cfg.<key>` as an int in [low, high] (None: unbounded on that side); `allowed`
  overrides the description of the allowed values in the error."""
  value = getattr(task_cfg, key)
  try:
    n = operator.index(value)
  except TypeError:
    n = None
  if (n is None or isinstance(value, bool) or (low is not None and n < low)
      or (high is not None and n > high)):
    if allowed is None:
      if low is None and high is None:
        allowed = "an integer"
      elif high is None:
        allowed = f"an integer >= {low}"
      elif low is None:
        allowed = f"an integer <= {high}"
      else:
        allowed = f"an integer in {low}..{high}"
    raise ValueError(f"task.{key}={value!r}: allowed {allowed}")
  return n


def check_sizes(task_cfg) -> None:
  """The split sizes (and `sft_extra_fresh`) must be integers >= 0."""
  for key in SIZE_KEYS:
    check_int(task_cfg, key)


def check_fresh_size(n, field: str) -> int:
  try:
    m = operator.index(n)
  except TypeError:
    m = -1
  if m < 0 or isinstance(n, bool):
    raise ValueError(f"{field}={n!r}: allowed an integer >= 0")
  return m


def not_procedural(field: str, n, name: str) -> ValueError:
  """The error of `fresh` on a task without a problem generator."""
  return ValueError(f"{field}={n}: fresh problems need a procedural task (countdown, sudoku), "
                    f"got task.name={name!r}")


def sft_problems(task: Task, extra_fresh: int) -> list:
  """What SFT trains on: `task.train()` plus the first `extra_fresh` of RL's fresh prompts
  (`task.sft_extra_fresh`, the supervised counterpart of RL on fresh prompts)."""
  if not extra_fresh:
    return task.train()
  return [*task.train(), *task.fresh(extra_fresh, "task.sft_extra_fresh")]


class ProceduralTask:
  """Splits of a procedural task, memoised. Subclasses set `name` and implement `_generate`.

  train: `_generate(train_size, seed)`; held-out: seed + HELD_OUT_SEED excluding train;
  validation: seed + VALIDATION_SEED excluding train and held-out; fresh(n): the first `n` for
  seed + FRESH_SEED excluding all three.
  """

  name: str
  procedural = True

  def __init__(self, task_cfg, seed: int):
    check_sizes(task_cfg)
    try:
      self.seed = operator.index(seed)
    except TypeError as e:
      raise ValueError(f"seed={seed!r}: allowed an integer") from e
    self.cfg = task_cfg
    self._splits: dict[str, list] = {}
    self._fresh: dict[int, list] = {}

  def _generate(self, n: int, seed: int, exclude: list, field: str) -> list:
    """`n` problems for `seed`, none with the key of one in `exclude`; errors name `field`."""
    raise NotImplementedError

  def _split(self, name: str, size_key: str, offset: int, before: tuple[str, ...]) -> list:
    if name not in self._splits:
      exclude = [p for prev in before for p in getattr(self, prev)()]
      n = getattr(self.cfg, size_key)
      self._splits[name] = self._generate(n, self.seed + offset, exclude, f"task.{size_key}")
    return list(self._splits[name])

  def train(self) -> list:
    return self._split("train", "train_size", 0, ())

  def held_out(self) -> list:
    return self._split("held_out", "eval_size", HELD_OUT_SEED, ("train",))

  def validation(self) -> list:
    return self._split("validation", "val_size", VALIDATION_SEED, ("train", "held_out"))

  def fresh(self, n: int, field: str = "rl.fresh_size") -> list:
    n = check_fresh_size(n, field)
    if n not in self._fresh:
      exclude = [*self.train(), *self.held_out(), *self.validation()]
      self._fresh[n] = self._generate(n, self.seed + FRESH_SEED, exclude, field)
    return list(self._fresh[n])
