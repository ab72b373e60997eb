"""Task problems for a run: the training split, a disjoint held-out split, SFT examples, rewards.

countdown: procedural; the held-out split is generated with another seed, excluding every
  training problem (up to the order of the numbers), so evaluation never sees a training problem.
  A validation split (for tuning) and RL's fresh prompts come from further seeds, each disjoint
  from every split before it.
math: MATH-style JSONL files the user provides (`task.train_file`, `task.eval_file`; records with
  "problem" and "answer" or a boxed "solution"), scored with math-verify under a time limit.
"""

from __future__ import annotations

from typing import Callable, Sequence

from mdpo_jax.tasks import countdown
from mdpo_jax.tasks import math as math_task

TASKS = ("countdown", "math")
PROMPT_SOURCES = ("train", "fresh")
# Seed offsets of the procedural splits (the training split uses `config.seed` itself).
_HELD_OUT_SEED, _VALIDATION_SEED, _FRESH_SEED = 1_000_003, 2_000_003, 3_000_017


def _countdown_kwargs(task) -> dict:
  for key, allowed in (("target_sampling", countdown.TARGET_SAMPLINGS),
                       ("solution_order", countdown.SOLUTION_ORDERS)):
    if task[key] not in allowed:
      raise ValueError(f"task.{key}={task[key]!r}: allowed {allowed}")
  return dict(num_numbers=tuple(task.num_numbers), number_range=(task.number_min, task.number_max),
              target_range=(task.target_min, task.target_max),
              target_sampling=task.target_sampling)


def splits(config) -> tuple[list, list]:
  """(train problems, held-out problems) for `config.task`, deterministic in `config.seed`."""
  task = config.task
  if task.name not in TASKS:
    raise ValueError(f"task.name={task.name!r}: allowed {TASKS}")
  if task.name == "math":
    if not task.train_file or not task.eval_file:
      raise ValueError("task.name='math' needs task.train_file and task.eval_file (JSONL with "
                       "'problem' and 'answer' or a boxed 'solution')")
    train = math_task.load_jsonl(task.train_file)[: task.train_size]
    held = math_task.load_jsonl(task.eval_file)[: task.eval_size]
    return train, held
  train = _countdown(task, task.train_size, config.seed, (), "task.train_size")
  held = _countdown(task, task.eval_size, config.seed + _HELD_OUT_SEED, train, "task.eval_size")
  return train, held


def validation_split(config, train: Sequence | None = None,
                     held_out: Sequence | None = None) -> list:
  """Problems to tune on (`task.val_size`): the training distribution, never trained on and
  disjoint from the held-out split, so choices made on them leave the held-out numbers honest.
  `train`/`held_out` are `splits(config)` when already at hand."""
  task = config.task
  if task.name == "math":
    if not task.val_file:
      raise ValueError("task.val_file='': tuning on math needs validation records (JSONL, "
                       "disjoint from task.eval_file)")
    return math_task.load_jsonl(task.val_file)[: task.val_size]
  if train is None or held_out is None:
    train, held_out = splits(config)
  return _countdown(task, task.val_size, config.seed + _VALIDATION_SEED, [*train, *held_out],
                    "task.val_size")


def rl_problems(config, train: Sequence, held_out: Sequence) -> list:
  """The prompts RL samples from (`rl.prompt_source`): the SFT training problems, or fresh
  Countdown problems disjoint from training, validation and held-out (`rl.fresh_size`)."""
  source = config.rl.prompt_source
  if source not in PROMPT_SOURCES:
    raise ValueError(f"rl.prompt_source={source!r}: allowed {PROMPT_SOURCES}")
  if source == "train":
    return list(train)
  return fresh_problems(config, train, held_out, config.rl.fresh_size, "rl.fresh_size")


def sft_problems(config, train: Sequence, held_out: Sequence) -> list:
  """What SFT trains on: the training split, plus the first `task.sft_extra_fresh` of RL's fresh
  prompts (with solver answers) — the supervised counterpart of RL on those prompts."""
  n = config.task.sft_extra_fresh
  if not n:
    return list(train)
  return [*train, *fresh_problems(config, train, held_out, n, "task.sft_extra_fresh")]


def fresh_problems(config, train: Sequence, held_out: Sequence, n: int,
                   field: str = "rl.fresh_size") -> list:
  """The first `n` Countdown problems after training, held-out and validation (one fixed
  sequence per seed, so equal `n` gives RL's fresh prompts and SFT's `task.sft_extra_fresh`
  the same problems)."""
  if config.task.name != "countdown":
    raise ValueError(f"{field}={n}: fresh problems need a procedural task (task.name='countdown'),"
                     f" got task.name={config.task.name!r}")
  val = validation_split(config, train, held_out)
  return _countdown(config.task, n, config.seed + _FRESH_SEED, [*train, *held_out, *val], field)


def _countdown(task, n: int, seed: int, exclude: Sequence, field: str) -> list:
  """`n` Countdown problems of `task`'s distribution for `seed`, none equal to one in `exclude`;
  errors name `field` (the config key that asked for `n`)."""
  try:
    return countdown.generate_problems(n, seed=seed, exclude=exclude, **_countdown_kwargs(task))
  except ValueError as e:
    if not exclude:
      raise ValueError(f"{field}={n}: {e}") from e
    raise ValueError(f"{field}={n}: not enough problems disjoint from the other splits ({e}); "
                     "widen the number/target ranges or lower the size") from e


def prompt_text(config, problem) -> str:
  if config.task.name == "math":
    return math_task.prompt(problem["problem"])
  return countdown.prompt(problem, style=config.task.prompt_style)


def sft_examples(config, problems: Sequence) -> list[dict]:
  """(prompt, answer) pairs: solver-written answers for Countdown (`task.answer_style`,
  `task.solution_order`), the reference solution for MATH records."""
  if config.task.name == "math":
    missing = [i for i, p in enumerate(problems) if not isinstance(p.get("solution"), str)]
    if missing:
      raise ValueError(f"task.train_file: records {missing[:5]} have no 'solution' for SFT")
    return [{"prompt": prompt_text(config, p), "answer": p["solution"]} for p in problems]
  _countdown_kwargs(config.task)  # validates the task keys
  return [{"prompt": prompt_text(config, p),
           "answer": countdown.solution_text(p, style=config.task.answer_style,
                                             order=config.task.solution_order)}
          for p in problems]


def countdown_reward(completion: str, problem) -> float:
  """1.0 / 0.0 with the safe Countdown verifier (a top-level function: it pickles to workers)."""
  return countdown.reward(completion, problem.numbers, problem.target)


def math_reward(completion: str, problem) -> float:
  """1.0 / 0.0 by math-verify against the record's answer (time-limited in its own worker)."""
  return math_task.reward(completion, problem["answer"])


def reward_fn(config) -> Callable[[str, object], float]:
  """reward(completion, problem) for `config.task`."""
  return math_reward if config.task.name == "math" else countdown_reward


def problem_key(problem):
  """A hashable identity of a problem (reward de-duplication)."""
  if isinstance(problem, dict):
    return (problem["problem"], problem["answer"])
  return (tuple(sorted(problem.numbers)), problem.target)
