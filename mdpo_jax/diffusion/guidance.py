"""Unsupervised classifier-free guidance (SMDM; LLaDA `get_logits`), shared by sampler and likelihood.

SPEC §3. A masked diffusion model trained on unconditional data is its own unconditional model:
hide the prompt behind MASK and it predicts the answer without it. So guidance needs no extra
training: run the model on `x` (conditional) and on `x` with every prompt position set to MASK
(unconditional; generated or answer tokens, masked or not, are kept), in ONE batched forward, and
combine `logits = un + (w + 1)·(cond − un)`. w = 0 is the plain conditional model.
"""
from __future__ import annotations

import numbers
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ForwardFn = Callable[..., Array]


def _check_cfg_scale(cfg_scale) -> bool:
  """Returns True when cfg_scale is a static Python number (False for an array)."""
  if isinstance(cfg_scale, bool):
    raise ValueError(f"cfg_scale must be a float >= 0 or an array, got {cfg_scale!r}")
  if isinstance(cfg_scale, numbers.Real):
    if not cfg_scale >= 0.0:
      raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale!r}")
    return True
  if not isinstance(cfg_scale, (jax.Array, np.ndarray)):
    raise ValueError(
        f"cfg_scale must be a Python float >= 0 or a jax array, got {type(cfg_scale).__name__}")
  return False


def unconditional_tokens(tokens_BxL: Array, prompt_mask_BxL: Array, mask_id: int) -> Array:
  """The unconditional input: every prompt position replaced by `mask_id`, everything else kept."""
  return jnp.where(prompt_mask_BxL.astype(bool), jnp.asarray(mask_id, tokens_BxL.dtype), tokens_BxL)


def guided_logits(
    forward_fn: ForwardFn,
    params,
    tokens_BxL: Array,
    prompt_mask_BxL: Array,
    *,
    cfg_scale: float | Array,
    mask_id: int,
    attention_mask: Array | None = None,
    **forward_kwargs,
) -> Array:
  """Logits under unsupervised classifier-free guidance, `un + (w + 1)·(cond − un)`.

  Args:
    forward_fn: `forward_fn(params, tokens_BxL, attention_mask=mask_or_None) -> logits_BxLxV`.
    params: model parameters (any pytree; passed through).
    tokens_BxL: current (partly masked) tokens.
    prompt_mask_BxL: bool, True on prompt positions (left padding may be included: it is also
      replaced by MASK in the unconditional input, as in LLaDA, and stays excluded by
      `attention_mask`).
    cfg_scale: guidance weight w ≥ 0. A Python number is static: 0 runs exactly one plain forward
      and returns its logits unchanged (no dtype cast); w > 0 runs one forward on the batch
      `[cond; uncond]` (2B rows). A jax array (a scalar, or shape [B] for a per-row scale, e.g. a
      learned/sampled schedule as in Co-GRPO) always takes the guided path.
    mask_id: id of the MASK token.
    attention_mask: optional [B, L] padding mask, used for both halves.
    **forward_kwargs: passed to `forward_fn` (the KV-cache contract of `llada.forward`): with
      `return_cache=True` the result is (logits, cache), the cache holding both halves (2B rows
      under guidance); a `cache=` given back must be one made here with the same cfg_scale.

  Returns:
    logits_BxLxV (or [B, W, V] for a window forward); float32 whenever guidance is applied.
  """
  if jnp.ndim(tokens_BxL) != 2:
    raise ValueError(f"tokens_BxL must have shape [batch, length], got {jnp.shape(tokens_BxL)}")
  if jnp.shape(prompt_mask_BxL) != jnp.shape(tokens_BxL):
    raise ValueError(f"prompt_mask_BxL must have shape {jnp.shape(tokens_BxL)}, "
                     f"got {jnp.shape(prompt_mask_BxL)}")
  if attention_mask is not None and jnp.shape(attention_mask) != jnp.shape(tokens_BxL):
    raise ValueError(f"attention_mask must have shape {jnp.shape(tokens_BxL)}, "
                     f"got {jnp.shape(attention_mask)}")
  static = _check_cfg_scale(cfg_scale)
  if static and cfg_scale == 0.0:
    return forward_fn(params, tokens_BxL, attention_mask=attention_mask, **forward_kwargs)

  batch = tokens_BxL.shape[0]
  if static:
    w = jnp.float32(cfg_scale)
  else:
    w = jnp.asarray(cfg_scale, jnp.float32)
    if w.ndim == 1 and w.shape[0] == batch:
      w = w[:, None, None]
    elif w.ndim != 0:
      raise ValueError(f"cfg_scale array must be a scalar or have shape ({batch},), got {w.shape}")

  un_BxL = unconditional_tokens(tokens_BxL, prompt_mask_BxL, mask_id)
  both_2BxL = jnp.concatenate([tokens_BxL, un_BxL], axis=0)
  both_mask = None
  if attention_mask is not None:
    both_mask = jnp.concatenate([attention_mask, attention_mask], axis=0)
  out = forward_fn(params, both_2BxL, attention_mask=both_mask, **forward_kwargs)
  logits_2BxLxV, cache = out if forward_kwargs.get("return_cache") else (out, None)
  cond_BxLxV = logits_2BxLxV[:batch].astype(jnp.float32)
  un_BxLxV = logits_2BxLxV[batch:].astype(jnp.float32)
  guided_BxLxV = un_BxLxV + (w + 1.0) * (cond_BxLxV - un_BxLxV)
  return (guided_BxLxV, cache) if forward_kwargs.get("return_cache") else guided_BxLxV
