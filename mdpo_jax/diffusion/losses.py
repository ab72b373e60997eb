"""Masked-diffusion training losses and Monte Carlo likelihood (SPEC §2), as pure jit-able functions.

All three are the same ELBO: a masked diffusion model's negative log-likelihood is bounded by
`E_t [ (1/t) Σ_{masked i} −log p_θ(x_i | x_t) ]` (SMDM/LLaDA; the network is time-agnostic, so
it gets no t). They differ only in what may be masked and how the sum is normalised:

- pretraining: every real token may be masked; `Σ_masked CE / p` over the batch, divided by the
  number of real tokens (B·L without padding);
- SFT: only answer tokens may be masked; per row `Σ_masked CE / (p·answer_len)`, mean over rows;
- likelihood: the discrete-time form with exactly k of n answer tokens masked, `k ~ U{1..n}`
  stratified over draws, each masked CE weighted by n/k.

`forward_fn(params, tokens_BxL, attention_mask=mask_BxL_or_None) -> logits_BxLxV` is a black box
(static under jit). Each `*_loss` has a `*_from_logits` twin that takes the masks and p explicitly,
so the arithmetic can be tested, and reused by callers who draw their own noise.

Randomness (documented so callers and tests can reproduce a call exactly):
- `pretrain_loss`: `p_key, mask_key, crop_key = jax.random.split(rng, 3)`; p from
  `sample_mask_prob(p_key, B, eps)`, masks from `mask_tokens(mask_key, ...)`; the crop decision and
  length from `coin_key, len_key = jax.random.split(crop_key)` (only when random_length_prob > 0).
- `sft_loss`: `p_key, mask_key = jax.random.split(rng)`, then the same two calls.
- `mc_negative_elbo`: `jax.random.split(rng, num_draws // draws_per_batch)`, one key per draw
  batch, each split into `(count_key, mask_key)` for `stratified_mask_counts` and `mask_exactly`.
"""
from __future__ import annotations

import numbers
from typing import Callable

import jax
import jax.numpy as jnp

from mdpo_jax.diffusion import chunked, masking
from mdpo_jax.diffusion import guidance
from mdpo_jax.diffusion.guidance import guided_logits

Array = jax.Array
ForwardFn = Callable[..., Array]
Metrics = dict[str, Array]


# ----------------------------------------------------------------------------- validation

def _check_tokens_and_masks(tokens_BxL: Array, **masks: Array | None) -> None:
  if jnp.ndim(tokens_BxL) != 2:
    raise ValueError(
        f"tokens_BxL must have shape [batch, length], got shape {jnp.shape(tokens_BxL)}")
  for name, m in masks.items():
    if m is not None and jnp.shape(m) != jnp.shape(tokens_BxL):
      raise ValueError(f"{name} must have the shape of tokens_BxL {jnp.shape(tokens_BxL)}, "
                       f"got {jnp.shape(m)}")


def _check_logits(logits_BxLxV: Array, tokens_BxL: Array) -> None:
  if jnp.ndim(logits_BxLxV) != 3 or jnp.shape(logits_BxLxV)[:2] != jnp.shape(tokens_BxL):
    raise ValueError(f"logits_BxLxV must have shape {jnp.shape(tokens_BxL)} + (vocab,), "
                     f"got {jnp.shape(logits_BxLxV)}")


def _check_p(p_B: Array, tokens_BxL: Array) -> None:
  if jnp.shape(p_B) != jnp.shape(tokens_BxL)[:1]:
    raise ValueError(f"p_B must have shape ({jnp.shape(tokens_BxL)[0]},), got {jnp.shape(p_B)}")


def _check_positive_int(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
    raise ValueError(f"{name} must be a Python int >= 1, got {value!r}")


def _real_BxL(tokens_BxL: Array, attention_mask: Array | None) -> Array:
  if attention_mask is None:
    return jnp.ones(tokens_BxL.shape, bool)
  return attention_mask.astype(bool)


# ----------------------------------------------------------------------------- cross-entropy

def token_ce(logits_BxLxV: Array, targets_BxL: Array) -> Array:
  """Per-token cross-entropy `−log softmax(logits)[target]`, computed in float32."""
  if jnp.ndim(logits_BxLxV) != jnp.ndim(targets_BxL) + 1 or \
      jnp.shape(logits_BxLxV)[:-1] != jnp.shape(targets_BxL):
    raise ValueError(f"logits must have shape {jnp.shape(targets_BxL)} + (vocab,), "
                     f"got {jnp.shape(logits_BxLxV)}")
  logp_BxLxV = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp_BxLxV, targets_BxL[..., None].astype(jnp.int32), axis=-1)[..., 0]


def _masked_ce_mean(ce_BxL: Array, masked_BxL: Array) -> Array:
  """Unweighted mean CE over masked tokens (a logging diagnostic; 0 when nothing is masked)."""
  n = jnp.sum(masked_BxL)
  return jnp.sum(jnp.where(masked_BxL, ce_BxL, 0.0)) / jnp.maximum(n, 1).astype(jnp.float32)


# ----------------------------------------------------------------------------- pretraining

def pretrain_loss_from_logits(
    logits_BxLxV: Array,
    tokens_BxL: Array,
    masked_BxL: Array,
    p_B: Array,
    *,
    valid_BxL: Array | None = None,
) -> Array:
  """SMDM/LLaDA pretraining loss, `Σ_{masked} CE / p_row` divided by the number of real tokens.

  Args:
    logits_BxLxV: model output on the noisy input.
    tokens_BxL: clean targets.
    masked_BxL: bool, positions that were masked (only these carry loss).
    p_B: masking probability of each row.
    valid_BxL: bool, real (non-padding) tokens; None means all B·L. Masked positions outside it are
      ignored; the normaliser is its count (at least 1).

  Returns:
    float32 scalar loss.
  """
  _check_tokens_and_masks(tokens_BxL, masked_BxL=masked_BxL, valid_BxL=valid_BxL)
  _check_logits(logits_BxLxV, tokens_BxL)
  _check_p(p_B, tokens_BxL)
  return _pretrain_loss_from_ce(token_ce(logits_BxLxV, tokens_BxL), masked_BxL, p_B, valid_BxL)


def _pretrain_loss_from_ce(ce_BxL: Array, masked_BxL: Array, p_B: Array,
                           valid_BxL: Array | None) -> Array:
  """`pretrain_loss_from_logits` given the per-position cross-entropies."""
  masked_BxL = masked_BxL.astype(bool)
  if valid_BxL is None:
    num_tokens = jnp.float32(ce_BxL.size)
  else:
    masked_BxL = masked_BxL & valid_BxL.astype(bool)
    num_tokens = jnp.maximum(jnp.sum(valid_BxL.astype(jnp.float32)), 1.0)
  weighted_BxL = jnp.where(masked_BxL, ce_BxL / jnp.asarray(p_B, jnp.float32)[:, None], 0.0)
  return jnp.sum(weighted_BxL) / num_tokens


def pretrain_loss(
    forward_fn: ForwardFn,
    params,
    tokens_BxL: Array,
    rng: Array,
    *,
    mask_id: int,
    eps: float = 1e-3,
    attention_mask: Array | None = None,
    random_length_prob: float = 0.0,
) -> tuple[Array, Metrics]:
  """Pretraining ELBO loss (SPEC §2): per-row p, independent masking of real tokens, 1/p weights.

  Random-length crop (LLaDA crops 1% of pretraining batches to a length drawn from U{1..L}):
  with probability `random_length_prob` per call, one length ℓ ~ U{1..L} is drawn for the whole
  batch and positions ≥ ℓ are treated as padding — never masked, no loss, removed from the
  attention mask given to the model, and left out of the normaliser. This is the static-shape
  equivalent of slicing `tokens[:, :ℓ]`. With `random_length_prob == 0` (static) nothing is drawn and
  `attention_mask` is passed to the model unchanged (None stays None).

  Args:
    forward_fn: `forward_fn(params, tokens, attention_mask=...) -> logits_BxLxV`.
    params: model parameters.
    tokens_BxL: clean tokens.
    rng: PRNG key (split as described in the module docstring).
    mask_id: MASK token id.
    eps: lower bound of p, in (0, 1).
    attention_mask: optional [B, L] padding mask (1 = real token); padding is never masked.
    random_length_prob: probability in [0, 1] of cropping this batch.

  Returns:
    (loss, metrics) with float32 scalar metrics `mask_prob_mean`, `masked_fraction` (masked / real
    tokens), `num_tokens`, `masked_ce` (unweighted mean CE on masked tokens), `cropped` (0 or 1).
  """
  _check_tokens_and_masks(tokens_BxL, attention_mask=attention_mask)
  masking._check_mask_id(mask_id)
  masking._check_eps(eps)
  if not isinstance(random_length_prob, numbers.Real) or not 0.0 <= random_length_prob <= 1.0:
    raise ValueError(
        f"random_length_prob must be a Python float in [0, 1], got {random_length_prob!r}")
  batch, length = tokens_BxL.shape
  p_key, mask_key, crop_key = jax.random.split(rng, 3)

  valid_BxL = _real_BxL(tokens_BxL, attention_mask)
  model_mask = attention_mask
  cropped = jnp.float32(0.0)
  if random_length_prob > 0.0:
    coin_key, len_key = jax.random.split(crop_key)
    do_crop = jax.random.uniform(coin_key, (), jnp.float32) < random_length_prob
    crop_len = jax.random.randint(len_key, (), 1, length + 1)
    keep_L = jnp.logical_or(~do_crop, jnp.arange(length) < crop_len)
    valid_BxL = valid_BxL & keep_L[None, :]
    model_mask = valid_BxL.astype(attention_mask.dtype if attention_mask is not None else jnp.int32)
    cropped = do_crop.astype(jnp.float32)

  p_B = masking.sample_mask_prob(p_key, batch, eps)
  noisy_BxL, masked_BxL = masking.mask_tokens(mask_key, tokens_BxL, p_B, mask_id,
                                              maskable_BxL=valid_BxL)
  ce_BxL = chunked.per_position(forward_fn, params, noisy_BxL, tokens_BxL, token_ce,
                                attention_mask=model_mask)
  has_padding = attention_mask is not None or random_length_prob > 0.0
  loss = _pretrain_loss_from_ce(ce_BxL, masked_BxL, p_B, valid_BxL if has_padding else None)
  num_tokens = jnp.sum(valid_BxL.astype(jnp.float32))
  metrics = {
      "mask_prob_mean": jnp.mean(p_B),
      "masked_fraction": jnp.sum(masked_BxL.astype(jnp.float32)) / jnp.maximum(num_tokens, 1.0),
      "num_tokens": num_tokens,
      "masked_ce": _masked_ce_mean(ce_BxL, masked_BxL),
      "cropped": cropped,
  }
  return loss, metrics


# ----------------------------------------------------------------------------- SFT

def sft_loss_from_logits(
    logits_BxLxV: Array,
    tokens_BxL: Array,
    masked_BxL: Array,
    p_B: Array,
    answer_BxL: Array,
) -> Array:
  """LLaDA SFT loss: mean over rows of `Σ_{masked answer} CE / (p_row · answer_len_row)`.

  Args:
    logits_BxLxV: model output on the noisy input.
    tokens_BxL: clean targets.
    masked_BxL: bool, masked positions; only those inside `answer_BxL` carry loss.
    p_B: masking probability of each row.
    answer_BxL: bool, answer tokens (non-prompt real tokens, EOS padding of the answer included).
      A row without answer tokens contributes 0 but still counts in the mean over B.

  Returns:
    float32 scalar loss.
  """
  _check_tokens_and_masks(tokens_BxL, masked_BxL=masked_BxL, answer_BxL=answer_BxL)
  _check_logits(logits_BxLxV, tokens_BxL)
  _check_p(p_B, tokens_BxL)
  return _sft_loss_from_ce(token_ce(logits_BxLxV, tokens_BxL), masked_BxL, p_B, answer_BxL)


def _sft_loss_from_ce(ce_BxL: Array, masked_BxL: Array, p_B: Array, answer_BxL: Array) -> Array:
  """`sft_loss_from_logits` given the per-position cross-entropies."""
  answer_BxL = answer_BxL.astype(bool)
  masked_BxL = masked_BxL.astype(bool) & answer_BxL
  answer_len_B = jnp.maximum(jnp.sum(answer_BxL.astype(jnp.float32), axis=-1), 1.0)
  row_B = jnp.sum(jnp.where(masked_BxL, ce_BxL, 0.0), axis=-1)
  row_B = row_B / (jnp.asarray(p_B, jnp.float32) * answer_len_B)
  return jnp.mean(row_B)


def sft_loss(
    forward_fn: ForwardFn,
    params,
    tokens_BxL: Array,
    prompt_mask_BxL: Array,
    rng: Array,
    *,
    mask_id: int,
    eps: float = 1e-3,
    attention_mask: Array | None = None,
) -> tuple[Array, Metrics]:
  """SFT ELBO loss (SPEC §2): the prompt is never masked and carries no loss.

  Answer = non-prompt real tokens; the EOS padding that fills each answer to the fixed length is
  answer (it is how the model learns to stop). Positions with `attention_mask == 0` (left padding of
  the prompt) are neither answer nor ever masked.

  Args:
    forward_fn: `forward_fn(params, tokens, attention_mask=...) -> logits_BxLxV`.
    params: model parameters.
    tokens_BxL: `[prompt | answer]` tokens.
    prompt_mask_BxL: bool, True on prompt positions.
    rng: PRNG key (split as in the module docstring).
    mask_id: MASK token id.
    eps: lower bound of p, in (0, 1).
    attention_mask: optional [B, L] padding mask, also passed to the model.

  Returns:
    (loss, metrics) with float32 scalar metrics `mask_prob_mean`, `masked_fraction` (masked /
    answer tokens), `answer_len_mean`, `masked_ce` (unweighted mean CE on masked tokens).
  """
  _check_tokens_and_masks(tokens_BxL, prompt_mask_BxL=prompt_mask_BxL,
                          attention_mask=attention_mask)
  masking._check_mask_id(mask_id)
  masking._check_eps(eps)
  batch = tokens_BxL.shape[0]
  p_key, mask_key = jax.random.split(rng)
  answer_BxL = ~prompt_mask_BxL.astype(bool) & _real_BxL(tokens_BxL, attention_mask)
  p_B = masking.sample_mask_prob(p_key, batch, eps)
  noisy_BxL, masked_BxL = masking.mask_tokens(mask_key, tokens_BxL, p_B, mask_id,
                                              maskable_BxL=answer_BxL)
  ce_BxL = chunked.per_position(forward_fn, params, noisy_BxL, tokens_BxL, token_ce,
                                attention_mask=attention_mask)
  loss = _sft_loss_from_ce(ce_BxL, masked_BxL, p_B, answer_BxL)
  num_answer = jnp.sum(answer_BxL.astype(jnp.float32))
  metrics = {
      "mask_prob_mean": jnp.mean(p_B),
      "masked_fraction": jnp.sum(masked_BxL.astype(jnp.float32)) / jnp.maximum(num_answer, 1.0),
      "answer_len_mean": num_answer / batch,
      "masked_ce": _masked_ce_mean(ce_BxL, masked_BxL),
  }
  return loss, metrics


# ----------------------------------------------------------------------------- likelihood

def _default_draws_per_batch(num_draws: int, cap: int = 16) -> int:
  """Largest divisor of num_draws that is ≤ cap."""
  return max(d for d in range(1, min(num_draws, cap) + 1) if num_draws % d == 0)


def _check_elbo_args(tokens_BxL, prompt_mask_BxL, attention_mask, mask_id, num_draws,
                     draws_per_batch, cfg_scale):
  """`mc_negative_elbo`'s checks: (draws per forward, cfg_scale tiled draw-major when per-row)."""
  _check_tokens_and_masks(tokens_BxL, prompt_mask_BxL=prompt_mask_BxL,
                          attention_mask=attention_mask)
  masking._check_mask_id(mask_id)
  _check_positive_int("num_draws", num_draws)
  if draws_per_batch is None:
    draws_per_batch = _default_draws_per_batch(num_draws)
  _check_positive_int("draws_per_batch", draws_per_batch)
  if num_draws % draws_per_batch:
    raise ValueError(f"draws_per_batch must divide num_draws={num_draws}, got {draws_per_batch}")
  static_cfg = guidance._check_cfg_scale(cfg_scale)
  batch = tokens_BxL.shape[0]
  if not static_cfg and jnp.ndim(cfg_scale) == 1:
    if jnp.shape(cfg_scale) != (batch,):
      raise ValueError(f"cfg_scale array must be a scalar or have shape ({batch},), "
                       f"got {jnp.shape(cfg_scale)}")
    cfg_scale = jnp.tile(cfg_scale, draws_per_batch)  # per-row scale follows the draw tiling
  return draws_per_batch, cfg_scale


def mc_negative_elbo(
    forward_fn: ForwardFn,
    params,
    tokens_BxL: Array,
    prompt_mask_BxL: Array,
    rng: Array,
    *,
    mask_id: int,
    num_draws: int,
    draws_per_batch: int | None = None,
    attention_mask: Array | None = None,
    cfg_scale: float | Array = 0.0,
) -> Array:
  """Monte Carlo negative ELBO of each row's answer given its prompt, in nats (SPEC §2; LLaDA).

  Per draw, with n the row's answer length: `k ~ U{1..n}`, a uniform random subset of k answer
  tokens is masked, and the draw's value is `(n/k)·Σ_{masked} CE`. Its expectation is the discrete
  ELBO `Σ_k (1/n)·(n/k)·E_{|S|=k}[Σ_{i∈S} −log p_θ(x_i | x_{∖S}, prompt)]`, an upper bound on the
  answer NLL. The k of the `draws_per_batch` draws of one batch are stratified
  (`masking.stratified_mask_counts`), each draw alone still uniform, so the average of `num_draws`
  draws is unbiased with lower variance than independent k. Draw batches run in a `lax.scan`; each
  is one forward over `draws_per_batch·B` rows (twice that with guidance).

  Args:
    forward_fn: `forward_fn(params, tokens, attention_mask=...) -> logits_BxLxV`.
    params: model parameters.
    tokens_BxL: `[prompt | answer]` tokens (no MASK in the answer).
    prompt_mask_BxL: bool, True on prompt positions.
    rng: PRNG key.
    mask_id: MASK token id.
    num_draws: number of Monte Carlo draws (static int ≥ 1); LLaDA uses 128.
    draws_per_batch: draws per forward (static int ≥ 1 dividing num_draws); default: the largest
      divisor of num_draws that is ≤ 16.
    attention_mask: optional [B, L] padding mask (padding is not answer).
    cfg_scale: unsupervised CFG weight (see `guidance.guided_logits`; a scalar or a per-row [B]
      array); 0 disables it.

  Returns:
    nll_B: float32 estimate per row (0 for a row without answer tokens).
  """
  n_draw, cfg_scale = _check_elbo_args(tokens_BxL, prompt_mask_BxL, attention_mask, mask_id,
                                       num_draws, draws_per_batch, cfg_scale)
  batch = tokens_BxL.shape[0]
  num_batches = num_draws // n_draw

  answer_BxL = ~prompt_mask_BxL.astype(bool) & _real_BxL(tokens_BxL, attention_mask)
  n_B = jnp.sum(answer_BxL.astype(jnp.int32), axis=-1)
  # Draw-major tiling: row d·B + b is draw d of sequence b.
  tile = lambda x: jnp.tile(x, (n_draw, 1))
  tokens_NxL = tile(tokens_BxL)
  prompt_NxL = tile(prompt_mask_BxL.astype(bool))
  answer_NxL = tile(answer_BxL)
  mask_NxL = None if attention_mask is None else tile(attention_mask)

  def one_batch(total_B: Array, key: Array) -> tuple[Array, None]:
    count_key, mask_key = jax.random.split(key)
    k_DxB = masking.stratified_mask_counts(count_key, n_B, n_draw)
    k_N = k_DxB.reshape(-1)
    masked_NxL = masking.mask_exactly(mask_key, answer_NxL, k_N)
    noisy_NxL = jnp.where(masked_NxL, jnp.asarray(mask_id, tokens_NxL.dtype), tokens_NxL)
    logits_NxLxV = guided_logits(forward_fn, params, noisy_NxL, prompt_NxL, cfg_scale=cfg_scale,
                                 mask_id=mask_id, attention_mask=mask_NxL)
    ce_NxL = token_ce(logits_NxLxV, tokens_NxL)
    weight_N = jnp.where(k_N > 0, tile(n_B[None, :]).reshape(-1) / jnp.maximum(k_N, 1), 0.0)
    draw_N = jnp.sum(jnp.where(masked_NxL, ce_NxL, 0.0), axis=-1) * weight_N.astype(jnp.float32)
    return total_B + jnp.sum(draw_N.reshape(n_draw, batch), axis=0), None

  keys = jax.random.split(rng, num_batches)
  total_B, _ = jax.lax.scan(one_batch, jnp.zeros((batch,), jnp.float32), keys)
  return total_B / num_draws
