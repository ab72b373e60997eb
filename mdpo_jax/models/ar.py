"""The autoregressive baseline: LLaDA's transformer with causal attention and next-token loss.

SMDM's claims (likelihood, reversal curse) and ILM's planning comparison are "masked diffusion vs
autoregressive at equal size and compute", so the baseline is the *same* network — parameters,
layout, logical axes, RoPE, RMSNorm, scan over layers, padding — differing only in the attention
mask (`LLaDAConfig.causal`) and the objective. It plugs in where LLaDA does: `model.family="ar"`
in a run config trains it with the ordinary `pretrain`/`sft` trainers (`sft_loop` picks the
losses below by `causal`), and `eval.sampler="ar"` decodes it left to right
(`mdpo_jax.sampling.ar`).

Logits are placed at their target, as every family's: the network's row i − 1 (which has seen
tokens ≤ i − 1) predicts token i, and `forward` shifts it to row i — the same shift as Dream's
(`dream.shift_to_targets`), so `forward(...)[:, i] = log p(x_i | x_<i)` up to normalisation and
the loss, likelihood and sampler code read "prediction for position i at i" as for the others.
Row 0 (and each row's first real token) is predicted by nothing and carries no loss.

No Hugging Face format: the baseline is trained from a preset here (`model.hf_checkpoint` is an
error for this family); its run checkpoints work like any other (`model.init_checkpoint`,
`python -m mdpo_jax.evaluate --checkpoint`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from mdpo_jax.diffusion import losses
from mdpo_jax.models import dream, llada
from mdpo_jax.models.llada import (  # noqa: F401  (this family's parameter API: LLaDA's)
    abstract_params, init_params, init_sharded_params, param_logical_axes, param_shardings)

Params = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class ARConfig(llada.LLaDAConfig):
  """`LLaDAConfig` with causal attention (always): a distinct type, so `models.families` tells the
  AR baseline from LLaDA by it. The mask token id stays (the sampler's buffer holds it at not yet
  generated positions, which causal attention never lets a prediction see)."""

  causal: bool = True

  def __post_init__(self):
    super().__post_init__()
    if self.causal is not True:
      raise ValueError(f"ARConfig.causal={self.causal!r}: the AR baseline attends causally "
                       "(allowed: True)")


def tiny(vocab_size: int = 64, **overrides) -> ARConfig:
  """`llada.tiny`'s shapes and special ids, causal."""
  return ARConfig(**dataclasses.asdict(llada.tiny(vocab_size, **overrides)) | {"causal": True})


PRESETS: dict[str, Callable[..., ARConfig]] = {"tiny": tiny}


def forward(config: ARConfig, params: Params, tokens_BxL, *, attention_mask=None, positions=None,
            adapters=None, projector: llada.Projector | None = None, **cache_kwargs):
  """Logits [B, L, V] where row i is the next-token prediction for token i (from tokens < i).

  The causal network, shifted by one position exactly as Dream's (`dream.forward`, which also
  honours the cache contract: `return_cache=True`, or `cache=, window_start=s, window_width=W`
  with s ≥ 1; with a causal network a window forward over a cache of the same prefix is exact,
  which is what `sampling.ar`'s incremental decoding uses)."""
  return dream.forward(config, params, tokens_BxL, attention_mask=attention_mask,
                       positions=positions, adapters=adapters, projector=projector,
                       **cache_kwargs)


def forward_fn(config: ARConfig) -> Callable:
  """`forward_fn(params, tokens_BxL, attention_mask=None)`: the family-agnostic form (a hashable
  partial), as `llada.forward_fn`."""
  return functools.partial(forward, config)


# ----------------------------------------------------------------------------------------------
# Next-token losses, with the diffusion losses' signatures so the trainers call either.
# ----------------------------------------------------------------------------------------------


def predicted_BxL(attention_mask_BxL) -> jax.Array:
  """Bool [B, L]: real tokens that have a real token before them (what next-token prediction
  can be asked for: a row's first real token has no context and no prediction)."""
  real_BxL = attention_mask_BxL.astype(bool)
  before_BxL = jnp.concatenate([jnp.zeros_like(real_BxL[:, :1]), real_BxL[:, :-1]], axis=1)
  return real_BxL & before_BxL


def next_token_loss_from_logits(logits_BxLxV, tokens_BxL, target_BxL, *, per_row: bool):
  """(loss, mean CE) of the target positions' cross-entropy. `per_row`: each row's mean, then the
  mean over rows (as LLaDA's SFT normalises by answer length); else Σ CE / number of targets."""
  ce_BxL = jnp.where(target_BxL, losses.token_ce(logits_BxLxV, tokens_BxL), 0.0)
  count_B = jnp.sum(target_BxL, axis=1).astype(jnp.float32)
  mean_ce = jnp.sum(ce_BxL) / jnp.maximum(jnp.sum(count_B), 1.0)
  if per_row:
    return jnp.mean(jnp.sum(ce_BxL, axis=1) / jnp.maximum(count_B, 1.0)), mean_ce
  return mean_ce, mean_ce


def pretrain_loss(forward_fn, params, tokens_BxL, rng, *, mask_id: int, eps: float = 1e-3,
                  attention_mask=None):
  """Next-token cross-entropy over every predictable real token (mean over tokens): the AR
  twin of `losses.pretrain_loss` (whose `rng`, `mask_id`, `eps` it accepts and ignores)."""
  del rng, mask_id, eps
  mask_BxL = jnp.ones(tokens_BxL.shape, bool) if attention_mask is None else attention_mask
  logits_BxLxV = forward_fn(params, tokens_BxL, attention_mask=attention_mask)
  loss, mean_ce = next_token_loss_from_logits(logits_BxLxV, tokens_BxL, predicted_BxL(mask_BxL),
                                              per_row=False)
  return loss, {"next_token_ce": mean_ce}


def sft_loss(forward_fn, params, tokens_BxL, prompt_mask_BxL, rng, *, mask_id: int,
             eps: float = 1e-3, attention_mask=None):
  """Next-token cross-entropy on the answer tokens (EOS padding included, as the masked SFT
  loss), per-row mean then mean over rows: the AR twin of `losses.sft_loss`."""
  del rng, mask_id, eps
  mask_BxL = jnp.ones(tokens_BxL.shape, bool) if attention_mask is None else attention_mask
  answer_BxL = predicted_BxL(mask_BxL) & ~prompt_mask_BxL.astype(bool)
  logits_BxLxV = forward_fn(params, tokens_BxL, attention_mask=attention_mask)
  loss, mean_ce = next_token_loss_from_logits(logits_BxLxV, tokens_BxL, answer_BxL, per_row=True)
  return loss, {"next_token_ce": mean_ce}


def completion_nll(forward_fn, params, tokens_BxL, prompt_mask_BxL, attention_mask=None):
  """Exact −log p(completion | prompt) per row, nats [B] (the chain rule over completion tokens):
  what the diffusion models' ELBO bounds, so the two are comparable."""
  mask_BxL = jnp.ones(tokens_BxL.shape, bool) if attention_mask is None else attention_mask
  answer_BxL = predicted_BxL(mask_BxL) & ~prompt_mask_BxL.astype(bool)
  logits_BxLxV = forward_fn(params, tokens_BxL, attention_mask=attention_mask)
  return jnp.sum(jnp.where(answer_BxL, losses.token_ce(logits_BxLxV, tokens_BxL), 0.0), axis=1)
