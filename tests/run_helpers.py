"""Shared by the trainer tests: a tiny run configuration, a dense stand-in reward and the
environment of command-line children."""

from __future__ import annotations

import os

from mdpo_jax import tasks
from mdpo_jax.training import run as run_lib


def tiny_run(c):
  """`c` (a recipe's ConfigDict) shrunk to a 1-layer, 32-wide model on 64 problems (64 fresh RL
  prompts), evaluated on 8 with one setting, synchronous checkpoints and no TensorBoard: seconds per run on a CPU."""
  c.model.d_model, c.model.n_layers, c.model.n_heads, c.model.n_kv_heads = 32, 1, 2, 2
  c.model.mlp_hidden_size = 64
  c.task.train_size, c.task.eval_size, c.task.val_size = 64, 8, 16
  c.rl.fresh_size = 64
  c.data.batch_size = 8
  c.eval.num_problems, c.eval.batch_size = 8, 8
  c.eval.gen_length, c.eval.block_length, c.eval.steps = 8, 8, (4,)
  c.eval.remasking = ("low_confidence",)
  c.eval.trajectory_stats = False
  c.logging.tensorboard = False
  c.train.async_checkpoint = False
  return c


def digit_share(completion, problem):
  """A dense stand-in reward (a tiny model never solves Countdown, so the task's reward is all 0,
  and so would be every advantage and gradient): the share of digits in the completion."""
  del problem
  return sum(ch.isdigit() for ch in completion) / max(len(completion), 1)


def use_reward(monkeypatch, reward):
  """Runs built from now on score with `reward` instead of their task's verifier."""
  real_build = tasks.build

  def build(task_cfg, seed):
    task = real_build(task_cfg, seed)
    task.reward = reward
    return task
  monkeypatch.setattr(run_lib.tasks, "build", build)
  return build


def fast_compile_flags() -> str:
  """The suite's XLA_FLAGS (set by conftest) without its virtual device count: the fast-compile
  flags alone, for child processes that choose their own device count."""
  return " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                  if not f.startswith("--xla_force_host_platform_device_count"))


def cli_env() -> dict:
  """The environment of a command-line child process: as a user's shell on a CPU (one device,
  no test-only device count) with the suite's fast-compile flags (see conftest)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = fast_compile_flags()
  return env


def all_eqns(jaxpr):
  """Every equation of a jaxpr, those of its sub-jaxprs (scan, map, checkpoint, ...) included."""
  import jax
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from all_eqns(sub)


def all_shapes(jaxpr) -> set:
  """Every intermediate shape of a jaxpr, sub-jaxprs included."""
  return {v.aval.shape for eqn in all_eqns(jaxpr) for v in eqn.outvars}


def padded_batch(rng, cfg, lengths, total):
  """Left-padded random token rows of the given real lengths: (tokens, attention mask) [B, total]."""
  import numpy as np
  tokens = np.full((len(lengths), total), cfg.pad_token_id, np.int32)
  mask = np.zeros((len(lengths), total), np.int32)
  for r, n in enumerate(lengths):
    tokens[r, total - n:] = rng.integers(0, cfg.vocab_size - 4, n)
    mask[r, total - n:] = 1
  return tokens, mask
