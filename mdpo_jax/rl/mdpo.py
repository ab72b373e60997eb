"""The MDPO policy-gradient loss over selected denoising steps (SPEC §4.4–§4.5).

A training example is one step t of one rollout (chosen by `advantages.top_k_steps`): the model
sees the state x_t (prompt + partially masked generation) and is scored on reproducing the full
prediction x̂0_t it made during the rollout, at the positions M that were masked in x_t:

  logp_i = log softmax(logits(x_t) / T)[x̂0_t,i]                 (T = the rollout temperature)
  ρ_i    = exp(logp_i − old_logp_i)                              (old = policy that sampled)
  λ      = gen_length / |M|
  ℓ_i    = −min(ρ_i·Â_t, clip(ρ_i, 1−ε, 1+ε)·Â_t)·λ + β·(ref_logp_i − logp_i)² / 2
  loss   = Σ_{i∈M} conf_i·ℓ_i / |M|

conf_i is the confidence recorded by the sampler for the candidate at i (no gradient). The KL term
is the k2 estimator against a frozen reference policy; β = 0 means no reference model at all.

With one gradient update per rollout batch old_logp is not stored: ρ = exp(logp − sg(logp)) is
identically 1 and has the REINFORCE gradient ∇logp, and the clip never acts. Several inner
iterations over the same rollouts pass the stored `old_logp` and get the PPO clip.

Batch reduction (`normalisation`, config `rl.loss_normalisation`):

- "example_mean" (ours, the default): the loss of N examples is the *mean of the example losses*
  Σ_{i∈M} conf_i·ℓ_i / |M| with λ = L/|M| — every example weighs the same however many positions
  are masked at its step. Averaging equally sized micro-batches' losses (or gradients) gives the
  loss of the whole batch.
- "batch_tokens" (the reference's formula, `compute_loss` of MDPO's `mdpo_trainer.py`): λ =
  L/(|M| + 1e-4) and loss = Σ_{examples} Σ_{i∈M} conf_i·ℓ_i / (Σ_{examples} |M| + 1e-4) — a
  token-weighted mean, so late steps with few masked positions weigh less. The denominator is the
  masked count of the whole *update batch*, not of a micro-batch: the rows carry `token_norm` =
  (Σ|M| + 1e-4) / N, the same in every row (`batch_token_norm`, added by `MDPO.rows`), and a
  micro-batch divides by the sum of its rows' `token_norm`, so the mean of the micro-batches'
  losses is the whole batch's whatever `rl.micro_batch` is. Without `token_norm` the batch passed
  is the whole batch. The reference applies the formula to each `compute_loss` call, i.e. to one
  micro-batch; its recipe runs one example per call (`per_device_train_batch_size: 1`), where it
  reduces to the per-example form (λ and the denominator differ from ours by the 1e-4 guards).

`forward_fn(params, tokens_BxL, attention_mask=mask_BxL) -> logits_BxLxV` is a black box (static
under jit). Everything here is pure and jit-able; Python-scalar arguments are static.
"""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from mdpo_jax.rl import rollout
from mdpo_jax.rl.common import (Array, Batch, ForwardFn, Metrics, check_batch, check_clip_eps,
                                check_nonnegative_real, check_positive_real, clipped_surrogate,
                                masked_token_mean, only_where, token_logprobs)

MDPO_REQUIRED_KEYS = ("x_t", "target", "masked", "conf", "adv")
MDPO_OPTIONAL_KEYS = ("attention_mask", "old_logp", "ref_logp", "token_norm")
LOSS_NORMALISATIONS = ("example_mean", "batch_tokens")
BATCH_TOKENS_EPS = 1e-4   # the reference's guard in λ = L/(|M| + 1e-4) and in Σ|M| + 1e-4


# ----------------------------------------------------------------------------- MDPO loss

def batch_token_norm(masked_NxL) -> np.ndarray:
  """`token_norm` [N] float32 of an update batch for normalisation="batch_tokens": (Σ|M| over all
  its rows + 1e-4) / N, the same in every row (see the module docstring)."""
  masked = np.asarray(masked_NxL).astype(bool)
  if masked.ndim != 2 or masked.shape[0] < 1:
    raise ValueError(f"masked_NxL must have shape [N >= 1, L], got {masked.shape}")
  n = masked.shape[0]
  return np.full(n, (float(masked.sum()) + BATCH_TOKENS_EPS) / n, np.float32)


def _check_mdpo_args(batch: Batch, gen_length, clip_eps, beta,
                     normalisation: str = "example_mean") -> tuple[int, int]:
  if isinstance(gen_length, bool) or not isinstance(gen_length, numbers.Integral) or gen_length < 1:
    raise ValueError(f"gen_length must be a Python int >= 1, got {gen_length!r}")
  check_clip_eps(clip_eps)
  check_nonnegative_real("beta", beta)
  if normalisation not in LOSS_NORMALISATIONS:
    raise ValueError(f"normalisation={normalisation!r}: allowed {LOSS_NORMALISATIONS}")
  shape = check_batch(batch, MDPO_REQUIRED_KEYS, MDPO_OPTIONAL_KEYS, "x_t", ("adv", "token_norm"))
  if beta > 0 and batch.get("ref_logp") is None:
    raise ValueError(f"beta={beta} > 0 needs batch['ref_logp'] (the frozen reference's log-probs); "
                     "pass beta=0 to train without a reference")
  return shape


def mdpo_loss_from_logp(logp_NxL: Array, batch: Batch, *, gen_length: int, clip_eps: float = 0.2,
                        beta: float = 0.0, normalisation: str = "example_mean"
                        ) -> tuple[Array, Metrics]:
  """The MDPO loss given the policy's log-probs `logp_NxL` (see `mdpo_loss`; the module docstring
  has the formula). Exposed so the arithmetic can be tested and reused with precomputed logits."""
  shape = _check_mdpo_args(batch, gen_length, clip_eps, beta, normalisation)
  if jnp.shape(logp_NxL) != shape:
    raise ValueError(f"logp_NxL must have shape {shape}, got {jnp.shape(logp_NxL)}")
  ref_logp = batch.get("ref_logp")

  logp = logp_NxL.astype(jnp.float32)
  masked = jnp.asarray(batch["masked"]).astype(bool)
  conf = jax.lax.stop_gradient(jnp.asarray(batch["conf"]).astype(jnp.float32))
  adv_N = jax.lax.stop_gradient(jnp.asarray(batch["adv"]).astype(jnp.float32))
  count_N = jnp.sum(masked, axis=-1).astype(jnp.float32)
  safe_count_N = jnp.maximum(count_N, 1.0)   # |M| = 0 → every masked sum is 0 → example loss 0
  by_tokens = normalisation == "batch_tokens"
  lam_N = gen_length / (count_N + BATCH_TOKENS_EPS if by_tokens else safe_count_N)

  old_logp = only_where(masked, batch.get("old_logp"), logp)
  surrogate, ratio, clipped = clipped_surrogate(logp, old_logp, adv_N[:, None], float(clip_eps))
  per_token = -surrogate * lam_N[:, None]
  if ref_logp is not None:
    diff = only_where(masked, ref_logp, logp) - logp
    kl = 0.5 * diff * diff
  else:
    kl = jnp.zeros_like(logp)
  if beta > 0:
    per_token = per_token + float(beta) * kl
  sum_N = jnp.sum(jnp.where(masked, conf * per_token, 0.0), axis=-1)
  loss = (jnp.sum(sum_N) / _batch_tokens(batch, count_N) if by_tokens
          else jnp.mean(sum_N / safe_count_N))

  metrics = {
      "ratio_mean": masked_token_mean(ratio, masked),
      "clip_frac": masked_token_mean(clipped.astype(jnp.float32), masked),
      "kl": masked_token_mean(kl, masked),
      "adv_abs_mean": jnp.mean(jnp.abs(adv_N)),
      "masked_mean": jnp.mean(count_N),
      "logp_mean": masked_token_mean(logp, masked),
  }
  return loss, jax.tree.map(jax.lax.stop_gradient, metrics)


def _batch_tokens(batch: Batch, count_N: Array) -> Array:
  """The "batch_tokens" denominator: this micro-batch's share of the update batch's Σ|M| + 1e-4
  (the sum of its rows' `token_norm`), or, without `token_norm`, that of the batch passed."""
  norm = batch.get("token_norm")
  if norm is None:
    return jnp.sum(count_N) + BATCH_TOKENS_EPS
  return jnp.sum(jax.lax.stop_gradient(jnp.asarray(norm).astype(jnp.float32)))


def mdpo_loss(forward_fn: ForwardFn, params, batch: Batch, *, temperature: float, gen_length: int,
              clip_eps: float = 0.2, beta: float = 0.0, normalisation: str = "example_mean"
              ) -> tuple[Array, Metrics]:
  """MDPO loss over N training examples, each one selected step of one rollout (SPEC §4.5).

  Args:
    forward_fn: `forward_fn(params, tokens, attention_mask=...) -> logits_BxLxV`.
    params: policy parameters (the only differentiable input).
    batch: dict of arrays, N examples of length L (prompt + generation):
      `x_t` [N, L] int: model input, the state before the step;
      `target` [N, L] int: the step's full prediction x̂0_t;
      `masked` [N, L] bool: M, generated positions masked in x_t (only these carry loss);
      `conf` [N, L] float32: stored sampling confidence of x̂0_t (no gradient);
      `adv` [N]: the step's normalised advantage Â_t;
      optional `attention_mask` [N, L] (passed to the model);
      optional `old_logp` [N, L]: log-probs of the policy that produced the rollout (inner
        iterations > 1; absent → ρ ≡ 1, plain REINFORCE);
      optional `ref_logp` [N, L]: frozen reference log-probs (same temperature), needed iff
        beta > 0 (otherwise only logged);
      optional `token_norm` [N]: `batch_token_norm` of the whole update batch ("batch_tokens"
        only; absent → this batch is the whole batch).
    temperature: rollout temperature T (> 0) for the log-probs.
    gen_length: generation length L_gen, the numerator of λ = L_gen / |M|.
    clip_eps: PPO clip ε in [0, 1).
    beta: k2 KL weight (≥ 0); SPEC's reference setting is 0.02.
    normalisation: "example_mean" or "batch_tokens" (the module docstring).

  Returns:
    (loss, metrics): loss = mean over examples of `Σ_{i∈M} conf_i·ℓ_i / |M|` (0 for |M| = 0), or
    with "batch_tokens" `Σ Σ_{i∈M} conf_i·ℓ_i / (Σ|M| + 1e-4)` over the update batch;
    float32 scalar metrics, token-weighted over masked positions unless noted: `ratio_mean`,
    `clip_frac` (tokens whose gradient the clip removes), `kl` (the k2 term, 0 without ref_logp),
    `adv_abs_mean` (over examples), `masked_mean` (mean |M|), `logp_mean`.
  """
  check_positive_real("temperature", temperature)
  shape = _check_mdpo_args(batch, gen_length, clip_eps, beta, normalisation)   # before forward
  logp_NxL = token_logprobs(forward_fn, params, batch["x_t"], batch["target"],
                            temperature=temperature, attention_mask=batch.get("attention_mask"))
  assert logp_NxL.shape == shape
  return mdpo_loss_from_logp(logp_NxL, batch, gen_length=gen_length, clip_eps=clip_eps, beta=beta,
                             normalisation=normalisation)


# ----------------------------------------------------------------------------- the plug-in

class MDPO:
  """MDPO as an RL algorithm (`rl/algorithms.py`): every step of a rollout is scored, per-step
  advantages are normalised within the group, and the `rl.top_k` steps with the largest |Â_t| of
  each rollout become training rows (x_t → x̂0_t on the positions masked in x_t)."""

  name = "mdpo"
  uses_trajectory = True

  def rows_per_rollout(self, rl) -> int:
    return rl.top_k

  def rows(self, batch, scorer, rng, rl, *, mask_id: int, eos_id: int):
    del rng, eos_id
    rewards_NxT, stats = scorer.step_rewards(batch)
    final = rewards_NxT[:, -1]
    rows = rollout.mdpo_examples(batch, rewards_NxT, top_k=rl.top_k, mask_id=mask_id)
    if rl.loss_normalisation == "batch_tokens":   # Σ|M| of the whole update, for micro-batches
      rows["token_norm"] = batch_token_norm(rows["masked"])
    metrics = {"reward/step_mean": float(rewards_NxT.mean()),
               "reward/over_denoised": float(rollout.over_denoised(rewards_NxT, final).mean())}
    return rollout.Rows(rows, final, stats, metrics)

  def logprob_io(self, rows):
    return rows["x_t"], rows["target"]

  def logp_temperature(self, rl) -> float:
    return rl.temperature

  def needs_old_logp(self, rl) -> bool:
    return rl.inner_iters > 1

  def loss(self, forward_fn, params, rows, rl):
    return mdpo_loss(forward_fn, params, rows, temperature=rl.temperature,
                     gen_length=rl.gen_length, clip_eps=rl.clip_eps, beta=rl.beta,
                     normalisation=rl.loss_normalisation)
