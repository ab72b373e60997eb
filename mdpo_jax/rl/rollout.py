"""Rollouts for RL: G trajectories per prompt, per-step rewards, and MDPO training examples.

A rollout batch is B prompts × G samples from the jitted scan sampler with the trajectory record
(SPEC §3). Every intermediate full prediction x̂0_t is decoded and scored by the task verifier on
the host (`RewardPool`: parallel, time-limited, deduplicated), giving rewards [B·G, T]. MDPO
turns them into per-step advantages (SPEC §4.3), keeps the K steps with the largest |Â_t| per
rollout, and each kept step becomes one training example: input x_t, target x̂0_t, the positions
masked in x_t, the stored confidences and Â_t.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import numpy as np

from mdpo_jax import parallel
from mdpo_jax.data.tokenizer import decode_completions
from mdpo_jax.rl import advantages as adv_lib
from mdpo_jax.sampling.sampler import SamplerConfig, Trajectory, generate


@dataclasses.dataclass
class RolloutBatch:
  """Host copies of one rollout batch (N = B·G rows, rows of a group are contiguous)."""

  prompts_NxP: np.ndarray
  prompt_mask_NxP: np.ndarray
  tokens_NxL: np.ndarray        # final sequences
  traj: Trajectory | None       # [T, N, L] arrays (numpy)
  problems: list                # length N (each prompt's problem repeated G times)
  group_size: int


def sample(forward_fn: Callable, params, prompts_BxP: np.ndarray, prompt_mask_BxP: np.ndarray,
           problems: Sequence, sampler_config: SamplerConfig, rng: jax.Array, *,
           group_size: int, with_trajectory: bool = True,
           place: Callable | None = None) -> RolloutBatch:
  """G samples per prompt in one `generate` call (the batch is B·G rows).

  `place` puts the repeated host prompts (and mask) on devices, e.g. split over the data axes
  (`parallel.shard_rows`), so that every device samples its own rows; the results come back
  whole to every host (`parallel.to_host`). None: jit holds the prompts whole on each device."""
  prompts = np.repeat(np.asarray(prompts_BxP), group_size, axis=0)
  mask = np.repeat(np.asarray(prompt_mask_BxP), group_size, axis=0)
  place = place or (lambda x: x)
  out = generate(forward_fn, params, place(prompts), sampler_config, rng,
                 prompt_mask=place(mask), return_trajectory=with_trajectory)
  tokens, traj = out if with_trajectory else (out, None)
  traj = jax.tree.map(parallel.to_host, traj) if traj is not None else None
  return RolloutBatch(prompts, mask, parallel.to_host(tokens), traj,
                      [p for p in problems for _ in range(group_size)], group_size)


@dataclasses.dataclass
class Rows:
  """What an RL algorithm makes of one scored rollout batch (`rl/algorithms.py`)."""

  rows: dict[str, np.ndarray]   # training rows (host arrays, leading dim = rows)
  final_rewards: np.ndarray     # [N] reward of each rollout's final answer
  stats: dict[str, float]       # the reward pool's counts (timeouts, errors, crashes)
  metrics: dict[str, float]     # algorithm-specific logging


@dataclasses.dataclass(frozen=True)
class Scorer:
  """How completions become rewards: the tokenizer, the stop ids and the task's reward pool."""

  tokenizer: object
  pool: object          # rl.scoring.RewardPool (or anything with `score(items)`)
  stops: tuple[int, ...]

  def step_rewards(self, batch: RolloutBatch):
    return step_rewards(batch, self.tokenizer, self.pool, self.stops)

  def final_rewards(self, batch: RolloutBatch):
    return final_rewards(batch, self.tokenizer, self.pool, self.stops)


def step_rewards(batch: RolloutBatch, tokenizer, pool, stops: Sequence[int]):
  """Rewards of every intermediate prediction x̂0_t: [N, T] float32, plus the pool's stats."""
  p = batch.prompts_NxP.shape[1]
  x0_TxNxG = batch.traj.x0[:, :, p:]
  t_steps, n = x0_TxNxG.shape[:2]
  texts = decode_completions(tokenizer, x0_TxNxG.reshape(t_steps * n, -1), stops)
  items = [(text, batch.problems[i % n]) for i, text in enumerate(texts)]
  rewards, stats = pool.score(items)
  return np.asarray(rewards, np.float32).reshape(t_steps, n).T, stats


def final_rewards(batch: RolloutBatch, tokenizer, pool, stops: Sequence[int]):
  p = batch.prompts_NxP.shape[1]
  texts = decode_completions(tokenizer, batch.tokens_NxL[:, p:], stops)
  rewards, stats = pool.score(list(zip(texts, batch.problems)))
  return np.asarray(rewards, np.float32), stats


def mdpo_examples(batch: RolloutBatch, rewards_NxT: np.ndarray, *, top_k: int,
                  mask_id: int) -> dict[str, np.ndarray]:
  """Per-step advantages per group → the K steps with largest |Â_t| per rollout → examples.

  Returns a dict of [N·K, ...] arrays: x_t, target, masked, conf, adv, attention_mask.
  """
  n, t_steps = rewards_NxT.shape
  g = batch.group_size
  adv_NxT = np.asarray(adv_lib.step_advantages(rewards_NxT.reshape(n // g, g, t_steps)))
  adv_NxT = adv_NxT.reshape(n, t_steps)
  k = min(top_k, t_steps)
  idx_NxK = np.asarray(adv_lib.top_k_steps(adv_NxT, k))
  rows = np.repeat(np.arange(n), k)
  steps = idx_NxK.reshape(-1)
  p = batch.prompts_NxP.shape[1]
  x_t = batch.traj.x[steps, rows]
  target = batch.traj.x0[steps, rows]
  gen_L = np.arange(x_t.shape[1]) >= p
  attention = np.concatenate(
      [batch.prompt_mask_NxP, np.ones((n, x_t.shape[1] - p), batch.prompt_mask_NxP.dtype)], 1)
  return {"x_t": x_t.astype(np.int32), "target": target.astype(np.int32),
          "masked": (x_t == mask_id) & gen_L[None], "conf": batch.traj.confidence[steps, rows],
          "adv": adv_NxT[rows, steps].astype(np.float32),
          "attention_mask": attention[rows].astype(np.int32)}


def over_denoised(rewards_NxT: np.ndarray, final_N: np.ndarray) -> np.ndarray:
  """True where some intermediate prediction was right (full reward) but the final answer is not."""
  return (rewards_NxT[:, :-1] >= 1).any(1) & (final_N < 1)
