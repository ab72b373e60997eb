"""diffu-GRPO, the d1 baseline (SPEC §4, diffu-GRPO paragraph).

d1 runs GRPO on a masked diffusion LM by estimating each completion token's log-probability with
*one* forward pass: every completion position is masked, and each prompt position is also masked
with probability p (0.15), which regularises the estimate across inner iterations. The same random
prompt mask must be used for the new, old and reference policies of one inner iteration (d1 reseeds
the global RNG with a stored per-iteration seed; here the mask is a pure function of a PRNG key, so
passing the same key reproduces it).

Per token (completion tokens up to and including the first EOS):
  ρ_i  = exp(logp_i − old_logp_i)
  ℓ_i  = −min(ρ_i·A, clip(ρ_i, 1−ε, 1+ε)·A) + β·(exp(ref_i − logp_i) − (ref_i − logp_i) − 1)
with A = r − mean_group(r) (`advantages.group_advantages`), ε = 0.5, β = 0.04 (k3 KL estimator).
The log-probs use the raw logits (temperature 1): d1 does not scale by the sampling temperature.

Reduction: d1 divides the masked sum of the whole micro-batch by its number of completion tokens
(a token-level mean, `normalize="token"`, the default). `normalize="sequence"` gives the original
GRPO/TRL form (mean over each sequence's tokens, then over sequences). Note that the token-level
mean of equally sized micro-batches, averaged over an accumulation window, is not the token-level
mean of the window (as in d1).
"""
from __future__ import annotations

import numbers
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mdpo_jax.rl import advantages, rollout
from mdpo_jax.rl.common import (Batch, Metrics, check_batch, check_clip_eps,
                                check_nonnegative_real, clipped_surrogate, masked_token_mean,
                                only_where, token_logprobs)

Array = jax.Array
ForwardFn = Callable[..., Array]

GRPO_REQUIRED_KEYS = ("inputs", "tokens", "completion_mask", "adv")
GRPO_OPTIONAL_KEYS = ("attention_mask", "old_logp", "ref_logp")
NORMALIZE = ("token", "sequence")


def _check_masks(tokens_BxL: Array, **masks: Array) -> None:
  if jnp.ndim(tokens_BxL) != 2:
    raise ValueError(f"tokens_BxL must have shape [batch, length], got {jnp.shape(tokens_BxL)}")
  for name, m in masks.items():
    if jnp.shape(m) != jnp.shape(tokens_BxL):
      raise ValueError(f"{name} must have the shape of tokens_BxL {jnp.shape(tokens_BxL)}, "
                       f"got {jnp.shape(m)}")


def _check_token_id(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
    raise ValueError(f"{name} must be a non-negative Python int, got {value!r}")


def one_step_inputs(rng: Array, tokens_BxL: Array, prompt_mask_BxL: Array,
                    completion_mask_BxL: Array, *, mask_id: int,
                    prompt_mask_prob: float = 0.15) -> Array:
  """The d1 one-step input: all completion positions masked, prompt positions masked with prob p.

  Randomness (so callers can reproduce a call): `u = jax.random.uniform(rng, (B, L), float32)`; a
  prompt position is masked iff `u < prompt_mask_prob`. The result depends only on `rng`, the
  shape and the masks, so the same key gives the same input for the new, old and reference policy.
  Positions that are neither prompt nor completion (e.g. padding) are never masked. A position in
  both masks counts as completion (always masked).

  Args:
    rng: PRNG key.
    tokens_BxL: `[prompt | completion]` tokens.
    prompt_mask_BxL: bool, prompt positions (d1: every position before the completion).
    completion_mask_BxL: bool, the *whole* generated region — d1 masks every generated position,
      including those after the first EOS (which carry no loss; see `completion_loss_mask`).
    mask_id: MASK token id.
    prompt_mask_prob: p in [0, 1]; d1 uses 0.15.

  Returns:
    inputs_BxL: tokens with the chosen positions replaced by `mask_id`.
  """
  _check_masks(tokens_BxL, prompt_mask_BxL=prompt_mask_BxL, completion_mask_BxL=completion_mask_BxL)
  _check_token_id("mask_id", mask_id)
  if isinstance(prompt_mask_prob, bool) or not isinstance(prompt_mask_prob, numbers.Real) or \
      not 0.0 <= float(prompt_mask_prob) <= 1.0:
    raise ValueError(f"prompt_mask_prob must be a Python float in [0, 1], got {prompt_mask_prob!r}")
  u_BxL = jax.random.uniform(rng, jnp.shape(tokens_BxL), jnp.float32)
  prompt = jnp.asarray(prompt_mask_BxL).astype(bool)
  completion = jnp.asarray(completion_mask_BxL).astype(bool)
  masked = completion | (prompt & (u_BxL < prompt_mask_prob))
  tokens_BxL = jnp.asarray(tokens_BxL)
  return jnp.where(masked, jnp.asarray(mask_id, tokens_BxL.dtype), tokens_BxL)


def completion_loss_mask(tokens_BxL: Array, generated_BxL: Array, *, eos_id: int) -> Array:
  """Generated positions up to and including the first EOS among them (d1's completion_mask).

  Rows without an EOS keep every generated position.
  """
  _check_masks(tokens_BxL, generated_BxL=generated_BxL)
  _check_token_id("eos_id", eos_id)
  generated = jnp.asarray(generated_BxL).astype(bool)
  is_eos = generated & (jnp.asarray(tokens_BxL) == eos_id)
  eos_before = (jnp.cumsum(is_eos.astype(jnp.int32), axis=-1) - is_eos.astype(jnp.int32)) > 0
  return generated & ~eos_before


def k3_kl(logp: Array, ref_logp: Array) -> Array:
  """k3 estimator of KL(π‖π_ref) per token: exp(ref − logp) − (ref − logp) − 1 (≥ 0)."""
  d = ref_logp - logp
  return jnp.exp(d) - d - 1.0


def _check_grpo_args(batch: Batch, clip_eps, beta, normalize) -> tuple[int, int]:
  check_clip_eps(clip_eps)
  check_nonnegative_real("beta", beta)
  if normalize not in NORMALIZE:
    raise ValueError(f"normalize={normalize!r}: allowed {NORMALIZE}")
  shape = check_batch(batch, GRPO_REQUIRED_KEYS, GRPO_OPTIONAL_KEYS, "tokens", ("adv",))
  if beta > 0 and batch.get("ref_logp") is None:
    raise ValueError(f"beta={beta} > 0 needs batch['ref_logp'] (the reference policy's log-probs "
                     "on the same masked inputs); pass beta=0 to train without a reference")
  return shape


def diffu_grpo_loss_from_logp(logp_NxL: Array, batch: Batch, *, clip_eps: float = 0.5,
                              beta: float = 0.04, normalize: str = "token"
                              ) -> tuple[Array, Metrics]:
  """The diffu-GRPO loss given the policy's log-probs (see `diffu_grpo_loss`)."""
  shape = _check_grpo_args(batch, clip_eps, beta, normalize)
  if jnp.shape(logp_NxL) != shape:
    raise ValueError(f"logp_NxL must have shape {shape}, got {jnp.shape(logp_NxL)}")
  ref_logp = batch.get("ref_logp")

  logp = logp_NxL.astype(jnp.float32)
  mask = jnp.asarray(batch["completion_mask"]).astype(bool)
  adv_N = jax.lax.stop_gradient(jnp.asarray(batch["adv"]).astype(jnp.float32))
  old_logp = only_where(mask, batch.get("old_logp"), logp)
  surrogate, ratio, clipped = clipped_surrogate(logp, old_logp, adv_N[:, None], float(clip_eps))
  per_token = -surrogate
  if ref_logp is not None:
    kl = k3_kl(logp, only_where(mask, ref_logp, logp))
  else:
    kl = jnp.zeros_like(logp)
  if beta > 0:
    per_token = per_token + float(beta) * kl
  masked_sum_N = jnp.sum(jnp.where(mask, per_token, 0.0), axis=-1)
  count_N = jnp.sum(mask, axis=-1).astype(jnp.float32)
  if normalize == "token":
    loss = jnp.sum(masked_sum_N) / jnp.maximum(jnp.sum(count_N), 1.0)
  else:
    loss = jnp.mean(masked_sum_N / jnp.maximum(count_N, 1.0))

  metrics = {
      "ratio_mean": masked_token_mean(ratio, mask),
      "clip_frac": masked_token_mean(clipped.astype(jnp.float32), mask),
      "kl": masked_token_mean(kl, mask),
      "adv_abs_mean": jnp.mean(jnp.abs(adv_N)),
      "completion_len_mean": jnp.mean(count_N),
  }
  return loss, jax.tree.map(jax.lax.stop_gradient, metrics)


def diffu_grpo_loss(forward_fn: ForwardFn, params, batch: Batch, *, clip_eps: float = 0.5,
                    beta: float = 0.04, normalize: str = "token") -> tuple[Array, Metrics]:
  """diffu-GRPO loss (SPEC §4; d1): clipped ratio on one-step log-probs, k3 KL.

  Args:
    forward_fn: `forward_fn(params, tokens, attention_mask=...) -> logits_BxLxV`.
    params: policy parameters.
    batch: dict of arrays for N completions of length L (prompt + completion):
      `inputs` [N, L]: the one-step input (`one_step_inputs`, same key as for old/ref log-probs);
      `tokens` [N, L]: the clean sequences (targets);
      `completion_mask` [N, L] bool: tokens counted in the loss — d1: completion tokens up to and
        including the first EOS (`completion_loss_mask`);
      `adv` [N]: group-relative advantage (`group_advantages`);
      optional `attention_mask` [N, L] (passed to the model; d1 passes none);
      optional `old_logp` [N, L]: log-probs of the rollout policy on the same inputs (inner
        iterations > 1; absent → ρ ≡ 1);
      optional `ref_logp` [N, L]: reference log-probs on the same inputs, needed iff beta > 0.
    clip_eps: PPO clip ε in [0, 1); d1 uses 0.5.
    beta: k3 KL weight ≥ 0; d1 uses 0.04.
    normalize: "token" (d1: Σ over all counted tokens / their number) or "sequence" (per-sequence
      mean, then mean over sequences).

  Returns:
    (loss, metrics) with float32 scalar metrics (token-weighted over counted tokens unless noted):
    `ratio_mean`, `clip_frac` (tokens whose gradient the clip removes), `kl` (k3, 0 without
    ref_logp), `adv_abs_mean` (over sequences), `completion_len_mean`.
  """
  shape = _check_grpo_args(batch, clip_eps, beta, normalize)   # before the forward pass
  logp_NxL = token_logprobs(forward_fn, params, batch["inputs"], batch["tokens"], temperature=1.0,
                            attention_mask=batch.get("attention_mask"))
  assert logp_NxL.shape == shape
  return diffu_grpo_loss_from_logp(logp_NxL, batch, clip_eps=clip_eps, beta=beta,
                                   normalize=normalize)


# ----------------------------------------------------------------------------- the plug-in

class DiffuGRPO:
  """diffu-GRPO as an RL algorithm (`rl/algorithms.py`): one row per rollout, the d1 one-step
  input (every generated position masked, prompt tokens masked with `rl.prompt_mask_prob`),
  advantage r − group mean, loss on completion tokens up to the first EOS."""

  name = "diffu_grpo"
  uses_trajectory = False

  def rows_per_rollout(self, rl) -> int:
    del rl
    return 1

  def rows(self, batch, scorer, rng, rl, *, mask_id: int, eos_id: int):
    final, stats = scorer.final_rewards(batch)
    p = batch.prompts_NxP.shape[1]
    generated = np.zeros(batch.tokens_NxL.shape, bool)
    generated[:, p:] = True
    # Loss on tokens up to and including the first EOS (d1); the input masks every generated
    # position, padding after EOS included.
    completion = completion_loss_mask(batch.tokens_NxL, generated, eos_id=eos_id)
    attention = np.concatenate(
        [batch.prompt_mask_NxP, np.ones_like(batch.tokens_NxL[:, p:])], 1).astype(np.int32)
    prompt_pos = np.zeros_like(generated)
    prompt_pos[:, :p] = batch.prompt_mask_NxP.astype(bool)
    inputs = one_step_inputs(jax.random.fold_in(rng, 1), batch.tokens_NxL, prompt_pos, generated,
                             mask_id=mask_id, prompt_mask_prob=rl.prompt_mask_prob)
    adv = np.asarray(advantages.group_advantages(final.reshape(-1, rl.group_size))).reshape(-1)
    rows = {"inputs": np.asarray(inputs), "tokens": batch.tokens_NxL.astype(np.int32),
            "completion_mask": completion, "adv": adv.astype(np.float32),
            "attention_mask": attention}
    return rollout.Rows(rows, final, stats, {})

  def logprob_io(self, rows):
    return rows["inputs"], rows["tokens"]

  def logp_temperature(self, rl) -> float:
    del rl
    return 1.0   # d1 scores raw logits

  def needs_old_logp(self, rl) -> bool:
    del rl
    return True  # the ratio is always against the rollout policy (d1)

  def loss(self, forward_fn, params, rows, rl):
    return diffu_grpo_loss(forward_fn, params, rows, clip_eps=rl.clip_eps, beta=rl.beta)
