"""Left-to-right decoding of the autoregressive baseline (`models/ar.py`): one token per call.

The same contract as `sampler.generate` and `fhs.generate` — `forward_fn(params, tokens_BxL,
attention_mask=...)` whose row i predicts position i, left-padded prompts with `prompt_mask`,
host-side prompt checks, one or one-key-per-row `rng`, static shapes, the whole decode one
`lax.scan` in one `jit` — so evaluation, the generate CLI and the benchmarks run the baseline
exactly as they run the diffusion samplers. Step t draws position P + t from softmax(logits / T)
(`categorical.sample_categorical`: precise Gumbel noise, T = 0 → argmax, top-k/top-p; the mask
token never, EOS never with `eos_logit_neg_inf`).

`config.cache`: "none" runs the network over the whole buffer every step (not-yet-generated
positions hold the mask token; causal attention never lets a prediction see them); "prefix" is
incremental decoding with a KV cache — one full forward, then per token a window over the last
written position and the next (the family's shifted forward) whose fresh keys/values are written
into the cache — exact for a causal network (same tokens as
"none" up to float rounding), O(L) instead of O(L²) work per token. The rest of `SamplerConfig`
(steps, remasking, threshold, schedule, block_length) does not apply and is normalised away;
unsupervised CFG (masking the prompt) has no meaning for a model that never saw masks and is
rejected.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from mdpo_jax.sampling import categorical, fhs, remask, sampler


def _draw(config: sampler.SamplerConfig, keys_B, logits_BxV):
  return jax.vmap(lambda k, z: categorical.sample_categorical(
      k, z, config.temperature, top_k=config.top_k, top_p=config.top_p))(keys_B, logits_BxV)


def _record(config, x_BxL, new_x_BxL, logits_BxV, tok_B, pos):
  """The trajectory row of step t: state before, the prefix after (x̂0 of an AR decoder is its
  committed prefix), the drawn token's confidence, the one committed position."""
  conf_logits = logits_BxV
  if config.confidence_from == "tempered" and config.temperature > 0:
    conf_logits = logits_BxV / config.temperature
  conf_B = remask.confidence("low_confidence", conf_logits[:, None], tok_B[:, None])[:, 0]
  at_L = jnp.arange(x_BxL.shape[1]) == pos
  conf_BxL = jnp.where(at_L, conf_B[:, None], 0.0).astype(jnp.float32)
  committed_BxL = jnp.broadcast_to(at_L, x_BxL.shape)
  return sampler.Trajectory(x_BxL, new_x_BxL, conf_BxL, committed_BxL)


def _generate(forward_fn, params, prompt_BxP, prompt_mask_BxP, rng, config: sampler.SamplerConfig,
              return_trajectory: bool):
  batch, prompt_len = prompt_BxP.shape
  if not jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.wrap_key_data(rng)
  row_keys_B = jax.random.split(rng, batch) if rng.ndim == 0 else rng
  x_BxL = jnp.concatenate(
      [prompt_BxP.astype(jnp.int32),
       jnp.full((batch, config.gen_length), config.mask_id, jnp.int32)], axis=1)
  attn_BxL = jnp.concatenate(
      [prompt_mask_BxP.astype(jnp.int32), jnp.ones((batch, config.gen_length), jnp.int32)], 1)
  prompt_BxL = jnp.concatenate(
      [prompt_mask_BxP.astype(bool), jnp.zeros((batch, config.gen_length), bool)], axis=1)
  model = lambda x, **kw: sampler._model_logits(  # noqa: E731  (mask/EOS rules as the others)
      forward_fn, params, x, attn_BxL, prompt_BxL, config, **kw)
  incremental = config.cache == "prefix"
  cache = model(x_BxL, return_cache=True)[1] if incremental else None

  def step(carry, t):
    x_BxL, cache = carry
    pos = prompt_len + t
    if incremental:   # the window runs positions pos−1 (just written) and pos into the cache
      window_BxWxV, cache = model(x_BxL, cache=cache, window_start=pos, window_width=1,
                                  return_cache=True)
      logits_BxV = window_BxWxV[:, 0]
    else:
      logits_BxV = jax.lax.dynamic_index_in_dim(model(x_BxL), pos, axis=1, keepdims=False)
    keys_B = jax.vmap(lambda k: jax.random.fold_in(k, t))(row_keys_B)
    tok_B = _draw(config, keys_B, logits_BxV)
    new_x_BxL = jax.lax.dynamic_update_slice(x_BxL, tok_B[:, None].astype(jnp.int32), (0, pos))
    record = (_record(config, x_BxL, new_x_BxL, logits_BxV, tok_B, pos)
              if return_trajectory else None)
    return (new_x_BxL, cache), record

  (x_BxL, _), trajectory = jax.lax.scan(step, (x_BxL, cache), jnp.arange(config.gen_length))
  return x_BxL, trajectory


_generate_jit = jax.jit(_generate, static_argnames=("forward_fn", "config", "return_trajectory"))


def check_config(config: sampler.SamplerConfig) -> sampler.SamplerConfig:
  """One-line errors for what AR decoding cannot do; the config with the knobs it ignores
  normalised (so settings differing only there share one compilation)."""
  if config.cache == "dual":
    raise ValueError("SamplerConfig.cache='dual': autoregressive decoding caches its prefix; "
                     "allowed: 'none' or 'prefix'")
  if config.cfg_scale:
    raise ValueError(f"SamplerConfig.cfg_scale={config.cfg_scale!r}: unsupervised guidance masks "
                     "the prompt, which an autoregressive model never saw; allowed: 0")
  return config.replace(block_length=config.gen_length, steps=config.gen_length,
                        remasking="low_confidence", schedule="llada", threshold=None,
                        cache_refresh=0, eos_confidence_neg_inf=False)


def generate(forward_fn: Callable, params, prompt_BxP, config: sampler.SamplerConfig,
             rng: jax.Array, *, prompt_mask=None, return_trajectory: bool = False):
  """Decode `config.gen_length` tokens after each (left-padded) prompt, left to right.

  Returns the sequences [B, P + gen_length], and with `return_trajectory=True` also a
  `sampler.Trajectory` (one row per token: x before, x̂0 = the prefix after, the committed
  position). `forward_fn` must be a causal model's (`models.ar.forward_fn`): on a bidirectional
  one the predictions would see the mask tokens ahead. `rng`: one key or one per row.
  """
  prompt_mask = sampler.checked_inputs(prompt_BxP, prompt_mask, config)
  sampler.only_whole_logits(config, "autoregressive")
  fhs._check_keys(prompt_BxP, rng)
  config = check_config(config)
  sampler.check_cache_contract(forward_fn, config)
  tokens, trajectory = _generate_jit(sampler.static_callable(forward_fn), params, prompt_BxP,
                                     prompt_mask, rng, config=config,
                                     return_trajectory=return_trajectory)
  return (tokens, trajectory) if return_trajectory else tokens
