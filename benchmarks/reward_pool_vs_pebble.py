"""RewardPool vs pebble.ProcessPool: throughput on Countdown checks, and a hanging check.

Why `rl/scoring.py` keeps its own pool (the numbers are in its docstring). pebble is not a
dependency of the project:

  pip install pebble==5.2.3 && PYTHONPATH=tests python benchmarks/reward_pool_vs_pebble.py

N (checks, default 20000) and REPS (best of, default 5) are read from the environment.
"""
import multiprocessing as mp
import os
import random
import sys
import time
from concurrent.futures import TimeoutError as FutTimeout

import pebble

from mdpo_jax.rl.scoring import RewardPool
from mdpo_jax.tasks import countdown as cd
import scoring_helpers as helpers

N = int(os.environ.get("N", 20000))
W = 2
TIMEOUT = 5.0
REPS = int(os.environ.get("REPS", 5))  # best of REPS (the machine is shared)


def items(n):
  problems = cd.generate_problems(2000, seed=0)
  rng = random.Random(0)
  out = []
  for i in range(n):
    p = problems[i % len(problems)]
    sol = cd.solution_text(p)
    kind = rng.random()
    if kind < 0.3:
      c = f"{sol} {i}"
    elif kind < 0.7:
      c = sol[: rng.randrange(1, max(2, len(sol)))] + f"+{i}"
    else:
      c = f"\\boxed{{{'+'.join(map(str, p.numbers))}}} {i}"
    out.append((c, p))
  return out  # all distinct (i is in the completion), so dedup does not help RewardPool


def bench_rewardpool(its, chunk_size=None):
  key = lambda p: (tuple(sorted(p.numbers)), p.target)  # CountdownTask.key, as the RL loop passes
  with RewardPool(cd.countdown_reward, num_workers=W, timeout_s=TIMEOUT, chunk_size=chunk_size,
                  key_fn=key) as pool:
    pool.score(its[:100])
    dts = []
    for _ in range(REPS):
      t0 = time.perf_counter()
      r, s = pool.score(its)
      dts.append(time.perf_counter() - t0)
  assert s["unique"] == len(its)
  return r, min(dts)


def pebble_pool():
  return pebble.ProcessPool(max_workers=W, context=mp.get_context("forkserver"))


def bench_pebble_schedule(its):
  with pebble_pool() as pool:
    [f.result() for f in [pool.schedule(cd.countdown_reward, args=it, timeout=TIMEOUT) for it in its[:100]]]
    dts = []
    for _ in range(REPS):
      t0 = time.perf_counter()
      futs = [pool.schedule(cd.countdown_reward, args=it, timeout=TIMEOUT) for it in its]
      r = [f.result() for f in futs]
      dts.append(time.perf_counter() - t0)
  return r, min(dts)


def bench_pebble_map(its, chunksize):
  cs, ps = zip(*its)
  with pebble_pool() as pool:
    list(pool.map(cd.countdown_reward, cs[:100], ps[:100], chunksize=10, timeout=TIMEOUT).result())
    dts = []
    for _ in range(REPS):
      t0 = time.perf_counter()
      r = list(pool.map(cd.countdown_reward, cs, ps, chunksize=chunksize, timeout=TIMEOUT).result())
      dts.append(time.perf_counter() - t0)
  return r, min(dts)


def hang_items():
  its = [(str(i % 10), i % 10) for i in range(200)]
  its[50] = ("hang", 0)
  return its


def hang_rewardpool(timeout):
  its = hang_items()
  with RewardPool(helpers.misbehaving_reward, num_workers=W, timeout_s=timeout, chunk_size=64) as pool:
    pool.score([("1", 1)] * 2)
    t0 = time.perf_counter()
    r, s = pool.score(its)
    dt = time.perf_counter() - t0
  return dt, int(sum(r)), s["timeouts"]


def hang_pebble_schedule(timeout):
  its = hang_items()
  with pebble_pool() as pool:
    pool.schedule(helpers.int_reward, args=("1", 1)).result()
    t0 = time.perf_counter()
    futs = [pool.schedule(helpers.misbehaving_reward, args=it, timeout=timeout) for it in its]
    ok, to = 0, 0
    for f in futs:
      try:
        ok += int(f.result())
      except FutTimeout:
        to += 1
    dt = time.perf_counter() - t0
  return dt, ok, to


def hang_pebble_map(timeout, chunksize):
  its = hang_items()
  cs, ps = zip(*its)
  with pebble_pool() as pool:
    pool.schedule(helpers.int_reward, args=("1", 1)).result()
    t0 = time.perf_counter()
    it = pool.map(helpers.misbehaving_reward, cs, ps, chunksize=chunksize, timeout=timeout).result()
    ok, to = 0, 0
    while True:
      try:
        ok += int(next(it))
      except StopIteration:
        break
      except FutTimeout:
        to += 1
    dt = time.perf_counter() - t0
  return dt, ok, to


def slow_chunk_pebble_map(timeout):
  """Five 0.4-0.6 s checks (each under a 1 s limit) in one chunk."""
  its = [(f"sleep:{t}", 0) for t in (0.4, 0.45, 0.5, 0.55, 0.6)]
  cs, ps = zip(*its)
  with pebble_pool() as pool:
    pool.schedule(helpers.int_reward, args=("1", 1)).result()
    it = pool.map(helpers.misbehaving_reward, cs, ps, chunksize=5, timeout=timeout).result()
    out = []
    while True:
      try:
        out.append(next(it))
      except StopIteration:
        break
      except FutTimeout:
        out.append("timeout")
  return out


if __name__ == "__main__":
  print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, pebble {pebble.__version__}, "
        f"N={N}, workers={W}, best of {REPS}")
  its = items(N)
  serial = float("inf")
  for _ in range(REPS):
    t0 = time.perf_counter()
    ref = [cd.countdown_reward(c, p) for c, p in its]
    serial = min(serial, time.perf_counter() - t0)
  print(f"serial in-process:                  {N / serial:9.0f} checks/s ({serial:.2f} s)")
  r, dt = bench_rewardpool(its)
  assert list(r) == ref
  print(f"RewardPool (auto chunks):           {N / dt:9.0f} checks/s ({dt:.2f} s)")
  for cs in (16, 256):
    r, dt = bench_rewardpool(its, cs)
    assert list(r) == ref
    print(f"RewardPool chunk_size={cs:<4}:         {N / dt:9.0f} checks/s ({dt:.2f} s)")
  m = min(N, 4000)
  r, dt = bench_pebble_schedule(its[:m])
  assert r == ref[:m]
  print(f"pebble schedule per item (N={m}):  {m / dt:9.0f} checks/s ({dt:.2f} s)")
  for chunk in (16, 256, 2500):
    r, dt = bench_pebble_map(its, chunk)
    assert r == ref
    print(f"pebble map chunksize={chunk:<5}:         {N / dt:9.0f} checks/s ({dt:.2f} s)")
  print("\nhanging check: 200 cheap checks, #50 hangs forever, limit 1 s")
  print("RewardPool chunk 64:        wall %.2f s, right answers %d/199, timeouts %d" % hang_rewardpool(1.0))
  print("pebble schedule per item:   wall %.2f s, right answers %d/199, timeouts %d" % hang_pebble_schedule(1.0))
  print("pebble map chunksize 64:    wall %.2f s, right answers %d/199, timeouts %d" % hang_pebble_map(1.0, 64))
  print("pebble map, five 0.4-0.6 s checks in one chunk, limit 1 s:", slow_chunk_pebble_map(1.0))
