"""Remasking rules: which candidate tokens a masked-diffusion sampler keeps at each step.

Pure functions on arrays — no model, no sampler state beyond what is passed in — so any sampler
(ours, a KV-cached one, an RL rollout) can use them. Conventions: `[B, L]` arrays over the whole
sequence (prompt included); `eligible_BxL` marks the positions a rule may act on; counts such as
`n` may be traced scalars (they vary per step inside a `lax.scan`), while `max_n` bounds them
statically so selection is a fixed-size `lax.top_k`.

Ties: `lax.top_k` prefers the lower index among equal keys, so selection is deterministic; an
ineligible position can never be chosen over an eligible one, whatever the confidences (−inf
confidences included, e.g. an EOS candidate under `eos_confidence_neg_inf`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

CONFIDENCE_KINDS = ("low_confidence", "random", "margin", "entropy")


def confidence(kind: str, logits_BxLxV, x0_BxL, rng=None):
  """Confidence score of each candidate (higher = commit earlier), float32 [B, L].

  low_confidence: p(x0) under softmax(logits) (LLaDA); pass logits/T for the tempered variant.
  random: uniform noise (LLaDA's `random` remasking). margin: p(top1) − p(top2).
  entropy: −H(softmax(logits)) (negative entropy, so that peaked distributions come first).
  """
  logits = logits_BxLxV.astype(jnp.float32)
  if kind == "random":
    if rng is None:
      raise ValueError("confidence(kind='random') needs an rng")
    return jax.random.uniform(rng, x0_BxL.shape, jnp.float32)
  if kind == "low_confidence":   # exp(logit[x0] − logsumexp): no [B, L, V] log-probs in memory
    chosen_BxL = jnp.take_along_axis(logits, x0_BxL[..., None], axis=-1)[..., 0]
    return jnp.exp(chosen_BxL - jax.nn.logsumexp(logits, axis=-1))
  logp_BxLxV = jax.nn.log_softmax(logits, axis=-1)
  if kind == "margin":
    top2_BxLx2 = jax.lax.top_k(logp_BxLxV, 2)[0]
    return jnp.exp(top2_BxLx2[..., 0]) - jnp.exp(top2_BxLx2[..., 1])
  if kind == "entropy":
    p_BxLxV = jnp.exp(logp_BxLxV)
    return jnp.sum(p_BxLxV * jnp.where(p_BxLxV > 0, logp_BxLxV, 0.0), axis=-1)
  raise ValueError(f"confidence kind={kind!r}: allowed {CONFIDENCE_KINDS}")


def select_top(score_BxL, eligible_BxL, n, max_n: int):
  """Bool [B, L]: the `n` eligible positions with the highest score in each row.

  `n` (scalar or [B], may be traced) must not exceed `max_n` (static) nor the eligible count.
  """
  if max_n <= 0:
    return jnp.zeros(score_BxL.shape, bool)
  score = score_BxL.astype(jnp.float32)
  finite_floor = jnp.finfo(jnp.float32).min
  # Eligible keys live in [float32.min, +inf]; ineligible ones are −inf, strictly below.
  key_BxL = jnp.where(eligible_BxL, jnp.maximum(score, finite_floor), -jnp.inf)
  _, idx_BxK = jax.lax.top_k(key_BxL, max_n)
  take_BxK = jnp.arange(max_n)[None, :] < jnp.reshape(n, (-1, 1))
  rows_BxK = jnp.broadcast_to(jnp.arange(score.shape[0])[:, None], idx_BxK.shape)
  return jnp.zeros(score.shape, bool).at[rows_BxK, idx_BxK].set(take_BxK)  # indices distinct


def select_bottom(score_BxL, eligible_BxL, n, max_n: int):
  """Bool [B, L]: the `n` eligible positions with the lowest score in each row."""
  return select_top(-score_BxL.astype(jnp.float32), eligible_BxL, n, max_n)


def commit_low_confidence(x_BxL, x0_BxL, score_BxL, eligible_BxL, n, max_n: int):
  """LLaDA's rule: unmask the `n` eligible masked positions with the highest score.

  Returns (new x, committed_BxL). Committed tokens are never revisited.
  """
  commit_BxL = select_top(score_BxL, eligible_BxL, n, max_n)
  return jnp.where(commit_BxL, x0_BxL, x_BxL), commit_BxL


def rcr_step(x_BxL, x0_BxL, conf_BxL, run_conf_BxL, fill_BxL, revisable_BxL, num_remask,
             max_remask: int, mask_id: int, threshold: float | None = None):
  """One step of running-confidence remasking (MDPO, SPEC §3).

  1. Every position in `fill_BxL` (currently masked, at or before the block end) takes its
     candidate token, and its running confidence becomes the fresh confidence.
  2. The `num_remask` positions of `revisable_BxL` (generated positions at or before the block end:
     the current block and every earlier one) with the lowest running confidence are masked again.
     Pass `num_remask = 0` at a block's last step so the block ends fully unmasked.

  Protection is structural: positions outside `revisable_BxL` (prompt, padding, positions past
  the block) are never candidates, so neither a confidence tie at 1.0 nor a confidence that
  underflowed to 0 can ever re-mask a prompt token. Returns (new x, new run_conf, remasked_BxL).

  `threshold` τ (confidence-threshold decoding): a position whose running confidence is ≥ τ is
  never re-masked, so fewer than `num_remask` may be (each row: min(num_remask, #revisable
  positions below τ)) and a block can finish early.
  """
  x_BxL = jnp.where(fill_BxL, x0_BxL, x_BxL)
  run_conf_BxL = jnp.where(fill_BxL, conf_BxL.astype(jnp.float32), run_conf_BxL)
  if threshold is not None:
    revisable_BxL = revisable_BxL & (run_conf_BxL < threshold)
    num_remask = jnp.minimum(num_remask, revisable_BxL.sum(-1))
  remask_BxL = select_bottom(run_conf_BxL, revisable_BxL, num_remask, max_remask)
  return jnp.where(remask_BxL, mask_id, x_BxL), run_conf_BxL, remask_BxL


def transfer_schedule(block_length: int, steps_per_block: int, kind: str = "llada") -> np.ndarray:
  """Tokens to commit at each step of a block (static int array, sums to block_length).

  llada: base = N // S per step, the first N % S steps one more (LLaDA).
  linear: MDPO's `still_masked_after(i) = floor(N·(1 − (i+1)/S))`; equal to llada when N % S == 0.
  """
  n, s = block_length, steps_per_block
  if kind == "llada":
    counts = np.full(s, n // s, np.int32)
    counts[: n % s] += 1
  elif kind == "linear":
    still = [n] + [n * (s - i - 1) // s for i in range(s)]  # exact integer floor
    counts = np.asarray([still[i] - still[i + 1] for i in range(s)], np.int32)
  else:
    raise ValueError(f"schedule={kind!r}: allowed ('llada', 'linear')")
  assert counts.sum() == n and (counts >= 0).all(), counts
  return counts
