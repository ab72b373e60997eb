"""MATH500-style problems graded with math-verify under a hard per-check time limit.

Why a subprocess
----------------
math-verify (`parse` + `verify`) can take unbounded time: sympy simplification of adversarial
answers, or plain big-integer arithmetic -- ``\\boxed{9^{9^{9}}}`` makes it compute a
370-million-digit power. Its own time limits (`parsing_timeout`, `timeout_seconds`) use
``signal.alarm``: whole seconds only, main thread only (elsewhere math-verify raises), and a
signal handler cannot run while C code such as a big-integer power holds the interpreter. A
thread with a deadline does not help either: that C code never releases the GIL, so the waiting
thread cannot even wake up (measured with math-verify 0.9.0: a 1 s thread deadline on
``9^{9^{8}}`` returned after 60 s). So `reward` sends each check to a long-lived worker
subprocess (started on first use, ~1 s) and waits on its pipe with ``select``; past the
deadline the worker is killed (SIGKILL) and restarted on the next call. The limit therefore holds
for any input, at a cost of ~0.1-1 ms of IPC per check (a restart after a timeout takes ~0.5 s).
In the worker math-verify's own timeouts are disabled (None), since the deadline covers them,
and an RLIMIT_CPU backstop ends the worker if its parent died mid-check and cannot kill it.

Grading: the gold answer is parsed as LaTeX (wrapped in ``\\boxed{}``) with a plain-expression
fallback; the completion with LaTeX extraction where ``\\boxed{}`` has the highest priority
(`boxed_match_priority=0`), then plain expressions; `verify(gold, prediction)` decides.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from typing import Any

from mdpo_jax.tasks import records
from mdpo_jax.tasks.text import PROMPT_SUFFIX, last_boxed

__all__ = ["MathTask", "load_jsonl", "math_reward", "prompt", "reward", "check_answer",
           "shutdown_worker"]

_log = logging.getLogger(__name__)

_WORKER_START_TIMEOUT_S = 120.0


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
  """Run math-verify in THIS process, with no time limit (the worker calls this; `reward` wraps it)."""
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


# ----------------------------------------------------------------------------------------------
# Worker subprocess: length-prefixed pickles over pipes.
# ----------------------------------------------------------------------------------------------

_HEADER = struct.Struct("<I")


def _write_msg(fd: int, obj: Any) -> None:
  data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
  view = memoryview(_HEADER.pack(len(data)) + data)
  while view:
    view = view[os.write(fd, view):]


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes | None:
  """`size` bytes from `fd`, None if `deadline` (time.monotonic) passes; EOFError if closed."""
  chunks, got = [], 0
  while got < size:
    if deadline is not None:
      left = deadline - time.monotonic()
      if left <= 0 or not select.select([fd], [], [], left)[0]:
        return None
    chunk = os.read(fd, size - got)
    if not chunk:
      raise EOFError("math worker closed its pipe")
    chunks.append(chunk)
    got += len(chunk)
  return b"".join(chunks)


def _read_msg(fd: int, deadline: float | None) -> tuple[bool, Any]:
  header = _read_exact(fd, _HEADER.size, deadline)
  if header is None:
    return False, None
  body = _read_exact(fd, _HEADER.unpack(header)[0], deadline)
  if body is None:
    return False, None
  return True, pickle.loads(body)


def _limit_cpu(timeout_s: float) -> None:
  """Backstop for an orphaned worker (parent killed mid-check, so nobody kills a hung check):
  the kernel terminates the worker (SIGXCPU) once it has used this check's CPU budget plus a
  margin, even inside C code. Best effort: skipped where RLIMIT_CPU is unavailable."""
  try:
    import resource

    used = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(used.ru_utime + used.ru_stime + 2 * timeout_s) + 5
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard == resource.RLIM_INFINITY or soft <= hard:
      resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
  except (ImportError, ValueError, OSError):
    pass


def _worker_main() -> None:
  """Entry point of the worker: answer (completion, gold, timeout_s) requests until stdin closes."""
  out_fd = os.dup(1)
  os.dup2(2, 1)  # stray prints from libraries must not corrupt the protocol
  logging.getLogger("math_verify").setLevel(logging.ERROR)
  import math_verify  # noqa: F401  (import before signalling ready)

  _write_msg(out_fd, "ready")
  while True:
    try:
      _, (completion, gold, timeout_s) = _read_msg(0, None)
    except EOFError:
      return
    _limit_cpu(timeout_s)
    try:
      result = check_answer(completion, gold)
    except Exception as e:  # noqa: BLE001
      result = f"error: {type(e).__name__}: {e}"[:500]
    _write_msg(out_fd, result)


class _Worker:
  """One worker subprocess, (re)started lazily; calls are serialized by a lock."""

  def __init__(self):
    self.lock = threading.Lock()
    self.proc: subprocess.Popen | None = None

  def _start(self) -> None:
    if importlib.util.find_spec("math_verify") is None:
      raise ImportError("mdpo_jax.tasks.math needs math-verify: pip install 'math-verify>=0.8'")
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    self.proc = subprocess.Popen(
        [sys.executable, "-c", "from mdpo_jax.tasks.math import _worker_main; _worker_main()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
    ok, msg = _read_msg(self.proc.stdout.fileno(), time.monotonic() + _WORKER_START_TIMEOUT_S)
    if not ok or msg != "ready":
      self.kill()
      raise RuntimeError(f"math-verify worker did not start within {_WORKER_START_TIMEOUT_S:.0f} s")

  def kill(self) -> None:
    proc, self.proc = self.proc, None
    if proc is not None:
      proc.kill()
      proc.wait()
      for stream in (proc.stdin, proc.stdout):
        try:
          stream.close()
        except OSError:
          pass

  def call(self, completion: str, gold: str, timeout_s: float) -> bool | str | None:
    """The worker's answer, or None on timeout (the worker is then killed)."""
    with self.lock:
      if self.proc is None or self.proc.poll() is not None:
        self.kill()
        self._start()
      try:
        _write_msg(self.proc.stdin.fileno(), (completion, gold, timeout_s))
        ok, result = _read_msg(self.proc.stdout.fileno(), time.monotonic() + timeout_s)
      except (EOFError, OSError) as e:
        self.kill()
        return f"error: worker died: {e}"
      if not ok:
        self.kill()
        return None
      return result


_WORKER = _Worker()
atexit.register(_WORKER.kill)


def shutdown_worker() -> None:
  """Stop the worker subprocess now (it restarts on the next `reward` call)."""
  with _WORKER.lock:
    _WORKER.kill()


def reward(completion: str, gold: str, *, timeout_s: float = 5.0) -> float:
  """1.0 if math-verify judges `completion`'s answer equal to `gold`, else 0.0.

  The check (parsing both and comparing) runs in the worker subprocess and is cut off after
  `timeout_s` seconds (worker start-up is not counted), giving 0.0. Thread-safe; concurrent
  calls are serialized. No completion or gold makes it raise (errors score 0.0); it raises only
  for configuration errors: ImportError without math-verify, RuntimeError if the worker cannot
  start at all, ValueError for `timeout_s` <= 0.
  """
  if not isinstance(completion, str) or gold is None:
    return 0.0
  if not timeout_s > 0:
    raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
  result = _WORKER.call(completion, str(gold), float(timeout_s))
  if result is None:
    _log.warning("math-verify check exceeded %.1f s; scored 0.0", timeout_s)
    return 0.0
  if isinstance(result, str):
    _log.debug("math-verify check failed: %s", result)
    return 0.0
  return 1.0 if result else 0.0


# ----------------------------------------------------------------------------------------------
# The task (mdpo_jax.tasks.base.Task)
# ----------------------------------------------------------------------------------------------


def math_reward(completion: str, problem: dict) -> float:
  """`reward` against the record's "answer" (module-level: it pickles by reference to workers)."""
  return reward(completion, problem["answer"])


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
