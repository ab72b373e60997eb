"""Host-side reward scoring: worker processes that run a task verifier, each check time-limited.

This is the project's one time-limited worker mechanism for reward checks: RL's scoring, and
`tasks.math.reward` wherever it is called outside a pool (evaluation, scripts), run through it.

MDPO scores every intermediate prediction x̂0_t of every rollout (prompts × G × T checks per
update), and task verifiers are Python, often third-party (sympy-based math equivalence, a
parser of Countdown expressions), that can be slow, hang, raise or even crash the interpreter.
`RewardPool` runs them in separate processes so that none of this can stall or kill the training
run: a check that runs past `timeout_s` or raises scores 0.0, a worker that dies scores its
current item 0.0, and both are counted in the returned stats so they show up in the metrics.

Design (why it looks like this):

* **Start method.** Workers are started with `forkserver` where the platform has it (Linux, macOS),
  else `spawn`; `fork` is refused. Forking a process that has initialised JAX/XLA copies its thread
  pools and locks in whatever state they were in, and the child can deadlock or crash; `spawn` and
  `forkserver` start from a fresh interpreter (the fork server is itself a clean process started on
  first use, so replacing a killed worker only costs a fork of that small process plus importing the
  verifier's module). Consequently `reward_fn` must be picklable by reference: a top-level function,
  or a `functools.partial` of one with picklable arguments — not a lambda or a closure — defined in
  an importable module. As with any spawn/forkserver use, the children re-import the main module, so
  a main script must keep its work under `if __name__ == "__main__":`.
* **Chunks out, batched results back, per-check deadlines.** The parent sends a worker a *list* of
  items in one message (one pickle and one round-trip per chunk instead of per item; a problem
  shared by many items is pickled once per chunk thanks to pickle's memo). The worker collects its
  answers and sends them every `_FLUSH_S` (10 ms) and at the end of the chunk, so a cheap verifier
  costs the parent one message per ~10 ms per worker rather than one per check. Because answers lag,
  the parent does not learn from them which check is running; instead each worker writes into a
  small shared-memory slot, before each check, how many checks it has started and when
  (`time.monotonic`, CLOCK_MONOTONIC, one clock for all processes of the machine). The parent reads
  that slot without any message: the running check is the `started − answered − 1`-th unanswered
  item of the chunk, and its deadline is its own start + `timeout_s` — a slow item late in a chunk
  is not charged for its predecessors, and a hang that holds the GIL (catastrophic regex
  backtracking) cannot hide it. Until the worker starts its first check of a chunk, the chunk's send
  time stands in as the start.
* **Timeouts and crashes.** A check past its deadline scores 0.0; its worker is killed (SIGKILL — a
  hung C extension may ignore SIGTERM) and replaced by a fresh process, and the rest of its chunk
  goes back to the queue for any worker (including checks it had finished but not yet reported: at
  most ~10 ms of work is redone). A worker that dies on its own (segfault, `os._exit`) is treated
  the same way, with its running check counted as a crash (if it died between checks, e.g. while
  unpickling a chunk, the first unanswered item is blamed). Each such event consumes one item, so
  the loop always makes progress, even if every item crashes its worker; replacements start in the
  background and take work once they report ready. k hung checks cost about k · timeout_s /
  num_workers of wall time.
* **Never block.** The parent only sends a chunk to an idle worker (blocked in `recv`), so a send
  cannot fill a pipe while the worker is busy, and it waits on all connections and process sentinels
  at once with a timeout equal to the nearest deadline (`multiprocessing.connection.wait`).
* **Dedup.** Identical `(completion, key_fn(problem))` pairs within one `score` call are checked
  once: during RL the same intermediate prediction is decoded at many consecutive steps.
* **Shutdown.** `close()` (also from `__exit__`, whether or not the body raised, and from a
  finaliser at garbage collection / interpreter exit) asks workers to stop, then terminates, kills
  and joins any that linger. Workers also watch the pool: a thread in each blocks on a pipe whose
  other end only the pool's process holds, and exits the worker when it closes — so if the trainer
  is SIGKILLed, no orphan keeps running a hung check forever. That thread needs the GIL, which a
  check stuck in C code may hold for hours (catastrophic regex backtracking, a 370-million-digit
  power in math-verify); for those an RLIMIT_CPU kept a little ahead of the worker's CPU time
  (`_CpuBackstop`) makes the kernel end the orphan at most 2·timeout_s + 2.25 CPU-seconds into its
  check. Workers are daemonic, so a verifier cannot itself start processes; `in_worker()` tells a
  verifier that it runs in one (and is already time-limited).
* **Warm-up.** A worker unpickles `reward_fn` and, if it has a callable `warm_up` attribute, calls
  it before reporting ready, so slow imports (math-verify and sympy: ~0.5–2 s) are charged to
  start-up (`start_timeout_s`), not to the first check's time limit.

Why hand-written rather than a library (`benchmarks/reward_pool_vs_pebble.py`): measured against
`pebble` 5.2.3 (the kept library for process pools with per-task timeouts; `ProcessPool` on
forkserver) on Python 3.11, 2 workers on this 2-core machine while other jobs shared it, distinct
Countdown checks of ~15–20 µs each, best of 5 per run, 6 runs: RewardPool (automatic chunks) scored
17,000–74,000 checks/s of 20,000; pebble's per-task `schedule`, the only pebble mode whose time
limit is per check, 4,400–11,800 checks/s of 4,000 — RewardPool was 2.9–6.9× faster in the same run
(median 6.4×; pebble pays a future, a pickle and a round trip per check, and RL scores prompts × G
× T checks per update). pebble's `map` with chunks (best of 16, 256, 2,500 per run) scored
23,000–65,000 checks/s, on par (RewardPool 0.6–1.5× of it), but its timeout is per *chunk*: five
checks of 0.4–0.6 s in one chunk under a 1 s limit all failed as one timeout, and one hung check
among 200 (chunks of 64, 1 s limit) lost its 63 chunk-mates (136 of 199 right answers, vs 199 with
RewardPool; both calls ended after ~1.0 s). Per-check deadlines inside a chunk need the worker to
say which check it is on, which pebble has no hook for; dedup, inline mode and the orphan backstop
would have had to be written around it anyway. So this mechanism stayed, and `tasks/math.py`'s
private worker subprocess was removed in its favour.

`num_workers=0` scores inline in the calling process: no process start-up, no IPC — the right choice
for tests and tiny runs — but also no protection: no time limit can be enforced on a running Python
call, and a verifier that crashes the interpreter takes the caller down with it.

A pool is not thread-safe; call `score` from one thread.
"""

from __future__ import annotations

import collections
import logging
import math
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import pickle
import signal
import threading
import time
import traceback
import weakref
from typing import Any, Callable, Hashable, Sequence

import numpy as np

__all__ = ["RewardPool", "default_start_method", "in_worker"]

_log = logging.getLogger(__name__)

# Status codes sent back by a worker for each check.
_OK = 0
_ERROR = 1

# Messages from worker to parent.
_MSG_READY = "ready"
_MSG_START_ERROR = "start_error"
_MSG_RESULTS = "results"

_MAX_ERROR_MESSAGES = 5
_MAX_MESSAGE_CHARS = 500
# A worker sends its collected answers at least this often (and at the end of every chunk).
_FLUSH_S = 0.01

_IN_WORKER = False  # set in worker processes (`in_worker`)


def default_start_method() -> str:
  """`forkserver` where available (cheap replacements, no inherited JAX state), else `spawn`."""
  return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


def _run_check(reward_fn: Callable[[str, Any], float], completion: str,
               problem: Any) -> tuple[int, float, str | None]:
  """One verifier call → (status, reward, error message); non-finite/non-numeric rewards are errors.

  `SystemExit` is caught too (a verifier calling `sys.exit` is a bug in that check, not a reason to
  lose the worker); `KeyboardInterrupt` is not (workers ignore SIGINT; inline, Ctrl-C must stop).
  """
  try:
    value = float(reward_fn(completion, problem))
  except (Exception, SystemExit) as e:  # noqa: BLE001 — any failure of the check scores 0
    return _ERROR, 0.0, f"{type(e).__name__}: {e}"[:_MAX_MESSAGE_CHARS]
  if not math.isfinite(value):
    return _ERROR, 0.0, f"non-finite reward {value!r}"
  return _OK, value, None


def in_worker() -> bool:
  """True inside a `RewardPool` worker process: a verifier called here is already time-limited by
  the pool (a verifier that protects itself when called elsewhere, like `tasks.math.reward`,
  checks this to avoid starting a second layer of processes)."""
  return _IN_WORKER


class _CpuBackstop:
  """RLIMIT_CPU kept a little ahead of the worker's CPU time, so that an orphaned worker (the pool's
  process was SIGKILLed mid-check) stuck in C code that holds the GIL — where `_watch_parent` cannot
  run — is still ended by the kernel (SIGXCPU), at most 2·timeout_s + 2.25 CPU-seconds into its
  check.

  While the pool lives it cannot cut a check short: before each check at least timeout_s + 0.5
  CPU-seconds remain, and one thread cannot use CPU faster than wall time, so by the time it fired
  the pool would already have timed the check out (the verifier scores 0.0 either way). CPU time is
  read at most every `_EVERY_S` of wall time (a syscall, ~0.6 µs, against ~15 µs for a cheap
  check), so the margins include that interval. Best effort: off where `resource` is missing.
  """

  _EVERY_S = 0.25

  def __init__(self, timeout_s: float):
    self.timeout_s = timeout_s
    self.limit = -math.inf  # current soft limit (CPU-seconds); -inf: set it on the first check
    self.next_read = -math.inf
    try:
      import resource
      self.resource = resource
      resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    except (ImportError, ValueError, OSError):
      self.resource = None

  def before_check(self, now: float) -> None:
    """Top the limit up if fewer than timeout_s + 0.5 (+ the read interval) CPU-seconds remain."""
    if self.resource is None or now < self.next_read:
      return
    self.next_read = now + self._EVERY_S
    used = time.process_time()
    if self.limit - used >= self.timeout_s + 0.5 + self._EVERY_S:
      return
    res = self.resource
    soft = math.ceil(used + 2 * self.timeout_s + 1 + self._EVERY_S)  # whole seconds
    try:
      hard = res.getrlimit(res.RLIMIT_CPU)[1]
      if hard == res.RLIM_INFINITY or soft <= hard:
        res.setrlimit(res.RLIMIT_CPU, (soft, hard))
        self.limit = soft
      else:
        self.resource = None
    except (ValueError, OSError):
      self.resource = None


def _watch_parent(lifeline: mp_connection.Connection) -> None:
  """Exit the worker as soon as the pool's end of `lifeline` closes (the parent closed or died).

  The parent never writes to it, so `recv` returns only by EOF. (The parent process id is no use
  here: under forkserver our parent is the fork server, which outlives a killed pool process for
  as long as any of its children hold its liveness pipe — as these workers do.)
  """
  try:
    lifeline.recv()
  except (EOFError, OSError):
    pass
  os._exit(0)


def _worker_main(conn: mp_connection.Connection, lifeline: mp_connection.Connection,
                 progress: Any, reward_fn_bytes: bytes, timeout_s: float) -> None:
  """Worker loop: receive a chunk [(uid, completion, problem)], answer [(uid, status, value, msg)].

  Before each check it writes (start time, checks started so far) into `progress` — time first, so
  that a reader never pairs a new count with an old time and kills a check early. Answers go out
  every `_FLUSH_S` and at the end of the chunk. The verifier is unpickled (and warmed up) here
  rather than by multiprocessing so that an import failure in the child reaches the parent as a
  readable error instead of a bare exit code. `None` means stop.
  """
  global _IN_WORKER
  _IN_WORKER = True
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes us.
  threading.Thread(target=_watch_parent, args=(lifeline,), daemon=True).start()
  backstop = _CpuBackstop(timeout_s)
  try:
    reward_fn = pickle.loads(reward_fn_bytes)
    warm_up = getattr(reward_fn, "warm_up", None)
    if callable(warm_up):
      warm_up()  # slow imports happen before `ready`, not inside the first check's time limit
  except BaseException:  # noqa: BLE001 — report any failure to load the verifier, then exit
    try:
      conn.send((_MSG_START_ERROR, traceback.format_exc()))
    finally:
      os._exit(1)
  conn.send((_MSG_READY, os.getpid()))
  started = 0
  while True:
    try:
      chunk = conn.recv()
    except (EOFError, OSError):
      return
    if chunk is None:
      return
    answers = []
    last_flush = time.monotonic()
    for uid, completion, problem in chunk:
      now = time.monotonic()
      backstop.before_check(now)
      progress[1] = now
      started += 1
      progress[0] = started
      status, value, message = _run_check(reward_fn, completion, problem)
      answers.append((uid, status, value, message))
      if time.monotonic() - last_flush >= _FLUSH_S:
        conn.send((_MSG_RESULTS, answers))
        answers = []
        last_flush = time.monotonic()
    if answers:
      conn.send((_MSG_RESULTS, answers))


class _Worker:
  """Parent-side handle: the process, its connection and progress slot, and its unanswered items."""

  def __init__(self, ctx: Any, reward_fn_bytes: bytes, timeout_s: float):
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    lifeline_r, self.lifeline = ctx.Pipe(duplex=False)  # only this process holds the write end
    self.progress = ctx.RawArray("d", 2)  # [checks started, monotonic start of the latest one]
    self.process = ctx.Process(target=_worker_main,
                               args=(child_conn, lifeline_r, self.progress, reward_fn_bytes,
                                     timeout_s),
                               name="RewardPool-worker", daemon=True)
    self.process.start()
    child_conn.close()  # only the child holds its end now, so its death reads as EOF here
    lifeline_r.close()
    self.conn = parent_conn
    self.ready = False
    self.started_at = time.monotonic()
    self.queue: collections.deque[int] = collections.deque()  # uids sent, not yet answered
    self.answered = 0  # answers received over the worker's life
    self.idle_since = 0.0  # when the chunk was sent or the latest answer arrived (parent clock)
    self.stopped = False

  @property
  def pid(self) -> int | None:
    return self.process.pid

  def running(self) -> tuple[int, float]:
    """(position in `queue`, start time) of the check to hold to the deadline now.

    That is the one the worker reported starting, if it has started one not yet answered; else the
    head of the queue, timed from when the chunk was sent or the last answer arrived.
    """
    for _ in range(8):  # re-read if the worker moved on while we read
      started, start_time = int(self.progress[0]), self.progress[1]
      if int(self.progress[0]) == started:
        break
    if started > self.answered:
      return min(started - 1 - self.answered, len(self.queue) - 1), start_time
    return 0, self.idle_since

  def stop(self, *, graceful: bool, join_timeout_s: float = 1.0) -> None:
    """End the process (politely first if `graceful`), join it, and close the connection."""
    if self.stopped:
      return
    self.stopped = True
    if graceful and self.process.is_alive():
      try:
        self.conn.send(None)
      except (OSError, ValueError):
        pass
      self.process.join(join_timeout_s)
    if self.process.is_alive():
      self.process.terminate()
      self.process.join(join_timeout_s)
    if self.process.is_alive():
      self.process.kill()
      self.process.join(join_timeout_s)
    for c in (self.conn, self.lifeline):
      try:
        c.close()
      except OSError:
        pass
    if self.process.exitcode is not None:
      self.process.close()


def _shutdown(workers: list[_Worker]) -> None:
  """Stop every worker; shared by `close()` and the garbage-collection finaliser."""
  live = [w for w in workers if not w.stopped]
  for w in live:
    if not w.ready:  # still starting (importing the verifier): nothing to finish, do not wait
      w.process.kill()
      continue
    try:
      w.conn.send(None)  # all at once, so they exit in parallel
    except (OSError, ValueError):
      pass
  deadline = time.monotonic() + 1.0
  for w in live:
    w.process.join(max(0.0, deadline - time.monotonic()))
    w.stop(graceful=False)
  workers.clear()


def _default_key(problem: Any) -> Hashable:
  return repr(problem)


class RewardPool:
  """Scores (completion, problem) pairs with `reward_fn` in worker processes, each time-limited.

  Usage::

      with RewardPool(functools.partial(countdown_reward, strict=True), num_workers=8) as pool:
        rewards, stats = pool.score([(text, problem) for text, problem in pairs])

  Args:
    reward_fn: `reward_fn(completion: str, problem) -> float`, picklable by reference (a top-level
      function or a `functools.partial` of one). Called in a worker process unless `num_workers=0`.
    num_workers: worker processes; `None` → `os.cpu_count()`; `0` → score inline in this process
      (no time limit, no crash isolation; for tests and tiny runs).
    timeout_s: time limit of one check, in seconds; a check past it scores 0.0 and its worker is
      replaced.
    start_method: `"forkserver"` or `"spawn"`; `None` → `default_start_method()`. `"fork"` is
      refused: forking after JAX has started its threads can deadlock the child.
    key_fn: `key_fn(problem) -> hashable`, identifying a problem for dedup; default `repr` (fine for
      strings, numbers, tuples and dicts; pass your own for objects whose repr is abbreviated, such
      as large numpy arrays, or not value-based).
    chunk_size: items per message to a worker; `None` → enough for about 4 chunks per worker per
      call, capped at 256. The time limit is per check whatever the chunk size.
    start_timeout_s: how long a new worker may take to start (import the verifier's module) before
      the pool gives up with an error.

  Workers start in the background when the pool is created, so creating it early (before the first
  rollout) hides their start-up. If `reward_fn` has a callable attribute `warm_up`, each worker
  calls it once before taking work (e.g. to import a heavy verifier library); if it raises, the
  pool reports it as a worker that could not load `reward_fn`.
  """

  def __init__(self, reward_fn: Callable[[str, Any], float], *, num_workers: int | None = None,
               timeout_s: float = 5.0, start_method: str | None = None,
               key_fn: Callable[[Any], Hashable] | None = None, chunk_size: int | None = None,
               start_timeout_s: float = 120.0):
    if not callable(reward_fn):
      raise TypeError(f"reward_fn must be callable, got {type(reward_fn).__name__}")
    if num_workers is None:
      num_workers = os.cpu_count() or 1
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
      raise ValueError(f"num_workers must be an int >= 0 (0 = inline), got {num_workers!r}")
    if not isinstance(timeout_s, (int, float)) or not timeout_s > 0 or not math.isfinite(timeout_s):
      raise ValueError(f"timeout_s must be a finite number > 0, got {timeout_s!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
      raise ValueError(f"chunk_size must be an int >= 1 or None, got {chunk_size!r}")
    if not start_timeout_s > 0:
      raise ValueError(f"start_timeout_s must be > 0, got {start_timeout_s!r}")
    if key_fn is not None and not callable(key_fn):
      raise TypeError(f"key_fn must be callable or None, got {type(key_fn).__name__}")
    if start_method is None:
      start_method = default_start_method()
    if start_method == "fork":
      raise ValueError("start_method='fork' is unsafe once JAX is initialised in this process "
                       "(its threads and locks are copied mid-state); use 'forkserver' or 'spawn'")
    if start_method not in ("forkserver", "spawn"):
      raise ValueError(f"start_method must be 'forkserver' or 'spawn', got {start_method!r}")
    if start_method not in mp.get_all_start_methods():
      raise ValueError(f"start_method {start_method!r} is not available on this platform")

    self.reward_fn = reward_fn
    self.num_workers = num_workers
    self.timeout_s = float(timeout_s)
    self.start_method = start_method
    self.key_fn = key_fn if key_fn is not None else _default_key
    self.chunk_size = chunk_size
    self.start_timeout_s = float(start_timeout_s)
    self.last_errors: list[str] = []  # first few error messages of the latest `score` call
    self._closed = False
    self._workers: list[_Worker] = []
    self._ctx = None
    self._reward_fn_bytes = b""
    if num_workers > 0:
      try:
        self._reward_fn_bytes = pickle.dumps(reward_fn)
      except Exception as e:
        raise TypeError("reward_fn must be picklable by reference for worker processes (a "
                        "top-level function or functools.partial of one, not a lambda or closure); "
                        f"pickling failed: {e}") from e
      self._ctx = mp.get_context(start_method)
    # Registered before any worker starts, so even a failure half-way through starting leaves none.
    self._finalizer = weakref.finalize(self, _shutdown, self._workers)
    self._start_workers()

  # -- lifecycle ----------------------------------------------------------------------------------

  def _start_workers(self) -> None:
    while len(self._workers) < self.num_workers:
      self._workers.append(_Worker(self._ctx, self._reward_fn_bytes, self.timeout_s))

  @property
  def worker_pids(self) -> list[int]:
    """PIDs of the current worker processes (replacements included; empty inline or after close)."""
    return [w.pid for w in self._workers if w.pid is not None]

  def close(self) -> None:
    """Stop all workers (idempotent): ask politely, then terminate/kill stragglers and join them."""
    self._closed = True
    self._finalizer()

  def __enter__(self) -> RewardPool:
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()

  def __repr__(self) -> str:
    mode = "inline" if self.num_workers == 0 else f"{self.num_workers} workers, {self.start_method}"
    return f"RewardPool({mode}, timeout_s={self.timeout_s}{', closed' if self._closed else ''})"

  # -- scoring ------------------------------------------------------------------------------------

  def score(self, items: Sequence[tuple[str, Any]]) -> tuple[np.ndarray, dict[str, float]]:
    """Rewards for `items` = [(completion, problem), ...], in input order, and stats of this call.

    Returns:
      rewards: float32 [N]; 0.0 for a check that timed out, raised, returned a non-finite or
        non-numeric value, or whose worker died.
      stats: `total` (N), `unique` (checks actually run after dedup), `timeouts`, `errors`,
        `crashes` (each counted per unique check), `replaced` (workers restarted), `wall_s`,
        `items_per_s` (N / wall_s). The first few error messages are kept in `self.last_errors`.
    """
    if self._closed:
      raise RuntimeError("RewardPool is closed")
    t0 = time.monotonic()
    # Dedup on (completion, problem key); `inverse[i]` is item i's unique check.
    index: dict[tuple[str, Hashable], int] = {}
    unique: list[tuple[str, Any]] = []
    inverse = np.empty(len(items), dtype=np.int64)
    for i, item in enumerate(items):
      try:
        completion, problem = item
      except (TypeError, ValueError):
        raise TypeError(f"items[{i}] must be a (completion, problem) pair, "
                        f"got {item!r:.200}") from None
      key = (completion, self.key_fn(problem))
      try:
        u = index.setdefault(key, len(unique))
      except TypeError as e:
        raise TypeError(f"key_fn(problem) must be hashable (items[{i}]): {e}") from None
      if u == len(unique):
        unique.append((completion, problem))
      inverse[i] = u

    counts = {"timeouts": 0, "errors": 0, "crashes": 0, "replaced": 0}
    self.last_errors = []
    if self.num_workers == 0:
      values = self._score_inline(unique, counts)
    else:
      values = self._score_pool(unique, counts)
    rewards = values[inverse] if len(items) else np.zeros(0, np.float32)
    wall = time.monotonic() - t0
    stats: dict[str, float] = {"total": len(items), "unique": len(unique), **counts, "wall_s": wall,
                               "items_per_s": len(items) / wall if wall > 0 else float("inf")}
    if counts["timeouts"] or counts["errors"] or counts["crashes"]:
      _log.debug("RewardPool: %d timeouts, %d errors, %d crashes of %d checks", counts["timeouts"],
                 counts["errors"], counts["crashes"], len(unique))
    return rewards.astype(np.float32, copy=False), stats

  def _note_error(self, counts: dict[str, int], kind: str, message: str) -> None:
    counts[kind] += 1
    if len(self.last_errors) < _MAX_ERROR_MESSAGES:
      self.last_errors.append(message)

  def _score_inline(self, unique: list[tuple[str, Any]], counts: dict[str, int]) -> np.ndarray:
    values = np.zeros(len(unique), np.float32)
    for u, (completion, problem) in enumerate(unique):
      status, value, message = _run_check(self.reward_fn, completion, problem)
      values[u] = value
      if status != _OK:
        self._note_error(counts, "errors", message or "error")
    return values

  def _score_pool(self, unique: list[tuple[str, Any]], counts: dict[str, int]) -> np.ndarray:
    """The event loop of the module docstring. Any exception (Ctrl-C too) resets the workers."""
    values = np.zeros(len(unique), np.float32)
    if not unique:
      return values
    chunk_size = self.chunk_size or max(1, min(256, -(-len(unique) // (4 * self.num_workers))))
    pending: collections.deque[int] = collections.deque(range(len(unique)))
    remaining = len(unique)
    try:
      while remaining:
        self._start_workers()
        now = time.monotonic()
        # Hand a chunk to every idle, ready worker.
        for w in self._workers:
          if w.ready and not w.queue and pending:
            uids = [pending.popleft() for _ in range(min(chunk_size, len(pending)))]
            w.queue.extend(uids)
            w.idle_since = now
            try:
              w.conn.send([(u, *unique[u]) for u in uids])
            except (OSError, ValueError):
              pass  # it died while idle; its sentinel fires below and the chunk is requeued
        # Sleep until a message, a death, or the nearest deadline.
        deadlines = [w.running()[1] + self.timeout_s if w.queue else
                     w.started_at + self.start_timeout_s for w in self._workers
                     if w.queue or not w.ready]
        wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        handles = [w.conn for w in self._workers] + [w.process.sentinel for w in self._workers]
        fired = set(mp_connection.wait(handles, timeout=wait_s))
        for w in list(self._workers):
          if w.conn in fired:
            remaining -= self._drain(w, values, counts)
          if w.process.sentinel in fired:
            remaining -= self._drain(w, values, counts)
            remaining -= self._replace(w, pending, values, counts, "crashes")
        for w in list(self._workers):
          if w.queue and time.monotonic() >= w.running()[1] + self.timeout_s:
            remaining -= self._drain(w, values, counts)  # answers may have just arrived
            if w.queue and time.monotonic() >= w.running()[1] + self.timeout_s:
              remaining -= self._replace(w, pending, values, counts, "timeouts")
          elif not w.ready and time.monotonic() >= w.started_at + self.start_timeout_s:
            raise RuntimeError(f"a RewardPool worker did not start within {self.start_timeout_s}s")
    except BaseException:
      # Workers may be mid-chunk with state this call no longer tracks: replace them all lazily.
      _shutdown(self._workers)
      raise
    return values

  def _drain(self, w: _Worker, values: np.ndarray, counts: dict[str, int]) -> int:
    """Read every message `w` has sent; returns how many checks finished."""
    done = 0
    try:
      while w.conn.poll():
        msg = w.conn.recv()
        if msg[0] == _MSG_RESULTS:
          for uid, status, value, message in msg[1]:
            if not w.queue or w.queue[0] != uid:
              raise RuntimeError(f"RewardPool protocol error: answer for {uid}, expected "
                                 f"{w.queue[0] if w.queue else None}")
            w.queue.popleft()
            values[uid] = value
            if status != _OK:
              self._note_error(counts, "errors", message or "error")
            done += 1
          w.answered += len(msg[1])
          w.idle_since = time.monotonic()
        elif msg[0] == _MSG_READY:
          w.ready = True
        elif msg[0] == _MSG_START_ERROR:
          raise RuntimeError("a RewardPool worker could not load reward_fn (it must be importable "
                             f"from a fresh interpreter):\n{msg[1]}")
    except (EOFError, OSError):
      pass  # the worker is gone; its sentinel reports it
    return done

  def _replace(self, w: _Worker, pending: collections.deque[int], values: np.ndarray,
               counts: dict[str, int], kind: str) -> int:
    """Kill `w`, score its running check 0.0 as `kind`, requeue the rest of its chunk, start anew.

    Returns how many checks this finished (1 if a check was in flight, else 0).
    """
    if not w.ready and w.process.exitcode is not None:
      raise RuntimeError(f"a RewardPool worker exited during start-up (exit code "
                         f"{w.process.exitcode}); is reward_fn importable from a fresh "
                         "interpreter, and does the main script guard its work with "
                         "`if __name__ == '__main__':`?")
    done = 0
    if w.queue:
      position = w.running()[0]
      uid = w.queue[position]
      values[uid] = 0.0
      if kind == "timeouts":
        message = f"check timed out after {self.timeout_s}s"
      else:
        message = f"worker died (exit code {w.process.exitcode})"
      self._note_error(counts, kind, message)
      done = 1
      # The rest of the chunk, incl. checks it finished but had not reported yet, goes back.
      rest = [u for i, u in enumerate(w.queue) if i != position]
      pending.extendleft(reversed(rest))
      w.queue.clear()
    w.process.kill()
    w.stop(graceful=False)
    self._workers[self._workers.index(w)] = _Worker(self._ctx, self._reward_fn_bytes,
                                                    self.timeout_s)
    counts["replaced"] += 1
    return done
