"""RewardPool: order, time limits, errors, crashes, dedup, clean shutdown, inline equivalence."""

from __future__ import annotations

import functools
import os
import pickle
import random
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from mdpo_jax.rl.scoring import RewardPool

import scoring_helpers as helpers  # tests/ is on sys.path (pytest rootdir-relative import)


def _items(n: int, seed: int = 0) -> list[tuple[str, int]]:
  """Completions that are right, wrong, or unparsable for small integer targets."""
  rng = random.Random(seed)
  out = []
  for _ in range(n):
    target = rng.randrange(10)
    kind = rng.random()
    if kind < 0.4:
      completion = str(target)
    elif kind < 0.8:
      completion = str(rng.randrange(10))
    else:
      completion = "x" * rng.randrange(1, 4)
    out.append((completion, target))
  return out


def _serial(items, fn=helpers.int_reward) -> np.ndarray:
  return np.array([fn(c, p) for c, p in items], np.float32)


def _gone(pid: int) -> bool:
  """True once `pid` no longer exists (or is a zombie, i.e. has exited and only awaits reaping)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] == "Z"
  except FileNotFoundError:
    return True
  except OSError:
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return True
    return False


def _all_gone(pids, wait_s: float = 5.0) -> bool:
  deadline = time.monotonic() + wait_s
  while time.monotonic() < deadline:
    if all(_gone(p) for p in pids):
      return True
    time.sleep(0.05)
  return all(_gone(p) for p in pids)


def test_results_equal_serial_in_order():
  items = _items(400)
  with RewardPool(helpers.int_reward, num_workers=2, timeout_s=5.0, chunk_size=16) as pool:
    rewards, stats = pool.score(items)
  np.testing.assert_array_equal(rewards, _serial(items))
  assert rewards.dtype == np.float32 and rewards.shape == (400,)
  assert stats["total"] == 400 and stats["unique"] == len(set(items))
  assert stats["timeouts"] == stats["errors"] == stats["crashes"] == 0
  assert stats["wall_s"] > 0


def test_hung_check_times_out_and_pool_recovers():
  timeout_s = 1.0
  items = _items(40, seed=1)
  items[13] = ("hang", 3)  # in the middle of a chunk: its chunk-mates must still be scored
  with RewardPool(helpers.misbehaving_reward, num_workers=2, timeout_s=timeout_s,
                  chunk_size=64) as pool:
    pool.score(items[:2])  # workers up, so the timing below is the check's, not start-up
    pids_before = set(pool.worker_pids)
    t0 = time.monotonic()
    rewards, stats = pool.score(items)
    elapsed = time.monotonic() - t0
    assert elapsed < timeout_s + 3.0, elapsed
    assert stats["timeouts"] == 1 and stats["errors"] == 0 and stats["crashes"] == 0
    assert stats["replaced"] == 1
    expected = _serial(items[:13] + [("0", 1)] + items[14:])  # the hung one scores 0.0
    np.testing.assert_array_equal(rewards, expected)
    # The hung worker was killed and replaced; later calls work with the full pool.
    assert len(pool.worker_pids) == 2 and set(pool.worker_pids) != pids_before
    killed = pids_before - set(pool.worker_pids)
    assert _all_gone(killed)
    more = _items(100, seed=2)
    rewards2, stats2 = pool.score(more)
    np.testing.assert_array_equal(rewards2, _serial(more))
    assert stats2["timeouts"] == 0


def test_time_limit_is_per_check_not_per_chunk():
  """One worker, one chunk of checks that each take 40–60% of the limit: none is timed out, although
  the chunk as a whole runs well past the limit; a hang that holds the GIL is still caught."""
  sleeps = [0.4, 0.45, 0.5, 0.55, 0.6]  # 2.5 s in all, each < timeout_s = 1.0
  items = [(f"sleep:{t}", 0) for t in sleeps] + [("regex", 0), ("2", 2)]
  with RewardPool(helpers.misbehaving_reward, num_workers=1, timeout_s=1.0, chunk_size=64) as pool:
    pool.score([("1", 1)])
    t0 = time.monotonic()
    rewards, stats = pool.score(items)
    assert time.monotonic() - t0 < sum(sleeps) + 1.0 + 4.0
  np.testing.assert_array_equal(rewards, [1, 1, 1, 1, 1, 0, 1])
  assert stats["timeouts"] == 1 and stats["errors"] == 0


def test_several_hung_checks_on_every_worker():
  """More hung checks than workers: each costs one timeout on some worker; the call still ends."""
  items = [("hang", 0), ("1", 1), ("hang", 1), ("2", 2), ("hang", 2), ("3", 3)]
  with RewardPool(helpers.misbehaving_reward, num_workers=2, timeout_s=0.5, chunk_size=3) as pool:
    t0 = time.monotonic()
    rewards, stats = pool.score(items)
    assert time.monotonic() - t0 < 3 * 0.5 + 4.0
  np.testing.assert_array_equal(rewards, [0, 1, 0, 1, 0, 1])
  assert stats["timeouts"] == 3 and stats["unique"] == 6


def test_raise_and_crash_score_zero_and_are_counted():
  items = _items(30, seed=3)
  items[4] = ("raise", 1)
  items[17] = ("exit", 1)
  items[25] = ("nan", 1)
  with RewardPool(helpers.misbehaving_reward, num_workers=2, timeout_s=5.0, chunk_size=8) as pool:
    rewards, stats = pool.score(items)
    assert stats["errors"] == 2 and stats["crashes"] == 1 and stats["timeouts"] == 0
    assert any("ValueError: bad completion" in m for m in pool.last_errors)
    assert any("non-finite" in m for m in pool.last_errors)
    fixed = [("0", 1) if c in ("raise", "exit", "nan") else (c, p) for c, p in items]
    np.testing.assert_array_equal(rewards, _serial(fixed))
    # A worker that exits on every item of a call: each crash consumes one item, no livelock.
    rewards, stats = pool.score([("exit", 0), ("exit", 1), ("5", 5)])
    np.testing.assert_array_equal(rewards, [0, 0, 1])
    assert stats["crashes"] == 2
    rewards, stats = pool.score(items[:4])
    np.testing.assert_array_equal(rewards, _serial(items[:4]))
    assert len(pool.worker_pids) == 2


def test_dedup_runs_each_distinct_check_once(tmp_path):
  fn = functools.partial(helpers.counting_reward, log_dir=str(tmp_path))
  items = [("7", 7)] * 50 + [("8", 7)] * 30 + [("7", 7)] * 20
  with RewardPool(fn, num_workers=2, timeout_s=5.0) as pool:
    rewards, stats = pool.score(items)
  assert len(os.listdir(tmp_path)) == 2  # one verifier call per distinct pair
  assert stats["total"] == 100 and stats["unique"] == 2
  np.testing.assert_array_equal(rewards, [1.0] * 50 + [0.0] * 30 + [1.0] * 20)


def test_dedup_uses_key_fn():
  """Problems differing only in fields key_fn ignores are one check (the first one is scored)."""
  def target_only(problem):  # runs in the parent, so a local function is fine
    return problem["target"]
  items = [("4", {"target": 4, "id": i}) for i in range(10)] + [("4", {"target": 5, "id": 0})]
  with RewardPool(helpers.dict_reward, num_workers=0, key_fn=target_only) as pool:
    rewards, stats = pool.score(items)
  assert stats["unique"] == 2
  np.testing.assert_array_equal(rewards, [1.0] * 10 + [0.0])
  with RewardPool(helpers.dict_reward, num_workers=0) as pool:  # default repr: all distinct
    assert pool.score(items)[1]["unique"] == 11


def test_inline_equals_pool():
  items = _items(200, seed=4)
  items[7] = ("raise", 0)
  items[90] = ("nan", 0)
  with RewardPool(helpers.misbehaving_reward, num_workers=0) as inline:
    r_inline, s_inline = inline.score(items)
  with RewardPool(helpers.misbehaving_reward, num_workers=2, chunk_size=32) as pool:
    r_pool, s_pool = pool.score(items)
  np.testing.assert_array_equal(r_inline, r_pool)
  for key in ("total", "unique", "errors", "timeouts", "crashes"):
    assert s_inline[key] == s_pool[key], key
  assert s_inline["errors"] == 2


def test_no_orphans_after_close_even_after_replacements():
  pool = RewardPool(helpers.misbehaving_reward, num_workers=2, timeout_s=0.5)
  seen = set(pool.worker_pids)
  pool.score([("hang", 0), ("exit", 0), ("1", 1)])
  seen |= set(pool.worker_pids)
  assert len(seen) >= 4  # two replacements happened
  pool.close()
  pool.close()  # idempotent
  assert pool.worker_pids == []
  assert _all_gone(seen)
  with pytest.raises(RuntimeError, match="closed"):
    pool.score([("1", 1)])


def test_no_orphans_when_the_body_raises():
  with pytest.raises(KeyError):
    with RewardPool(helpers.int_reward, num_workers=2) as pool:
      pool.score([("1", 1)])
      pids = pool.worker_pids
      raise KeyError("boom")
  assert len(pids) == 2 and _all_gone(pids)


def test_failure_inside_score_resets_workers():
  """An exception mid-call (an unpicklable problem) leaves no stale workers; the pool recovers."""
  with RewardPool(helpers.int_reward, num_workers=2) as pool:
    pids = pool.worker_pids
    with pytest.raises(Exception):
      pool.score([("1", lambda: 1)])
    assert _all_gone(pids)
    rewards, _ = pool.score([("1", 1), ("2", 1)])
    np.testing.assert_array_equal(rewards, [1.0, 0.0])


_KILLED_PARENT_SCRIPT = """
import os, sys, time
sys.path.insert(0, {tests_dir!r})
from mdpo_jax.rl.scoring import RewardPool
import scoring_helpers

if __name__ == "__main__":
  pool = RewardPool(scoring_helpers.misbehaving_reward, num_workers=2, timeout_s=600.0)
  pool.score([("1", 1), ("2", 2)])
  print(" ".join(map(str, pool.worker_pids)), flush=True)
  pool.score([("hang", 0), ("hang", 1)])  # killed while both workers hang
"""


def test_workers_exit_when_the_parent_is_killed(tmp_path):
  """SIGKILL leaves the parent no chance to clean up: the workers notice and exit by themselves."""
  script = tmp_path / "parent.py"
  script.write_text(_KILLED_PARENT_SCRIPT.format(tests_dir=os.path.dirname(__file__)))
  proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
  try:
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2
    time.sleep(0.3)  # both are now hung
    proc.kill()
    proc.wait(10)
    assert _all_gone(pids, wait_s=10.0)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait(10)


_ORPHAN_IN_C_SCRIPT = """
import os, signal, sys, threading
sys.path.insert(0, {tests_dir!r})
from mdpo_jax.rl.scoring import RewardPool
import scoring_helpers

if __name__ == "__main__":
  pool = RewardPool(scoring_helpers.misbehaving_reward, num_workers=1, timeout_s=0.3)
  pool.score([("1", 1)])
  print(" ".join(map(str, pool.worker_pids)), flush=True)
  threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGKILL)).start()
  pool.score([("regex", 0)])  # killed 0.1 s into a check that holds the GIL, before its limit
"""


def test_orphan_stuck_in_c_code_is_ended_by_the_cpu_limit(tmp_path):
  """The parent dies while its worker is in C code holding the GIL, so the worker's watcher thread
  cannot run: the RLIMIT_CPU backstop ends it (at most 2·0.3 + 2.25 CPU-seconds into the check;
  without it the worker runs on indefinitely — checked by hand)."""
  script = tmp_path / "parent.py"
  script.write_text(_ORPHAN_IN_C_SCRIPT.format(tests_dir=os.path.dirname(__file__)))
  proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
  pids = []
  try:
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 1
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert _all_gone(pids, wait_s=10.0)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait(10)
    for pid in pids:
      if not _gone(pid):
        os.kill(pid, signal.SIGKILL)


def test_warm_up_runs_before_work_and_in_worker_tells_where():
  """A verifier's `warm_up` (1 s) is not charged to its first check's limit (0.3 s); a failing one
  is a clear start-up error; `in_worker()` is True in workers only."""
  with RewardPool(helpers.slow_start_reward, num_workers=1, timeout_s=0.3) as pool:
    rewards, stats = pool.score([("1", 1), ("2", 1)])
  np.testing.assert_array_equal(rewards, [1.0, 0.0])
  assert stats["timeouts"] == 0
  with RewardPool(helpers.broken_start_reward, num_workers=1) as pool:
    with pytest.raises(RuntimeError, match="could not load reward_fn(.|\n)*verifier_library"):
      pool.score([("1", 1)])
  with RewardPool(helpers.where_reward, num_workers=1) as pool:
    assert pool.score([("a", 0)])[0].tolist() == [1.0]
  with RewardPool(helpers.where_reward, num_workers=0) as pool:
    assert pool.score([("a", 0)])[0].tolist() == [0.0]


class _Interrupt(Exception):
  pass


def _raise_interrupt(signum, frame):
  raise _Interrupt()


def test_interrupt_during_a_hung_check_leaves_no_orphans():
  """The parent is interrupted (as by Ctrl-C) while a worker hangs: every worker is killed."""
  with RewardPool(helpers.misbehaving_reward, num_workers=2, timeout_s=60.0) as pool:
    pool.score([("1", 1), ("2", 2)])
    pids = pool.worker_pids
    previous = signal.signal(signal.SIGALRM, _raise_interrupt)
    try:
      signal.setitimer(signal.ITIMER_REAL, 0.5)
      with pytest.raises(_Interrupt):
        pool.score([("hang", 0), ("regex", 0)])
    finally:
      signal.setitimer(signal.ITIMER_REAL, 0)
      signal.signal(signal.SIGALRM, previous)
    assert _all_gone(pids)
    np.testing.assert_array_equal(pool.score([("3", 3)])[0], [1.0])  # fresh workers


def test_worker_that_cannot_load_reward_fn_is_a_clear_error():
  phantom = types.ModuleType("phantom_scoring_module")  # in this process only, not importable
  def reward(completion, problem):
    return 1.0
  reward.__module__ = phantom.__name__
  reward.__qualname__ = "reward"
  phantom.reward = reward
  sys.modules[phantom.__name__] = phantom
  try:
    pickle.dumps(reward)  # fine here ...
    with RewardPool(reward, num_workers=1) as pool:
      with pytest.raises(RuntimeError, match="could not load reward_fn"):  # ... not in a worker
        pool.score([("1", 1)])
  finally:
    del sys.modules[phantom.__name__]


def test_empty_and_bad_arguments():
  with RewardPool(helpers.int_reward, num_workers=1) as pool:
    rewards, stats = pool.score([])
    assert rewards.shape == (0,) and rewards.dtype == np.float32 and stats["total"] == 0
    with pytest.raises(TypeError, match="pair"):
      pool.score(["1"])
  with pytest.raises(ValueError, match="timeout_s"):
    RewardPool(helpers.int_reward, timeout_s=0)
  with pytest.raises(ValueError, match="timeout_s"):
    RewardPool(helpers.int_reward, timeout_s=-1.0)
  with pytest.raises(ValueError, match="num_workers"):
    RewardPool(helpers.int_reward, num_workers=-1)
  with pytest.raises(ValueError, match="fork"):
    RewardPool(helpers.int_reward, start_method="fork")
  with pytest.raises(TypeError, match="picklable"):
    RewardPool(lambda c, p: 1.0, num_workers=1)
  with RewardPool(lambda c, p: 1.0, num_workers=0) as inline:  # inline needs no pickling
    assert inline.score([("a", 0)])[0].tolist() == [1.0]


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_start_methods(start_method):
  items = _items(50, seed=5)
  with RewardPool(helpers.int_reward, num_workers=2, start_method=start_method) as pool:
    np.testing.assert_array_equal(pool.score(items)[0], _serial(items))
