"""Verifiers for tests/test_scoring.py, in their own stdlib-only module so that spawned or
forkserver workers can import them by reference cheaply (the test module itself imports pytest)."""

from __future__ import annotations

import os
import re
import time
import uuid


def int_reward(completion: str, problem: int) -> float:
  """1.0 if the completion parses to the integer `problem`, else 0.0 (a cheap verifier)."""
  try:
    return float(int(completion.strip()) == problem)
  except ValueError:
    return 0.0


def misbehaving_reward(completion: str, problem: int) -> float:
  """`int_reward`, except for magic completions: hang, raise, kill the worker, sleep, return NaN."""
  if completion == "hang":
    while True:
      time.sleep(1.0)
  if completion == "regex":  # catastrophic backtracking: hangs inside C code holding the GIL
    return float(re.match(r"(a+)+$", "a" * 64 + "b") is not None)
  if completion.startswith("sleep:"):
    time.sleep(float(completion[len("sleep:"):]))
    return 1.0
  if completion == "raise":
    raise ValueError("bad completion")
  if completion == "exit":
    os._exit(1)
  if completion == "nan":
    return float("nan")
  return int_reward(completion, problem)


def counting_reward(completion: str, problem: int, *, log_dir: str) -> float:
  """`int_reward` that leaves one file per call in `log_dir`, so a test can count the calls."""
  with open(os.path.join(log_dir, f"{os.getpid()}-{uuid.uuid4().hex}"), "w") as f:
    f.write(completion)
  return int_reward(completion, problem)


def dict_reward(completion: str, problem: dict) -> float:
  """`int_reward` against `problem["target"]`."""
  return int_reward(completion, problem["target"])


def where_reward(completion: str, problem: int) -> float:
  """1.0 when called in a RewardPool worker, 0.0 elsewhere (`scoring.in_worker`)."""
  from mdpo_jax.rl import scoring

  return float(scoring.in_worker())


def _slow_warm_up() -> None:
  time.sleep(1.0)


def slow_start_reward(completion: str, problem: int) -> float:
  """`int_reward` whose `warm_up` (run once per worker before it takes work) takes 1 s."""
  return int_reward(completion, problem)


slow_start_reward.warm_up = _slow_warm_up


def _failing_warm_up() -> None:
  raise ImportError("no module named 'verifier_library'")


def broken_start_reward(completion: str, problem: int) -> float:
  """`int_reward` whose `warm_up` fails, as a missing verifier library would."""
  return int_reward(completion, problem)


broken_start_reward.warm_up = _failing_warm_up
