"""MATH500-style problems graded with math-verify under a hard per-check time limit.

The time limit
--------------
math-verify (`parse` + `verify`) can take unbounded time: sympy simplification of adversarial
answers, or plain big-integer arithmetic -- ``\\boxed{9^{9^{9}}}`` makes it compute a
370-million-digit power. Its own time limits (`parsing_timeout`, `timeout_seconds`) use
``signal.alarm``: whole seconds only, main thread only (elsewhere math-verify raises), and a
signal handler cannot run while C code such as a big-integer power holds the interpreter. A
thread with a deadline does not help either: that C code never releases the GIL, so the waiting
thread cannot even wake up (measured with math-verify 0.9.0: a 1 s thread deadline on
``9^{9^{8}}`` returned after 60 s). Only killing a process ends such a check, so grading runs in
the project's one time-limited worker mechanism, `mdpo_jax.rl.scoring.RewardPool` (its docstring
says why that one, with measurements), with math-verify's own timeouts disabled:

* in RL (and wherever `MathTask.reward` is scored through a `RewardPool` with workers) the check
  runs in the pool's worker directly (`scoring.in_worker()`); the pool's limit
  (`rl.reward_timeout_s`) holds, and timeouts and crashes are counted in its stats;
* called anywhere else (evaluation, an inline pool, a script), `reward` sends the check to a
  one-worker `RewardPool` of this module (started on first use, ~1 s; one per `timeout_s`), which
  kills and replaces the worker at the limit. The round trip costs ~0.2 ms a call (measured:
  0.32 ms against 0.13 ms in-process for a one-token answer); after a timeout the next call waits
  for the replacement worker (~1 s: it imports math-verify). Scoring many answers, a caller does
  better with its own `RewardPool(MathTask.reward, ...)`: one call per batch, parallel, deduped.

Each worker imports math-verify before it takes work (`warm_up`), so that import (~0.5-2 s) is
never charged to the first check's time limit.

Grading: the gold answer is parsed as LaTeX (wrapped in ``\\boxed{}``) with a plain-expression
fallback; the completion with LaTeX extraction where ``\\boxed{}`` has the highest priority
(`boxed_match_priority=0`), then plain expressions; `verify(gold, prediction)` decides.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from typing import Any

from mdpo_jax.rl import scoring
from mdpo_jax.tasks import records
from mdpo_jax.tasks.text import PROMPT_SUFFIX, last_boxed

__all__ = ["MathTask", "load_jsonl", "math_reward", "prompt", "reward", "check_answer",
           "shutdown_worker"]

_log = logging.getLogger(__name__)


def load_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Problems from a JSONL file (one JSON object per line; blank lines skipped).

  Each record needs "problem" and either "answer" or a "solution" containing a ``\\boxed{}``
  answer (the last one is used). Records are returned whole, with "answer" filled in. Raises
  ValueError naming the file and line for malformed records.
  """
  def check(rec: dict) -> dict:
    if not isinstance(rec.get("problem"), str):
      raise ValueError("expected an object with a string 'problem' field")
    if rec.get("answer") is None:
      boxed = last_boxed(rec["solution"]) if isinstance(rec.get("solution"), str) else None
      if boxed is None:
        raise ValueError("no 'answer' field and no \\boxed{} answer in 'solution'")
      rec["answer"] = boxed
    rec["answer"] = str(rec["answer"])
    return rec
  return records.load_jsonl(path, check)


def prompt(problem: str) -> str:
  """The SPEC §5 prompt: the problem followed by the step-by-step / boxed instruction."""
  return problem + PROMPT_SUFFIX


def check_answer(completion: str, gold: str) -> bool:
  """Run math-verify in THIS process, with no time limit (workers call this; `reward` wraps it)."""
  from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

  gold_parsed = parse(f"\\boxed{{{gold}}}",
                      extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
                      parsing_timeout=None)
  if not gold_parsed:
    gold_parsed = parse(gold, parsing_timeout=None)
  pred_parsed = parse(
      completion,
      extraction_config=[LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()],
      parsing_timeout=None)
  if not gold_parsed or not pred_parsed:
    return False
  return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _import_math_verify() -> None:
  """Import math-verify (and sympy) now; quiet its logger. A worker's `warm_up`."""
  if importlib.util.find_spec("math_verify") is None:
    raise ImportError("mdpo_jax.tasks.math needs math-verify: pip install 'math-verify>=0.8'")
  import math_verify  # noqa: F401

  logging.getLogger("math_verify").setLevel(logging.ERROR)


def _check_reward(completion: str, gold: str) -> float:
  """`check_answer` as a reward, in THIS process (what the one-worker pools of `reward` run)."""
  return 1.0 if check_answer(completion, gold) else 0.0


_check_reward.warm_up = _import_math_verify

_POOLS: dict[float, scoring.RewardPool] = {}  # one-worker pools of `reward`, by timeout_s
_POOLS_LOCK = threading.Lock()


def shutdown_worker() -> None:
  """Close the worker pools of `reward` now (a new one starts on the next call)."""
  with _POOLS_LOCK:
    for pool in _POOLS.values():
      pool.close()
    _POOLS.clear()


def reward(completion: str, gold: str, *, timeout_s: float = 5.0) -> float:
  """1.0 if math-verify judges `completion`'s answer equal to `gold`, else 0.0.

  Inside a `RewardPool` worker the check runs right here (the pool's own time limit applies and
  `timeout_s` is not used); elsewhere it runs in this module's one-worker `RewardPool` and is cut
  off after `timeout_s` seconds (worker start-up is not counted), giving 0.0. Thread-safe;
  concurrent calls are serialized. No completion or gold makes it raise outside a worker (errors
  score 0.0; inside one the pool scores and counts them); it raises only for configuration
  errors: RuntimeError if the worker cannot start (e.g. without math-verify), ValueError for
  `timeout_s` <= 0.
  """
  if not isinstance(completion, str) or gold is None:
    return 0.0
  if not timeout_s > 0:
    raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
  if scoring.in_worker():
    return _check_reward(completion, str(gold))
  with _POOLS_LOCK:
    pool = _POOLS.get(float(timeout_s))
    if pool is None:
      pool = _POOLS[float(timeout_s)] = scoring.RewardPool(_check_reward, num_workers=1,
                                                           timeout_s=timeout_s)
    rewards, stats = pool.score([(completion, str(gold))])
    errors = list(pool.last_errors)
  if stats["timeouts"] or stats["crashes"]:
    _log.warning("math-verify: %s; scored 0.0", errors[0] if errors else "check failed")
  elif stats["errors"]:
    _log.debug("math-verify: %s; scored 0.0", errors[0] if errors else "check failed")
  return float(rewards[0])


# ----------------------------------------------------------------------------------------------
# The task (mdpo_jax.tasks.base.Task)
# ----------------------------------------------------------------------------------------------


def math_reward(completion: str, problem: dict) -> float:
  """`reward` against the record's "answer" (module-level: it pickles by reference to workers)."""
  return reward(completion, problem["answer"])


math_reward.warm_up = _import_math_verify  # RL's reward workers import math-verify before work


class MathTask(records.RecordTask):
  """MATH-style JSONL records (`load_jsonl`): "problem" and "answer" or a boxed "solution".

  Prompt: `prompt(record["problem"])`; SFT answer: the record's "solution" (records without one
  can be evaluated and used for RL, not for SFT); reward: math-verify against "answer" (time
  limited, `reward`); key: ("problem", "answer").
  """

  name = "math"
  RECORDS = "JSONL with 'problem' and 'answer' or a boxed 'solution'"
  reward = staticmethod(math_reward)

  @staticmethod
  def _load(path: str) -> list[dict[str, Any]]:
    return load_jsonl(path)

  def prompt(self, problem: dict) -> str:
    return prompt(problem["problem"])

  def sft_answer(self, problem: dict) -> str:
    solution = problem.get("solution")
    if not isinstance(solution, str):
      raise ValueError(f"task.train_file={self.cfg.train_file!r}: record "
                       f"{problem.get('problem', '')[:60]!r} has no 'solution' for SFT")
    return solution

  def key(self, problem: dict) -> tuple[str, str]:
    return (problem["problem"], problem["answer"])
