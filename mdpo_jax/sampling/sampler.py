"""The masked-diffusion sampler: the whole denoising trajectory as nested `lax.scan`s in one `jit`.

State `x = [prompt | MASK × gen_length]`. Blocks are decoded left to right (semi-autoregressive);
inside a block, step i commits `n[i]` tokens (SPEC §3). Static shapes throughout, so one
compilation serves every call with the same shapes and settings.

Any model plugs in through `forward_fn(params, tokens_BxL, attention_mask=mask_BxL) -> logits`
(for ours, `llada.forward_fn(config)`); it is a static argument, so pass the same (hashable)
object each call — a `functools.partial` of a module-level function is ideal.

Fast sampling (Fast-dLLM's ideas, batched and jitted; SPEC §3 "Beyond the references"):
* `cache="prefix"|"dual"`: a block's first step runs the full model and keeps every layer's
  keys/values (`llada.KVCache`); its other steps run the model only on a window — the current
  block and everything after it (prefix), or the block alone (dual) — attending to cached K/V
  elsewhere. `forward_fn` must then honour the cache contract of `llada.forward`
  (`return_cache=True`; `cache=, window_start=, window_width=`); LLaDA, Dream and LoRA do.
  Candidates and confidences outside the window are those of the last step that computed them.
  The cache is approximate: outside the window, deeper layers' K/V were computed before the
  block's latest tokens existed (and with RCR, re-masked earlier tokens keep their old K/V and
  candidates) until the next refresh. `cache_refresh=k` also makes every k-th step of a block a
  full step that refreshes the cache (k = 1: every step, which reproduces cache="none").
* `threshold=τ`: besides the scheduled tokens, every masked token of the block whose confidence
  p(x0) is ≥ τ is committed (RCR: no token whose running confidence is ≥ τ is re-masked), so a
  block can finish in fewer steps. A row whose block is done waits (its state is frozen); once
  every row is done the remaining steps of the block are skipped without a model call. `steps`
  stays the upper bound and the trajectory keeps `steps` rows (`Trajectory.active` marks which
  did work per row); `generate(..., return_nfe=True)` reports the model calls made.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mdpo_jax.diffusion import chunked, guidance
from mdpo_jax.sampling import categorical, guards, remask

REMASKING = ("low_confidence", "random", "margin", "entropy", "rcr")
CACHES = ("none", "prefix", "dual")
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
  cache / cache_refresh / threshold: fast sampling (module docstring). At T > 0 a cached
    sampler draws its noise for the window only, so its random stream differs from
    cache="none"'s (at T = 0 it differs only through the cache's approximation).
  vocab_size: the model's vocabulary (`for_model` sets it); `generate` then rejects prompt ids
    outside [0, vocab_size). None: only negative ids are rejected.
  head_chunk: 0 (default) computes each step's float32 logits [B, L, V] at once. N > 0 applies
    the LM head N positions at a time (the forward's `return_head` contract) and keeps only
    each position's candidate, confidence and score, so a step never holds [B, L, V] logits
    (LLaDA-8B: 49.7 GB for 128 rollouts × 768 positions). Its noise is drawn per position
    (key `fold_in(step key, position)`), so the tokens do not depend on N; at T > 0 they differ
    from head_chunk=0's stream (at T = 0 they are the same). Needs cache="none", cfg_scale=0.

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
  cache: str = "none"
  cache_refresh: int = 0
  threshold: float | None = None
  head_chunk: int = 0

  def __post_init__(self):
    self._check_lengths()
    self._check_numbers()
    for name, allowed in (("remasking", REMASKING), ("confidence_from", CONFIDENCE_FROM),
                          ("schedule", SCHEDULES), ("cache", CACHES)):
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
    if self.threshold is not None:
      if not _is_real(self.threshold) or not 0 < self.threshold <= 1:
        raise _bad("threshold", self.threshold, "None (off) or a confidence in (0, 1]")
      self._set("threshold", float(self.threshold))
    if not _is_int(self.cache_refresh) or self.cache_refresh < 0:
      raise _bad("cache_refresh", self.cache_refresh,
                 "an integer ≥ 0 (0 = refresh the cache only when a block starts)")
    self._set("cache_refresh", int(self.cache_refresh))
    if self.cache_refresh and self.cache == "none":
      raise _bad("cache_refresh", self.cache_refresh, "0 when cache='none' (nothing to refresh)")
    self._check_head_chunk()

  def _check_head_chunk(self) -> None:
    if not _is_int(self.head_chunk) or self.head_chunk < 0:
      raise _bad("head_chunk", self.head_chunk, "an integer ≥ 0 (0 = the whole sequence)")
    self._set("head_chunk", int(self.head_chunk))
    if self.head_chunk and (self.cache != "none" or self.cfg_scale > 0):
      raise _bad("head_chunk", self.head_chunk, f"0 with cache={self.cache!r} and "
                 f"cfg_scale={self.cfg_scale} (chunking needs cache='none', cfg_scale=0)")

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
  active: [T, B] bool, the row still had masked positions in its block at this step (always
  True without a threshold; under a threshold a False row's step changed nothing, and where a
  whole step is False no model call was made). None for samplers that do not record it.
  With a cache, x0/confidence outside the step's window are those of the last step that
  computed them.
  """

  x: jax.Array
  x0: jax.Array
  confidence: jax.Array
  committed: jax.Array
  active: jax.Array | None = None


def _model_logits(forward_fn, params, x_BxL, attn_BxL, prompt_BxL, config: SamplerConfig,
                  **cache_kwargs):
  """Float32 logits of the model (guided when cfg_scale > 0) with the mask token (and EOS, if
  asked) made impossible; with `return_cache=True`, (logits, cache)."""
  if config.cfg_scale > 0:
    out = guidance.guided_logits(forward_fn, params, x_BxL, prompt_BxL,
                                 cfg_scale=config.cfg_scale, mask_id=config.mask_id,
                                 attention_mask=attn_BxL, **cache_kwargs)
  else:
    out = forward_fn(params, x_BxL, attention_mask=attn_BxL, **cache_kwargs)
  logits, cache = out if cache_kwargs.get("return_cache") else (out, None)
  logits = _forbid(logits, config)
  return (logits, cache) if cache_kwargs.get("return_cache") else logits


def _forbid(logits_xV, config: SamplerConfig):
  """Float32 logits with the mask token (and EOS, if asked) made impossible. The mask token is
  never a candidate: committing it would leave a "committed" position masked (trained models
  never predict it; an untrained or fine-tuned one might)."""
  logits_xV = logits_xV.astype(jnp.float32).at[..., config.mask_id].set(-jnp.inf)
  if config.eos_logit_neg_inf:
    logits_xV = logits_xV.at[..., config.eos_id].set(-jnp.inf)
  return logits_xV


def _step_scores(config: SamplerConfig, logits_BxWxV, x0_BxW):
  """(recorded confidence, ranking score) of each candidate; the "random" kind's score is drawn
  by the caller (over the whole sequence) and here equals the confidence."""
  conf_logits = logits_BxWxV
  if config.confidence_from == "tempered" and config.temperature > 0:
    conf_logits = logits_BxWxV / config.temperature
  conf_BxW = remask.confidence("low_confidence", conf_logits, x0_BxW)
  kind = "low_confidence" if config.remasking == "rcr" else config.remasking
  score_BxW = conf_BxW if kind in ("low_confidence", "random") else remask.confidence(
      kind, conf_logits, x0_BxW)
  return conf_BxW, score_BxW


class _State(NamedTuple):
  """What one step hands the next: the tokens, RCR's running confidences, the last candidates,
  confidences and ranking scores computed at each position, and the model calls made."""

  x_BxL: jax.Array
  run_conf_BxL: jax.Array
  cand_BxL: jax.Array
  conf_BxL: jax.Array
  score_BxL: jax.Array
  nfe: jax.Array


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


class _Sampling:
  """One traced sampling call: its inputs and static settings, and the steps and blocks of the
  trajectory as methods (the jitted `_generate` below drives them)."""

  def __init__(self, forward_fn, params, prompt_BxP, prompt_mask_BxP, rng, config: SamplerConfig,
               return_trajectory: bool):
    self.forward_fn, self.params, self.rng, self.config = forward_fn, params, rng, config
    self.return_trajectory, self.tau = return_trajectory, config.threshold
    self.batch, self.prompt_len = prompt_BxP.shape
    self.total = self.prompt_len + config.gen_length
    self.counts = config.schedule_counts()
    # Tokens still to commit in this block after step i (RCR keeps this many masked).
    self.remaining = np.asarray([self.counts[i + 1:].sum() for i in range(config.steps_per_block)],
                                np.int32)
    gen = config.gen_length
    self.x0_BxL = jnp.concatenate([prompt_BxP.astype(jnp.int32),
                                   jnp.full((self.batch, gen), config.mask_id, jnp.int32)], axis=1)
    self.attn_BxL = jnp.concatenate([prompt_mask_BxP.astype(jnp.int32),
                                     jnp.ones((self.batch, gen), jnp.int32)], axis=1)
    self.prompt_BxL = jnp.concatenate([prompt_mask_BxP.astype(bool),
                                       jnp.zeros((self.batch, gen), bool)], axis=1)
    self.pos_L = jnp.arange(self.total)
    self.generated_L = self.pos_L >= self.prompt_len

  def initial_state(self) -> _State:
    shape = (self.batch, self.total)
    return _State(self.x0_BxL, jnp.zeros(shape, jnp.float32),
                  jnp.full(shape, self.config.mask_id, jnp.int32), jnp.zeros(shape, jnp.float32),
                  jnp.zeros(shape, jnp.float32), jnp.zeros((), jnp.int32))

  def model(self, x_BxL, **cache_kwargs):
    return _model_logits(self.forward_fn, self.params, x_BxL, self.attn_BxL, self.prompt_BxL,
                         self.config, **cache_kwargs)

  def todo_BxL(self, x_BxL, in_reach_L):
    """Masked generated positions at or before the current block's end: the block's work."""
    return (x_BxL == self.config.mask_id) & in_reach_L & self.generated_L

  def step_keys(self, t):
    """(sampling key, random-remasking key) of the global step t."""
    return jax.random.split(jax.random.fold_in(self.rng, t))

  def window(self, logits_BxWxV, t):
    """(candidates, confidences, ranking scores) [B, W] of the positions these logits are of."""
    config = self.config
    cand_BxW = categorical.sample_categorical(self.step_keys(t)[0], logits_BxWxV,
                                              config.temperature, top_k=config.top_k,
                                              top_p=config.top_p)
    return (cand_BxW, *_step_scores(config, logits_BxWxV, cand_BxW))

  def chunked_window(self, x_BxL, t):
    """`window` of the whole sequence with the LM head applied `head_chunk` positions at a
    time; each position draws its noise from its own key, so chunking changes nothing."""
    config = self.config
    hidden_BxLxD, head = self.forward_fn(self.params, x_BxL, attention_mask=self.attn_BxL,
                                         return_head=True)
    step_rng = self.step_keys(t)[0]

    def draw(key, logits_BxV):
      return categorical.sample_categorical(key, logits_BxV, config.temperature,
                                            top_k=config.top_k, top_p=config.top_p)

    def one(h_BxCxD, pos_C):
      logits_BxCxV = _forbid(head(h_BxCxD), config)
      keys_C = jax.vmap(jax.random.fold_in, (None, 0))(step_rng, pos_C)
      cand_BxC = jax.vmap(draw, in_axes=(0, 1), out_axes=1)(keys_C, logits_BxCxV)
      return (cand_BxC, *_step_scores(config, logits_BxCxV, cand_BxC))

    return chunked.map_positions(hidden_BxLxD, one, config.head_chunk)

  def full_window(self, x_BxL, t):
    """`window` of every position from a full forward (cache='none')."""
    if self.config.head_chunk:
      return self.chunked_window(x_BxL, t)
    return self.window(self.model(x_BxL), t)

  def scores(self, state: _State, window, start, t):
    """Candidates, confidences and ranking scores of the whole sequence after this step: the
    window's fresh ones (`window`'s triple, from `start`) written over the last known ones."""
    config = self.config
    cand_BxW, conf_BxW, score_BxW = window
    noise_rng = self.step_keys(t)[1]
    at = (0, start)
    cand_BxL = jax.lax.dynamic_update_slice(state.cand_BxL, cand_BxW, at)
    conf_BxL = jax.lax.dynamic_update_slice(state.conf_BxL, conf_BxW, at)
    score_BxL = jax.lax.dynamic_update_slice(state.score_BxL, score_BxW, at)
    if config.remasking == "random":
      score_BxL = jax.random.uniform(noise_rng, (self.batch, self.total), jnp.float32)
    return cand_BxL, conf_BxL, score_BxL

  def decide(self, state: _State, window, start, t, i, in_reach_L):
    """One step from the `window` triple of positions [start, start + W): (next state,
    record)."""
    config, tau = self.config, self.tau
    cand_BxL, conf_BxL, score_BxL = self.scores(state, window, start, t)
    rank_BxL = score_BxL
    if config.eos_confidence_neg_inf:
      is_end = (cand_BxL == config.eos_id) | (cand_BxL == config.eot_id)
      rank_BxL = jnp.where(is_end, -jnp.inf, rank_BxL)
    x_BxL, run_conf_BxL = state.x_BxL, state.run_conf_BxL
    masked_BxL = x_BxL == config.mask_id
    x0_BxL = jnp.where(masked_BxL, cand_BxL, x_BxL)
    eligible_BxL = self.todo_BxL(x_BxL, in_reach_L)   # only the generated part is ever written
    active_B = eligible_BxL.any(-1)
    new_run_conf_BxL = run_conf_BxL
    if config.remasking == "rcr":
      revisable_BxL = jnp.broadcast_to(in_reach_L & self.generated_L, x_BxL.shape)
      new_x_BxL, new_run_conf_BxL, _ = remask.rcr_step(
          x_BxL, x0_BxL, rank_BxL, run_conf_BxL, eligible_BxL, revisable_BxL,
          jnp.asarray(self.remaining)[i], int(self.remaining.max()), config.mask_id,
          threshold=tau)
    elif tau is None:
      new_x_BxL, _ = remask.commit_low_confidence(x_BxL, x0_BxL, rank_BxL, eligible_BxL,
                                                  jnp.asarray(self.counts)[i],
                                                  int(self.counts.max()))
    else:   # the scheduled top-n, and every confident token (never one ranked last, -inf)
      n_B = jnp.minimum(jnp.asarray(self.counts)[i], eligible_BxL.sum(-1))
      top_BxL = remask.select_top(rank_BxL, eligible_BxL, n_B, int(self.counts.max()))
      sure_BxL = eligible_BxL & (conf_BxL >= tau) & (rank_BxL > -jnp.inf)
      new_x_BxL = jnp.where(top_BxL | sure_BxL, x0_BxL, x_BxL)
    if tau is not None:   # a finished row waits for the others, unchanged
      new_x_BxL = jnp.where(active_B[:, None], new_x_BxL, x_BxL)
      new_run_conf_BxL = jnp.where(active_B[:, None], new_run_conf_BxL, run_conf_BxL)
    committed_BxL = masked_BxL & (new_x_BxL != config.mask_id)
    record = (Trajectory(x_BxL, x0_BxL, conf_BxL, committed_BxL, active_B)
              if self.return_trajectory else None)
    return _State(new_x_BxL, new_run_conf_BxL, cand_BxL, conf_BxL, score_BxL,
                  state.nfe + 1), record

  def idle(self, state: _State):
    """A skipped step (threshold: every row's block is done): no model call, nothing changes."""
    if not self.return_trajectory:
      return state, None
    x_BxL = state.x_BxL
    x0_BxL = jnp.where(x_BxL == self.config.mask_id, state.cand_BxL, x_BxL)
    return state, Trajectory(x_BxL, x0_BxL, state.conf_BxL, jnp.zeros(x_BxL.shape, bool),
                             jnp.zeros((self.batch,), bool))

  def unless_done(self, work, skip, state: _State, in_reach_L, *operands):
    """`work(state, *operands)`, or `skip(...)` once no row has work left in the block (only
    under a threshold; otherwise every step works)."""
    if self.tau is None:
      return work(state, *operands)
    return jax.lax.cond(self.todo_BxL(state.x_BxL, in_reach_L).any(), work, skip, state,
                        *operands)

  def run_block(self, state: _State, b, start, width: int):
    """Every step of block b (b and start may be traced; width is static)."""
    config, spb = self.config, self.config.steps_per_block
    in_reach_L = self.pos_L < self.prompt_len + (b + 1) * config.block_length
    t0 = b * spb
    if config.cache == "none":
      def step(state, i):
        work = lambda s: self.decide(s, self.full_window(s.x_BxL, t0 + i), 0, t0 + i, i,  # noqa: E731
                                     in_reach_L)
        return self.unless_done(work, self.idle, state, in_reach_L)
      return jax.lax.scan(step, state, jnp.arange(spb))

    logits_BxLxV, cache = self.model(state.x_BxL, return_cache=True)   # a block starts: refresh
    state, record0 = self.decide(state, self.window(logits_BxLxV, t0), 0, t0, 0, in_reach_L)

    def cached_step(carry, i):
      def windowed(state, cache):
        logits_BxWxV = self.model(state.x_BxL, cache=cache, window_start=start,
                                  window_width=width)
        return (*self.decide(state, self.window(logits_BxWxV, t0 + i), start, t0 + i, i,
                             in_reach_L), cache)

      def refreshed(state, cache):   # a full step, as at the block's start
        logits_BxLxV, cache = self.model(state.x_BxL, return_cache=True)
        return (*self.decide(state, self.window(logits_BxLxV, t0 + i), 0, t0 + i, i,
                             in_reach_L), cache)

      def work(state, cache):
        if not config.cache_refresh:
          return windowed(state, cache)
        return jax.lax.cond(i % config.cache_refresh == 0, refreshed, windowed, state, cache)

      state, cache = carry
      state, record, cache = self.unless_done(
          work, lambda s, c: (*self.idle(s), c), state, in_reach_L, cache)
      return (state, cache), record

    (state, _), records = jax.lax.scan(cached_step, (state, cache), jnp.arange(1, spb))
    if self.return_trajectory:
      records = jax.tree.map(lambda r0, r: jnp.concatenate([r0[None], r]), record0, records)
    return state, records


def _generate(forward_fn, params, prompt_BxP, prompt_mask_BxP, rng, config: SamplerConfig,
              return_trajectory: bool):
  """(final tokens, trajectory or None, model calls): blocks in a scan (none, dual) or unrolled
  (prefix, whose window shrinks block by block), each block's steps in a scan."""
  run = _Sampling(forward_fn, params, prompt_BxP, prompt_mask_BxP, rng, config,
                  return_trajectory)
  state, p, blen = run.initial_state(), run.prompt_len, config.block_length
  if config.cache == "prefix":
    per_block = []
    for b in range(config.num_blocks):
      state, records = run.run_block(state, b, p + b * blen, run.total - p - b * blen)
      per_block.append(records)
    trajectory = (jax.tree.map(lambda *r: jnp.concatenate(r), *per_block)
                  if return_trajectory else None)
  else:   # none: the whole sequence every step; dual: the block's window, a fixed width
    width = blen if config.cache == "dual" else run.total
    state, trajectory = jax.lax.scan(lambda s, b: run.run_block(s, b, p + b * blen, width),
                                     state, jnp.arange(config.num_blocks))
    if return_trajectory:
      trajectory = jax.tree.map(lambda r: r.reshape((-1,) + r.shape[2:]), trajectory)
  return state.x_BxL, trajectory, state.nfe


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


_CACHE_KEYWORDS = ("return_cache", "cache", "window_start", "window_width")


def check_cache_contract(forward_fn: Callable, config: SamplerConfig) -> None:
  """A cached sampler needs a forward that takes the cache keywords of `llada.forward` (or any
  **kwargs passed on to one); otherwise one line now rather than a TypeError inside the trace."""
  if config.cache == "none":
    return
  try:
    parameters = inspect.signature(forward_fn).parameters.values()
  except (TypeError, ValueError):   # not introspectable: let the call decide
    return
  if not any(p.kind is p.VAR_KEYWORD or p.name == "cache" for p in parameters):
    name = getattr(getattr(forward_fn, "func", forward_fn), "__qualname__", repr(forward_fn))
    raise ValueError(f"SamplerConfig.cache={config.cache!r}: forward_fn {name} does not take the "
                     f"cache keywords {_CACHE_KEYWORDS} of llada.forward; allowed with it: "
                     "cache='none'")


def only_whole_logits(config: SamplerConfig, sampler_name: str) -> None:
  """One line for a sampler that computes whole logits when `head_chunk` asks otherwise."""
  if config.head_chunk:
    raise ValueError(f"SamplerConfig.head_chunk={config.head_chunk}: the {sampler_name} "
                     "sampler computes the whole logits; allowed: 0")


def check_head_contract(forward_fn: Callable, config: SamplerConfig) -> None:
  """head_chunk > 0 needs a forward with `return_head` (`llada.forward`'s contract)."""
  if config.head_chunk and not chunked.takes_head(forward_fn):
    name = getattr(getattr(forward_fn, "func", forward_fn), "__qualname__", repr(forward_fn))
    raise ValueError(f"SamplerConfig.head_chunk={config.head_chunk}: forward_fn {name} has no "
                     "return_head parameter (llada.forward's contract); allowed with it: 0")


def generate(forward_fn: Callable, params, prompt_BxP, config: SamplerConfig, rng: jax.Array, *,
             prompt_mask=None, return_trajectory: bool = False, return_nfe: bool = False):
  """Sample `config.gen_length` tokens after each (left-padded) prompt.

  Returns the final sequences [B, P + gen_length] (prompt included); with
  `return_trajectory=True` also a `Trajectory`, with `return_nfe=True` also the number of model
  calls made (an int32 scalar array; a guided call on the doubled batch counts once), in that
  order: (tokens[, trajectory][, nfe]). Rows may have different prompt lengths: left-pad
  and pass `prompt_mask` (1 = real token). Params and prompts may be sharded (e.g. batch over the
  data axes of a mesh); the output follows XLA's sharding propagation.

  Concrete prompts are checked on the host first (`guards.check_prompts`, nothing is added to
  the compiled program): every id must lie in [0, config.vocab_size) and no real prompt
  position may hold the mask token (infilling a prompt is not supported), else a one-line
  `ValueError` names the id, its row and position. Called under a trace (inside `jax.jit`) the
  check is skipped; no remasking kind ever writes a prompt position.
  """
  prompt_mask = checked_inputs(prompt_BxP, prompt_mask, config)
  check_cache_contract(forward_fn, config)
  check_head_contract(forward_fn, config)
  tokens, trajectory, nfe = _generate_jit(static_callable(forward_fn), params, prompt_BxP,
                                          prompt_mask, rng, config=config,
                                          return_trajectory=return_trajectory)
  out = (tokens,) + ((trajectory,) if return_trajectory else ()) + ((nfe,) if return_nfe else ())
  return out if len(out) > 1 else tokens
