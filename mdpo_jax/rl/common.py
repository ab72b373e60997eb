"""What the policy-gradient losses share (MDPO, diffu-GRPO, and the algorithms to come).

Argument checks that run before any forward pass (Python scalars, batch keys and shapes), the
per-token log-probabilities of targets under a model, and the PPO clipped surrogate. Pure and
jit-able; Python-scalar arguments are static.
"""
from __future__ import annotations

import functools
import numbers
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from mdpo_jax.diffusion import chunked

Array = jax.Array
ForwardFn = Callable[..., Array]
Batch = Mapping[str, Any]
Metrics = dict[str, Array]


# ----------------------------------------------------------------------------- validation

def check_positive_real(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) > 0.0:
    raise ValueError(f"{name} must be a Python float > 0, got {value!r}")


def check_nonnegative_real(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) >= 0.0:
    raise ValueError(f"{name} must be a Python float >= 0, got {value!r}")


def check_clip_eps(clip_eps) -> None:
  if isinstance(clip_eps, bool) or not isinstance(clip_eps, numbers.Real) or \
      not 0.0 <= float(clip_eps) < 1.0:
    raise ValueError(f"clip_eps must be a Python float in [0, 1), got {clip_eps!r}")


def check_batch(batch: Batch, required: tuple[str, ...], optional: tuple[str, ...],
                 row_key: str, per_example: tuple[str, ...]) -> tuple[int, int]:
  """Every [N, L] array has the shape of batch[row_key]; per-example arrays are [N]."""
  if not isinstance(batch, Mapping):
    raise TypeError(f"batch must be a mapping of arrays, got {type(batch).__name__}")
  missing = [k for k in required if k not in batch]
  if missing:
    raise ValueError(f"batch is missing keys {missing}; required {list(required)}, "
                     f"optional {list(optional)}")
  unknown = [k for k in batch if k not in required + optional]
  if unknown:
    raise ValueError(f"batch has unknown keys {unknown}; allowed {list(required + optional)}")
  shape = jnp.shape(batch[row_key])
  if len(shape) != 2:
    raise ValueError(f"batch['{row_key}'] must have shape [N, L], got {shape}")
  for key in required + optional:
    value = batch.get(key)
    if value is None:
      continue
    want = shape[:1] if key in per_example else shape
    if jnp.shape(value) != want:
      raise ValueError(f"batch['{key}'] must have shape {want}, got {jnp.shape(value)}")
  return shape


# ----------------------------------------------------------------------------- log-probs

def token_logprobs_from_logits(logits_BxLxV: Array, targets_BxL: Array, *,
                               temperature: float = 1.0) -> Array:
  """`log_softmax(logits / temperature)[target]` per position, in float32.

  The MDPO reference divides by `temperature + finfo(logits.dtype).eps` (bf16 logits: +0.0078) to
  guard T = 0; we require T > 0 and divide by T exactly (SPEC §4.5).
  """
  check_positive_real("temperature", temperature)
  if jnp.ndim(logits_BxLxV) != jnp.ndim(targets_BxL) + 1 or \
      jnp.shape(logits_BxLxV)[:-1] != jnp.shape(targets_BxL):
    raise ValueError(f"logits must have shape {jnp.shape(targets_BxL)} + (vocab,), "
                     f"got {jnp.shape(logits_BxLxV)}")
  scaled = logits_BxLxV.astype(jnp.float32)
  if float(temperature) != 1.0:
    scaled = scaled / jnp.float32(temperature)
  logp_BxLxV = jax.nn.log_softmax(scaled, axis=-1)
  idx = jnp.asarray(targets_BxL).astype(jnp.int32)[..., None]
  return jnp.take_along_axis(logp_BxLxV, idx, axis=-1)[..., 0]


def token_logprobs(forward_fn: ForwardFn, params, tokens_BxL: Array, targets_BxL: Array, *,
                   temperature: float, attention_mask: Array | None = None) -> Array:
  """Per-position log-probability of `targets_BxL` given the input `tokens_BxL` (SPEC §4.5).

  One forward pass; `logp = log_softmax(logits / temperature)[target]` in float32 at every position
  (callers select the positions they train on). The same function gives the policy's, the old
  policy's and the frozen reference's log-probs (different `params`). A forward that takes
  `return_head` (the model families') gets its LM head applied a chunk of positions at a time, so
  no [B, L, V] float32 logits exist (`diffusion/chunked.py`); any other forward is called plainly.

  Args:
    forward_fn: `forward_fn(params, tokens, attention_mask=...) -> logits_BxLxV`.
    params: model parameters.
    tokens_BxL: model input (x_t: prompt + partially masked generation).
    targets_BxL: tokens whose log-probs are returned (x̂0_t).
    temperature: the rollout temperature T (Python float > 0); see `token_logprobs_from_logits`.
    attention_mask: optional [B, L] padding mask passed to the model.

  Returns:
    logp_BxL: float32.
  """
  check_positive_real("temperature", temperature)
  if jnp.ndim(tokens_BxL) != 2 or jnp.shape(targets_BxL) != jnp.shape(tokens_BxL):
    raise ValueError(f"tokens_BxL must be [batch, length] and targets_BxL the same shape, got "
                     f"{jnp.shape(tokens_BxL)} and {jnp.shape(targets_BxL)}")
  if attention_mask is not None and jnp.shape(attention_mask) != jnp.shape(tokens_BxL):
    raise ValueError(f"attention_mask must have shape {jnp.shape(tokens_BxL)}, "
                     f"got {jnp.shape(attention_mask)}")
  score = functools.partial(token_logprobs_from_logits, temperature=temperature)
  return chunked.per_position(forward_fn, params, tokens_BxL, targets_BxL, score,
                              attention_mask=attention_mask)


# ----------------------------------------------------------------------------- surrogate

def clipped_surrogate(logp: Array, old_logp: Array | None, adv: Array, clip_eps: float
                      ) -> tuple[Array, Array, Array]:
  """PPO surrogate `min(ρ·A, clip(ρ, 1−ε, 1+ε)·A)` per token (to be maximised).

  `old_logp=None` means ρ = exp(logp − sg(logp)) ≡ 1 with gradient ∇logp (one update per rollout).
  Returns (surrogate, ρ, clipped) where `clipped` marks tokens whose clipped branch is strictly
  smaller, i.e. the tokens the clip removes from the gradient.
  """
  old = jax.lax.stop_gradient(logp if old_logp is None else old_logp.astype(jnp.float32))
  ratio = jnp.exp(logp - old)
  unclipped = ratio * adv
  clipped_value = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
  return jnp.minimum(unclipped, clipped_value), ratio, clipped_value < unclipped


def only_where(mask: Array, stored: Array | None, logp: Array) -> Array | None:
  """Stored log-probs on `mask`, sg(logp) elsewhere: values outside the loss (padding, -inf) can
  then never turn the masked-out terms' gradients into NaN."""
  if stored is None:
    return None
  return jax.lax.stop_gradient(jnp.where(mask, jnp.asarray(stored).astype(jnp.float32), logp))


def masked_token_mean(x: Array, mask: Array) -> Array:
  return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1).astype(jnp.float32)
