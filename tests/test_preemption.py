"""Real signals to a real training process: SIGTERM (a preemption notice) saves and exits 0 with
one line; SIGKILL at an arbitrary moment (here: while an asynchronous checkpoint may be in
flight) loses at most the steps since the last finished checkpoint. Either way the same command
resumes and the run's losses equal an uninterrupted run's, step for step."""

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mdpo_jax.training import metrics, sft_loop

TESTS = Path(__file__).parent
NUM_STEPS = 10
CONFIG = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from test_training import _tiny_config

def get_config():
  c = _tiny_config(num_steps={NUM_STEPS})
  c.train.checkpoint_every = 2
  c.train.async_checkpoint = True
  c.model.n_layers, c.task.eval_size = 1, 0   # no held-out evaluation: this is about resuming
  return c
"""


def _config(tmp_path):
  path = tmp_path / "preempt_config.py"
  path.write_text(CONFIG)
  namespace = {}
  exec(compile(CONFIG, str(path), "exec"), namespace)   # the test's own config text
  return path, namespace["get_config"]()


def _losses(workdir) -> dict[int, float]:
  path = Path(workdir) / "metrics.jsonl"
  rows = metrics.read_jsonl(path) if path.exists() else []
  return {r["step"]: r["loss"] for r in rows if r.get("loss") is not None}


def _start(config_path, workdir):
  env = dict(os.environ)
  env["JAX_COMPILATION_CACHE_DIR"] = os.environ.get("MDPO_JAX_TEST_COMPILE_CACHE", "")
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"   # as conftest: same programs, cache hits
  return subprocess.Popen([sys.executable, "-m", "mdpo_jax.train", "--config", str(config_path),
                           "--workdir", str(workdir)], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _signal_after(proc, workdir, step: int, signum) -> tuple[int, str, str]:
  """Send `signum` once metrics.jsonl shows `step`; (status, stdout, stderr)."""
  deadline = time.monotonic() + 240
  while max(_losses(workdir), default=0) < step:
    assert proc.poll() is None, proc.communicate()
    assert time.monotonic() < deadline, "the child never reached the step"
    time.sleep(0.05)
  proc.send_signal(signum)
  out, err = proc.communicate(timeout=120)
  return proc.returncode, out, err


def test_sigterm_and_sigkill_to_a_training_process_resume_exactly(tmp_path):
  config_path, c = _config(tmp_path)
  straight = copy.deepcopy(c)   # the reference needs only its losses: no checkpoints to write
  straight.train.checkpoint_every = NUM_STEPS
  sft_loop.train(straight, tmp_path / "straight")
  want = _losses(tmp_path / "straight")
  assert sorted(want) == list(range(1, NUM_STEPS + 1))

  term = tmp_path / "sigterm"
  status, out, err = _signal_after(_start(config_path, term), term, 3, signal.SIGTERM)
  assert status == 0, err[-2000:]
  stopped_at = max(_losses(term))
  assert out.strip().splitlines()[-1] == (
      f"stopped by a signal at step {stopped_at}: checkpoint saved; run the same command to "
      "resume")
  assert sorted(os.listdir(term / "checkpoints"))[-1] == str(stopped_at)

  kill = tmp_path / "sigkill"
  status, _, _ = _signal_after(_start(config_path, kill), kill, 5, signal.SIGKILL)
  assert status == -signal.SIGKILL
  killed_at = max(_losses(kill))

  for workdir, interrupted_at in ((term, stopped_at), (kill, killed_at)):
    assert sft_loop.train(c, workdir)["step"] == NUM_STEPS
    rows = [r for r in metrics.read_jsonl(workdir / "metrics.jsonl") if "loss" in r]
    steps = [r["step"] for r in rows]
    assert steps[:interrupted_at] == list(range(1, interrupted_at + 1))
    resumed_from = steps[interrupted_at] - 1    # the checkpoint the rerun started from
    if workdir == term:   # saved on the signal: nothing redone
      assert resumed_from == stopped_at
    else:                 # the last finished checkpoint (an in-flight one is discarded)
      assert resumed_from % 2 == 0 and resumed_from <= killed_at
    assert steps[interrupted_at:] == list(range(resumed_from + 1, NUM_STEPS + 1))
    for r in rows:   # every logged step, before and after the interruption, as uninterrupted
      np.testing.assert_allclose(r["loss"], want[r["step"]], rtol=1e-5, err_msg=str(workdir))
