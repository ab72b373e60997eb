"""The first-hitting sampler (FHS): exact masked-diffusion sampling, one token per network call.

Why it is exact (Zheng et al., 2024, "Masked diffusion models are secretly time-agnostic masked
models and exploit inaccurate categorical sampling"; SPEC §3). Our network takes no time input,
so in the continuous-time reverse process time only decides *when* the next masked token is
revealed, never *which* one or what it becomes. Going backwards from time t with n masked tokens
(linear schedule: a token is masked at time t with probability t), each is revealed at an
independent time uniform on [0, t]; the first to be hit is uniform among the n and is hit at
τ = t·u^{1/n}, u ~ U(0, 1] (the largest of n uniforms). Its token is drawn from
p_θ(x_i | unmasked tokens). Repeating this n times draws from the model's joint with no
discretisation error, unlike a finite-step ancestral sampler, which may reveal several tokens in
one step from the factorised per-position conditionals.

One call here: choose one masked position of the generated part uniformly at random (an integer
draw over the row's masked count, so no float ties), draw its token from softmax(logits / T) with
`categorical.sample_categorical` (precise Gumbel noise, T = 0 → argmax; top-k/top-p, unsupervised
CFG, `eos_logit_neg_inf` and the never-sampled mask token exactly as in `sampler.generate`). All
`gen_length` calls are one `lax.scan` in one `jit`, static shapes, batched; prompts are left-padded
with `prompt_mask` (1 = real token) as in `sampler.generate`, and checked on the host at the
boundary (`guards.check_prompts`).

Blocks (semi-autoregressive): with `block_length < gen_length` the position is chosen uniformly
among the masked positions of the *current* block; blocks go left to right, `block_length` calls
each. This is still an exact sample of the joint when the model's conditionals are those of one
joint (any reveal order that does not look at the values being drawn is the chain rule); only the
order changes. Event times restart at t = 1 at each block (each block is its own diffusion).

Config: a `sampler.SamplerConfig`, read for gen_length, block_length, temperature, top_k, top_p,
cfg_scale, eos_logit_neg_inf, confidence_from (the recorded confidence), the token ids and
vocab_size. `steps`, `remasking`, `schedule` and `eos_confidence_neg_inf` do not apply (FHS makes
exactly gen_length calls and ranks nothing): they are ignored and normalised away, so configs
differing only there share one compilation.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from mdpo_jax.sampling import categorical, remask, sampler

# Sampler names for CLIs and configs: "llada" = `sampler.generate` (the scan with a commit
# schedule and remasking rule), "fhs" = this module's `generate`, "ar" = `sampling.ar.generate`
# (left-to-right decoding of the autoregressive baseline, `model.family="ar"`).
SAMPLERS = ("llada", "fhs", "ar")


class FHSTrajectory(NamedTuple):
  """`sampler.Trajectory`'s record plus event times; one row per call t (T = gen_length).

  x: [T, B, L] state before the call (x_t). x0: [T, B, L] the full prediction where(x_t masked,
  candidate, x_t): a draw from p_θ (temperature T) at every masked position, the committed token
  being the one at the chosen position (as in the main sampler). confidence: [T, B, L] float32
  p(candidate) under `confidence_from`. committed: [T, B, L], exactly one True per row and call.
  time: [T, B] float32 event time τ of the call's token (linear schedule, decreasing within a
  block, in (0, 1]; restarts at t = 1 at each block). The tokens never depend on it.
  """

  x: jax.Array
  x0: jax.Array
  confidence: jax.Array
  committed: jax.Array
  time: jax.Array

  def as_trajectory(self) -> sampler.Trajectory:
    """The record without event times, as the main sampler's `Trajectory` type."""
    return sampler.Trajectory(self.x, self.x0, self.confidence, self.committed)


def _choose_position(key, eligible_L):
  """Bool [L]: one eligible position, uniformly at random (none if nothing is eligible)."""
  count = jnp.sum(eligible_L.astype(jnp.int32))
  j = jax.random.randint(key, (), 0, jnp.maximum(count, 1))
  return eligible_L & (jnp.cumsum(eligible_L.astype(jnp.int32)) == j + 1)


def _sample_rows(config: sampler.SamplerConfig, keys_B, logits_BxxV):
  """Per-row draws from softmax(logits/T) (each row's noise from its own key)."""
  return jax.vmap(lambda k, z: categorical.sample_categorical(
      k, z, config.temperature, top_k=config.top_k, top_p=config.top_p))(keys_B, logits_BxxV)


def _candidates(config, x_BxL, logits_BxLxV, keys_B):
  """x with every generated position replaced by a draw from softmax(logits/T) there (drawn on
  the generated part only, so the draws do not depend on the prompt length)."""
  prompt_len = x_BxL.shape[1] - config.gen_length
  cand_BxG = _sample_rows(config, keys_B, logits_BxLxV[:, prompt_len:])
  return jnp.concatenate([x_BxL[:, :prompt_len], cand_BxG], axis=1)


def _record(config, x_BxL, logits_BxLxV, cand_BxL, chosen_BxL, log_t_B):
  """The trajectory row of one call."""
  conf_logits = logits_BxLxV
  if config.confidence_from == "tempered" and config.temperature > 0:
    conf_logits = logits_BxLxV / config.temperature
  conf_BxL = remask.confidence("low_confidence", conf_logits, cand_BxL)
  x0_BxL = jnp.where(x_BxL == config.mask_id, cand_BxL, x_BxL)
  return FHSTrajectory(x_BxL, x0_BxL, conf_BxL, chosen_BxL, jnp.exp(log_t_B))


def _generate(forward_fn, params, prompt_BxP, prompt_mask_BxP, rng, config: sampler.SamplerConfig,
              return_trajectory: bool):
  batch, prompt_len = prompt_BxP.shape
  block = config.block_length
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
  pos_L = jnp.arange(x_BxL.shape[1])

  def step(carry, t):
    x_BxL, log_t_B = carry
    keys_Bx3 = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, t), 3))(row_keys_B)
    i = t % block
    block_end = prompt_len + (t // block + 1) * block
    eligible_BxL = (x_BxL == config.mask_id) & (pos_L >= prompt_len) & (pos_L < block_end)
    chosen_BxL = jax.vmap(_choose_position)(keys_Bx3[:, 0], eligible_BxL)

    logits_BxLxV = sampler._model_logits(  # same logits (CFG, mask/EOS to −inf) as the main one
        forward_fn, params, x_BxL, attn_BxL, prompt_BxL, config)
    # A draw at every generated position (what the record's x̂0 needs; next to the network's
    # cost negligible), of which only the chosen one is committed.
    cand_BxL = _candidates(config, x_BxL, logits_BxLxV, keys_Bx3[:, 1])
    new_x_BxL = jnp.where(chosen_BxL, cand_BxL, x_BxL)

    # τ = t·u^{1/n} with n = masked positions left in the block, in logs (u ∈ (0, 1]).
    u_B = 1.0 - jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys_Bx3[:, 2])
    log_t_B = jnp.where(i == 0, 0.0, log_t_B) + jnp.log(u_B) / (block - i).astype(jnp.float32)
    record = _record(config, x_BxL, logits_BxLxV, cand_BxL, chosen_BxL,
                     log_t_B) if return_trajectory else None
    return (new_x_BxL, log_t_B), record

  carry0 = (x_BxL, jnp.zeros((batch,), jnp.float32))
  (x_BxL, _), trajectory = jax.lax.scan(step, carry0, jnp.arange(config.gen_length))
  return x_BxL, trajectory


_generate_jit = jax.jit(_generate, static_argnames=("forward_fn", "config", "return_trajectory"))


def _check_keys(prompt_BxP, rng) -> None:
  typed = jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)
  key_shape = tuple(rng.shape) if typed else tuple(rng.shape[:-1])
  if key_shape not in ((), (prompt_BxP.shape[0],)):
    raise ValueError(f"rng must be one key or one key per row ({prompt_BxP.shape[0]}), got "
                     f"key shape {key_shape}")


def generate(forward_fn: Callable, params, prompt_BxP, config: sampler.SamplerConfig,
             rng: jax.Array, *, prompt_mask=None, return_trajectory: bool = False):
  """Sample `config.gen_length` tokens after each (left-padded) prompt with the first-hitting
  sampler: `gen_length` network calls, each committing one uniformly chosen masked position.

  Same contract as `sampler.generate`: `forward_fn(params, tokens_BxL, attention_mask=mask_BxL)
  -> logits` (a static argument: pass the same hashable object each call), prompts [B, P] with
  `prompt_mask` (1 = real token) for left padding, host-side prompt checks (skipped under a trace),
  returns the sequences [B, P + gen_length], and with `return_trajectory=True` also an
  `FHSTrajectory` (`.as_trajectory()` gives the main sampler's type).

  `rng`: one key, or one key per row ([B] keys): then each row's draws come from its own key
  only, so a row's result does not depend on the batch it is run in.
  """
  prompt_mask = sampler.checked_inputs(prompt_BxP, prompt_mask, config)
  sampler.only_whole_logits(config, "first-hitting")
  _check_keys(prompt_BxP, rng)
  if config.cache != "none" or config.threshold is not None:
    raise ValueError(f"SamplerConfig.cache={config.cache!r}, threshold={config.threshold!r}: "
                     "the first-hitting sampler makes one model call per token by design; "
                     "allowed: cache='none', threshold=None")
  config = config.replace(steps=config.gen_length, remasking="random", schedule="llada",
                          eos_confidence_neg_inf=False)   # unused by FHS: one compilation
  tokens, trajectory = _generate_jit(sampler.static_callable(forward_fn), params, prompt_BxP,
                                     prompt_mask, rng, config=config,
                                     return_trajectory=return_trajectory)
  return (tokens, trajectory) if return_trajectory else tokens
