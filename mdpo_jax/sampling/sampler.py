"""The masked-diffusion sampler: the whole denoising trajectory as one `lax.scan` in one `jit`.

State `x = [prompt | MASK × gen_length]`. Blocks are decoded left to right (semi-autoregressive);
inside a block, step i commits `n[i]` tokens (SPEC §3). Every step is one network call on the full
sequence; the scan runs over all `steps` (block index = step // steps_per_block), with static
shapes, so one compilation serves every call with the same shapes and settings.

Any model plugs in through `forward_fn(params, tokens_BxL, attention_mask=mask_BxL) -> logits`
(for ours, `llada.forward_fn(config)`); it is a static argument, so pass the same (hashable)
object each call — a `functools.partial` of a module-level function is ideal.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mdpo_jax.diffusion import guidance
from mdpo_jax.sampling import categorical, guards, remask

REMASKING = ("low_confidence", "random", "margin", "entropy", "rcr")
CONFIDENCE_FROM = ("logits", "tempered")
SCHEDULES = ("llada", "linear")


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _bad(name: str, value, allowed: str) -> ValueError:
  return ValueError(f"SamplerConfig.{name}={value!r}: allowed {allowed}")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Every knob of the sampler; validated at construction, hashable (a static jit argument).

  confidence_from: which distribution scores a candidate for low_confidence/RCR and is recorded
    in the trajectory. "logits" (default) = p(x0) under softmax(logits), as LLaDA's reference
    sampler does: the ranking then reflects the model's belief independently of the sampling
    temperature, and published LLaDA numbers were produced this way. "tempered" = softmax(logits/T)
    as in MDPO's code (identical to "logits" at T = 0).
  eos_logit_neg_inf: EOS can never be sampled (LLaDA `logits_eos_inf`).
  eos_confidence_neg_inf: EOS/EOT candidates are committed last (LLaDA `confidence_eos_eot_inf`).
  top_k / top_p filter the sampling distribution only; confidences use the unfiltered logits.
  vocab_size: the model's vocabulary (`for_model` sets it); `generate` then rejects prompt ids
    outside [0, vocab_size). None: only negative ids are rejected.

  Every error is one line, `SamplerConfig.field=value: allowed ...`. Numbers are stored as
  Python ints/floats (numpy scalars are accepted), so equal settings hash equal.
  """

  gen_length: int = 256
  block_length: int = 32
  steps: int = 256
  temperature: float = 0.0
  remasking: str = "low_confidence"
  confidence_from: str = "logits"
  cfg_scale: float = 0.0
  top_k: int | None = None
  top_p: float | None = None
  schedule: str = "llada"
  eos_logit_neg_inf: bool = False
  eos_confidence_neg_inf: bool = False
  mask_id: int = 126336
  eos_id: int = 126081
  eot_id: int = 126348
  vocab_size: int | None = None

  def __post_init__(self):
    self._check_lengths()
    self._check_numbers()
    for name, allowed in (("remasking", REMASKING), ("confidence_from", CONFIDENCE_FROM),
                          ("schedule", SCHEDULES)):
      value = getattr(self, name)
      if not isinstance(value, str) or value not in allowed:
        raise _bad(name, value, f"one of {allowed}")
    for name in ("eos_logit_neg_inf", "eos_confidence_neg_inf"):
      if not isinstance(getattr(self, name), (bool, np.bool_)):
        raise _bad(name, getattr(self, name), "True or False")
      self._set(name, bool(getattr(self, name)))
    self._check_ids()

  def _set(self, name: str, value) -> None:
    object.__setattr__(self, name, value)   # frozen: normalise types during validation only

  def _check_lengths(self) -> None:
    for name in ("gen_length", "block_length", "steps"):
      value = getattr(self, name)
      if not _is_int(value) or value <= 0:
        raise _bad(name, value, "a positive integer")
      self._set(name, int(value))
    if self.gen_length % self.block_length:
      raise _bad("block_length", self.block_length, f"a divisor of gen_length={self.gen_length}")
    if self.steps % self.num_blocks or self.steps > self.gen_length:
      raise _bad("steps", self.steps, f"a multiple of the number of blocks "
                 f"gen_length/block_length={self.num_blocks} and at most one step per token "
                 f"(steps ≤ gen_length={self.gen_length})")

  def _check_numbers(self) -> None:
    for name, what in (("temperature", "0 = argmax"), ("cfg_scale", "0 = no guidance")):
      value = getattr(self, name)
      if not _is_real(value) or not (math.isfinite(value) and value >= 0):
        raise _bad(name, value, f"a finite number ≥ 0 ({what})")
      self._set(name, float(value))
    if self.top_k is not None:
      if not _is_int(self.top_k) or self.top_k < 0:
        raise _bad("top_k", self.top_k, "None or an integer ≥ 0 (0 = off)")
      self._set("top_k", int(self.top_k))
    if self.top_p is not None:
      if not _is_real(self.top_p) or not 0 < self.top_p <= 1:   # also rejects NaN
        raise _bad("top_p", self.top_p, "None or a number in (0, 1] (1 = off)")
      self._set("top_p", float(self.top_p))

  def _check_ids(self) -> None:
    if self.vocab_size is not None:
      if not _is_int(self.vocab_size) or self.vocab_size <= 0:
        raise _bad("vocab_size", self.vocab_size, "None or a positive integer")
      self._set("vocab_size", int(self.vocab_size))
    top = "∞" if self.vocab_size is None else f"vocab_size={self.vocab_size}"
    for name in ("mask_id", "eos_id", "eot_id"):
      value = getattr(self, name)
      if not _is_int(value) or not 0 <= value < (self.vocab_size or math.inf):
        raise _bad(name, value, f"a token id in [0, {top})")
      self._set(name, int(value))
    if self.mask_id in (self.eos_id, self.eot_id):
      raise _bad("mask_id", self.mask_id, f"an id other than eos_id={self.eos_id} and "
                 f"eot_id={self.eot_id}")

  @property
  def num_blocks(self) -> int:
    return self.gen_length // self.block_length

  @property
  def steps_per_block(self) -> int:
    return self.steps // self.num_blocks

  def schedule_counts(self) -> np.ndarray:
    """Tokens committed at each step of a block (static)."""
    return remask.transfer_schedule(self.block_length, self.steps_per_block, self.schedule)

  def replace(self, **changes) -> "SamplerConfig":
    return dataclasses.replace(self, **changes)

  @classmethod
  def for_model(cls, model_config, **kwargs) -> "SamplerConfig":
    """Take mask/EOS/EOT ids and the vocabulary size from a model config (e.g. `LLaDAConfig`)."""
    ids = dict(mask_id=model_config.mask_token_id, eos_id=model_config.eos_token_id,
               eot_id=model_config.eot_token_id,
               vocab_size=getattr(model_config, "vocab_size", None))
    ids.update(kwargs)
    return cls(**ids)


class Trajectory(NamedTuple):
  """The denoising record, one row per step t (stacked [T, B, L], L = prompt + gen_length).

  x: state before the step (x_t). x0: the full prediction x̂0_t = where(x_t masked, candidate,
  x_t). confidence: float32 score of each candidate under `confidence_from` (all positions).
  committed: positions masked in x_t and unmasked after the step.
  """

  x: jax.Array
  x0: jax.Array
  confidence: jax.Array
  committed: jax.Array


def _model_logits(forward_fn, params, x_BxL, attn_BxL, prompt_BxL, config: SamplerConfig):
  if config.cfg_scale > 0:
    logits = guidance.guided_logits(forward_fn, params, x_BxL, prompt_BxL,
                                    cfg_scale=config.cfg_scale, mask_id=config.mask_id,
                                    attention_mask=attn_BxL)
  else:
    logits = forward_fn(params, x_BxL, attention_mask=attn_BxL)
  # The mask token is never a candidate: committing it would leave a "committed" position masked
  # (trained models never predict it; an untrained or fine-tuned one might).
  logits = logits.astype(jnp.float32).at[..., config.mask_id].set(-jnp.inf)
  if config.eos_logit_neg_inf:
    logits = logits.at[..., config.eos_id].set(-jnp.inf)
  return logits


def _step_scores(config: SamplerConfig, logits_BxLxV, x0_BxL, rng):
  """(recorded confidence, selection score) of each candidate."""
  conf_logits = logits_BxLxV
  if config.confidence_from == "tempered" and config.temperature > 0:
    conf_logits = logits_BxLxV / config.temperature
  conf_BxL = remask.confidence("low_confidence", conf_logits, x0_BxL)
  kind = "low_confidence" if config.remasking == "rcr" else config.remasking
  score_BxL = conf_BxL if kind == "low_confidence" else remask.confidence(
      kind, conf_logits, x0_BxL, rng)
  if config.eos_confidence_neg_inf:
    is_end = (x0_BxL == config.eos_id) | (x0_BxL == config.eot_id)
    score_BxL = jnp.where(is_end, -jnp.inf, score_BxL)
  return conf_BxL, score_BxL


@dataclasses.dataclass(frozen=True)
class _StaticPartial:
  """A `functools.partial` that is equal (and hashes equal) to any partial of the same function
  and arguments, so `generate(functools.partial(llada.forward, cfg), ...)` built afresh on every
  call still hits the compilation cache."""

  func: Callable
  args: tuple
  keywords: tuple

  def __call__(self, *args, **kwargs):
    return self.func(*self.args, *args, **dict(self.keywords), **kwargs)


def static_callable(fn: Callable) -> Callable:
  """`fn` as a static jit argument that compares by value when it is a partial."""
  if isinstance(fn, functools.partial):
    try:
      key = _StaticPartial(fn.func, fn.args, tuple(sorted(fn.keywords.items())))
      hash(key)
      return key
    except TypeError:  # unhashable bound arguments: fall back to identity
      return fn
  return fn


def _generate(forward_fn, params, prompt_BxP, prompt_mask_BxP, rng, config: SamplerConfig,
              return_trajectory: bool):
  batch, prompt_len = prompt_BxP.shape
  total = prompt_len + config.gen_length
  spb = config.steps_per_block
  counts = config.schedule_counts()
  # Tokens still to commit in this block after step i (RCR keeps this many masked).
  remaining = np.asarray([counts[i + 1:].sum() for i in range(spb)], np.int32)
  counts_S, remaining_S = jnp.asarray(counts), jnp.asarray(remaining)

  x_BxL = jnp.concatenate(
      [prompt_BxP.astype(jnp.int32),
       jnp.full((batch, config.gen_length), config.mask_id, jnp.int32)], axis=1)
  attn_BxL = jnp.concatenate(
      [prompt_mask_BxP.astype(jnp.int32), jnp.ones((batch, config.gen_length), jnp.int32)], 1)
  prompt_BxL = jnp.concatenate(
      [prompt_mask_BxP.astype(bool), jnp.zeros((batch, config.gen_length), bool)], axis=1)
  pos_L = jnp.arange(total)
  generated_L = pos_L >= prompt_len

  def step(carry, t):
    x_BxL, run_conf_BxL = carry
    block, i = t // spb, t % spb
    block_end = prompt_len + (block + 1) * config.block_length
    in_reach_L = pos_L < block_end  # at or before the current block's end
    step_rng, noise_rng = jax.random.split(jax.random.fold_in(rng, t))

    logits_BxLxV = _model_logits(forward_fn, params, x_BxL, attn_BxL, prompt_BxL, config)
    cand_BxL = categorical.sample_categorical(step_rng, logits_BxLxV, config.temperature,
                                              top_k=config.top_k, top_p=config.top_p)
    masked_BxL = x_BxL == config.mask_id
    x0_BxL = jnp.where(masked_BxL, cand_BxL, x_BxL)
    conf_BxL, score_BxL = _step_scores(config, logits_BxLxV, cand_BxL, noise_rng)

    if config.remasking == "rcr":
      fill_BxL = masked_BxL & in_reach_L & generated_L
      new_x_BxL, run_conf_BxL, _ = remask.rcr_step(
          x_BxL, x0_BxL, score_BxL, run_conf_BxL, fill_BxL,
          jnp.broadcast_to(in_reach_L & generated_L, x_BxL.shape), remaining_S[i],
          int(remaining.max()), config.mask_id)
    else:  # like RCR, only the generated part is ever written (a prompt keeps its tokens)
      eligible_BxL = masked_BxL & in_reach_L & generated_L
      new_x_BxL, _ = remask.commit_low_confidence(x_BxL, x0_BxL, score_BxL, eligible_BxL,
                                                  counts_S[i], int(counts.max()))
    committed_BxL = masked_BxL & (new_x_BxL != config.mask_id)
    record = Trajectory(x_BxL, x0_BxL, conf_BxL, committed_BxL) if return_trajectory else None
    return (new_x_BxL, run_conf_BxL), record

  run_conf0_BxL = jnp.zeros((batch, total), jnp.float32)
  (x_BxL, _), trajectory = jax.lax.scan(step, (x_BxL, run_conf0_BxL), jnp.arange(config.steps))
  return x_BxL, trajectory


_generate_jit = jax.jit(_generate, static_argnames=("forward_fn", "config", "return_trajectory"))


def checked_inputs(prompt_BxP, prompt_mask, config: SamplerConfig):
  """The boundary checks every sampler runs before its jitted scan (types, shapes, and on
  concrete inputs `guards.check_prompts`); returns the prompt mask (all ones when None)."""
  if not isinstance(config, SamplerConfig):
    raise TypeError(f"config must be a SamplerConfig, got {type(config).__name__}")
  if getattr(prompt_BxP, "ndim", None) != 2:
    raise ValueError(f"prompt_BxP must be a [batch, prompt_len] integer array, got shape "
                     f"{getattr(prompt_BxP, 'shape', None)}")
  if not jnp.issubdtype(prompt_BxP.dtype, jnp.integer):
    raise ValueError(f"prompt_BxP must hold integer token ids, got dtype {prompt_BxP.dtype}")
  if prompt_mask is not None and tuple(prompt_mask.shape) != tuple(prompt_BxP.shape):
    raise ValueError(f"prompt_mask shape {tuple(prompt_mask.shape)} must equal prompt shape "
                     f"{tuple(prompt_BxP.shape)}")
  guards.check_prompts(prompt_BxP, prompt_mask, mask_id=config.mask_id,
                       vocab_size=config.vocab_size)
  return jnp.ones(prompt_BxP.shape, jnp.int32) if prompt_mask is None else prompt_mask


def generate(forward_fn: Callable, params, prompt_BxP, config: SamplerConfig, rng: jax.Array, *,
             prompt_mask=None, return_trajectory: bool = False):
  """Sample `config.gen_length` tokens after each (left-padded) prompt.

  Returns the final sequences [B, P + gen_length] (prompt included), and with
  `return_trajectory=True` also a `Trajectory`. Rows may have different prompt lengths: left-pad
  and pass `prompt_mask` (1 = real token). Params and prompts may be sharded (e.g. batch over the
  data axes of a mesh); the output follows XLA's sharding propagation.

  Concrete prompts are checked on the host first (`guards.check_prompts`, nothing is added to
  the compiled program): every id must lie in [0, config.vocab_size) and no real prompt
  position may hold the mask token (infilling a prompt is not supported), else a one-line
  `ValueError` names the id, its row and position. Called under a trace (inside `jax.jit`) the
  check is skipped; no remasking kind ever writes a prompt position.
  """
  prompt_mask = checked_inputs(prompt_BxP, prompt_mask, config)
  tokens, trajectory = _generate_jit(static_callable(forward_fn), params, prompt_BxP,
                                     prompt_mask, rng, config=config,
                                     return_trajectory=return_trajectory)
  return (tokens, trajectory) if return_trajectory else tokens
