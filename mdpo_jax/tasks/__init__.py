"""Tasks: problem generators/loaders, prompt formats, answer extraction and verifiers (pure Python).

Each task module exposes `prompt(...)`, `extract_answer(...)` (except `math`, which leaves
extraction to math-verify) and `reward(completion, ...) -> float` in [0, 1], plus a task class
implementing `base.Task` (splits, prompts, SFT answers, a picklable `reward(completion,
problem)` and problem keys). `TASKS` maps the names used in configs (`task.name`) to the
classes; `build(config.task, config.seed)` makes a run's task. Importing this package does not
import math-verify; the MATH grader starts its worker subprocess on first use.
"""

from mdpo_jax.tasks import (base, countdown, gsm8k, math, records, reversal, stargraph, sudoku,
                            text)
from mdpo_jax.tasks.base import Task

TASKS: dict[str, type] = {
    "countdown": countdown.CountdownTask,
    "math": math.MathTask,
    "gsm8k": gsm8k.GSM8KTask,
    "sudoku": sudoku.SudokuTask,
    "stargraph": stargraph.StarGraphTask,
    "reversal": reversal.ReversalTask,
}


def build(task_cfg, seed: int) -> Task:
  """The task `task_cfg.name` for a run with `seed` (`task_cfg`: the config's `task` section,
  read by attribute). Checks the task's own keys; problems are made on first use."""
  name = task_cfg.name
  if name not in TASKS:
    raise ValueError(f"task.name={name!r}: allowed {tuple(sorted(TASKS))}")
  return TASKS[name](task_cfg, seed)


__all__ = ["TASKS", "Task", "base", "build", "countdown", "gsm8k", "math", "reversal", "stargraph",
           "sudoku", "text"]
