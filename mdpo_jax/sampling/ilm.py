"""Sampling from an insertion language model: one token inserted per model call, in a
`lax.while_loop` inside one `jit`, static shapes, batched.

State per row (fixed width W, `data/ilm_rows.py`'s layout): tokens, attention mask, and
`slot_ok` — the real tokens a token may be inserted right after. Each call:
1. `forward(params, tokens, attention_mask=mask) -> (insert_logits [B, W, V], stop_logit [B])`;
2. a row stops when sigmoid(stop_logit / stop_temperature) ≥ `stop_threshold`, when it has made
   `max_new` insertions, when its buffer is full, or when no (slot, token) pair is allowed;
   a stopped row never changes again;
3. every other row picks one (slot i, token v) among the allowed pairs (`slot_ok` × `token_ok`):
   "joint" samples the pair from one softmax over all pairs; "factorised" samples the slot from
   its marginal Σ_v p(i, v), then the token from p(v | i). Temperature 0 takes the argmax;
   otherwise `categorical.sample_categorical` (precise Gumbel noise);
4. the token goes in at index i + 1: everything after i moves one place right (the row's last
   entry, a pad, falls off), so the answer stays contiguous and positions — numbered from the
   mask — shift by one after the insertion point. The inserted token is a slot from then on.

Tokens that are not slots (CLS, the prompt, and any given token the caller marks so, e.g. the
goal in infilling) are never replaced; they can only move right, in order, when something is
inserted before them. The loop ends when every row has stopped (at most `max_new` + 1 calls).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from mdpo_jax.sampling import categorical

SELECTIONS = ("joint", "factorised")
_NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class ILMSamplerConfig:
  """Static settings of `generate` (hashable: one compilation per config and shape)."""
  max_new: int                 # insertions per row at most
  temperature: float = 0.0     # 0 = argmax
  selection: str = "joint"     # joint | factorised (slot, then token)
  stop_threshold: float = 0.5  # stop when p(complete) ≥ this
  stop_temperature: float = 1.0

  def __post_init__(self):
    if not isinstance(self.max_new, int) or self.max_new < 1:
      raise ValueError(f"ILMSamplerConfig.max_new={self.max_new!r}: must be an integer ≥ 1")
    if self.selection not in SELECTIONS:
      raise ValueError(f"ILMSamplerConfig.selection={self.selection!r}: allowed {SELECTIONS}")
    if not self.temperature >= 0:
      raise ValueError(f"ILMSamplerConfig.temperature={self.temperature!r}: must be ≥ 0")
    if not 0 < self.stop_threshold <= 1:
      raise ValueError(f"ILMSamplerConfig.stop_threshold={self.stop_threshold!r}: must be in "
                       "(0, 1]")
    if not self.stop_temperature > 0:
      raise ValueError(f"ILMSamplerConfig.stop_temperature={self.stop_temperature!r}: must be "
                       "> 0")


class ILMTrajectory(NamedTuple):
  """One entry per call t (T = max_new + 1; calls after every row stopped stay zero/False).

  x: [T, B, W] tokens after the call. slot: [T, B] the index inserted after (−1: none).
  token: [T, B] the inserted token (−1: none). p_stop: [T, B] float32 p(complete) the call saw.
  inserted: [T, B] whether the row inserted at this call."""
  x: jax.Array
  slot: jax.Array
  token: jax.Array
  p_stop: jax.Array
  inserted: jax.Array


class ILMState(NamedTuple):
  tokens: jax.Array     # [B, W] int32
  mask: jax.Array       # [B, W] bool
  slot_ok: jax.Array    # [B, W] bool
  done: jax.Array       # [B] bool
  new: jax.Array        # [B] int32 insertions made
  calls: jax.Array      # [B] int32 model calls the row used (its last saw it stop)


def insert_at(x_BxW, slot_B, value_B, active_B):
  """x with value_B placed at slot_B + 1 and the entries after slot_B shifted one right (the
  last falls off), in the rows where `active_B`; other rows unchanged."""
  index_W = jnp.arange(x_BxW.shape[1])
  shifted_BxW = jnp.concatenate([x_BxW[:, :1], x_BxW[:, :-1]], axis=1)
  at_BxW = slot_B[:, None]
  value_BxW = jnp.broadcast_to(jnp.asarray(value_B, x_BxW.dtype)[:, None], x_BxW.shape)
  new_BxW = jnp.where(index_W <= at_BxW, x_BxW,
                      jnp.where(index_W == at_BxW + 1, value_BxW, shifted_BxW))
  return jnp.where(active_B[:, None], new_BxW, x_BxW)


def select(rng: jax.Array, insert_logits_BxWxV, allowed_BxWxV, config: ILMSamplerConfig):
  """(slot_B, token_B) among the allowed pairs, by `config.selection` at `config.temperature`."""
  logits = jnp.where(allowed_BxWxV, insert_logits_BxWxV.astype(jnp.float32), _NEG_INF)
  b, w, v = logits.shape
  t = config.temperature
  if config.selection == "joint":
    flat_B = categorical.sample_categorical(rng, logits.reshape(b, w * v), t)
    return flat_B // v, flat_B % v
  slot_rng, token_rng = jax.random.split(rng)
  slot_B = categorical.sample_categorical(slot_rng, jax.nn.logsumexp(logits, axis=-1), t)
  row_BxV = jnp.take_along_axis(logits, slot_B[:, None, None], axis=1)[:, 0]
  return slot_B, categorical.sample_categorical(token_rng, row_BxV, t)


def _call(forward_fn, params, state: ILMState, rng, token_ok_V, config: ILMSamplerConfig):
  """One model call: who stops, what the others insert. Returns (new state, record)."""
  insert_logits, stop_logit = forward_fn(params, state.tokens, attention_mask=state.mask)
  p_stop_B = jax.nn.sigmoid(stop_logit.astype(jnp.float32) / config.stop_temperature)
  allowed_BxWxV = (state.slot_ok & state.mask)[..., None] & token_ok_V[None, None, :]
  full_B = state.mask[:, -1]
  stops_B = ((p_stop_B >= config.stop_threshold) | (state.new >= config.max_new) | full_B
             | ~allowed_BxWxV.any(axis=(1, 2)))
  active_B = ~state.done & ~stops_B
  slot_B, token_B = select(rng, insert_logits, allowed_BxWxV, config)
  new_state = ILMState(
      tokens=insert_at(state.tokens, slot_B, token_B, active_B),
      mask=insert_at(state.mask, slot_B, jnp.ones_like(state.done), active_B),
      slot_ok=insert_at(state.slot_ok, slot_B, jnp.ones_like(state.done), active_B),
      done=state.done | stops_B, new=state.new + active_B,
      calls=state.calls + ~state.done)
  record = (jnp.where(active_B, slot_B, -1), jnp.where(active_B, token_B, -1), p_stop_B,
            active_B)
  return new_state, record


@functools.partial(jax.jit, static_argnames=("forward_fn", "config", "return_trajectory"))
def _generate(forward_fn, params, tokens_BxW, mask_BxW, slot_ok_BxW, token_ok_V, rng, *,
              config: ILMSamplerConfig, return_trajectory: bool):
  b, w = tokens_BxW.shape
  steps = config.max_new + 1
  state = ILMState(tokens_BxW.astype(jnp.int32), mask_BxW.astype(bool),
                   slot_ok_BxW.astype(bool) & mask_BxW.astype(bool), jnp.zeros((b,), bool),
                   jnp.zeros((b,), jnp.int32), jnp.zeros((b,), jnp.int32))
  traj_len = steps if return_trajectory else 1
  none_TxB = jnp.full((traj_len, b), -1, jnp.int32)
  traj = ILMTrajectory(jnp.zeros((traj_len, b, w), jnp.int32), none_TxB, none_TxB,
                       jnp.zeros((traj_len, b), jnp.float32), jnp.zeros((traj_len, b), bool))

  def cond(carry):
    t, state, _ = carry
    return (t < steps) & ~jnp.all(state.done)

  def body(carry):
    t, state, traj = carry
    state, (slot, token, p_stop, inserted) = _call(forward_fn, params, state,
                                                   jax.random.fold_in(rng, t), token_ok_V, config)
    if return_trajectory:
      put = lambda buf, x: jax.lax.dynamic_update_index_in_dim(buf, x, t, 0)  # noqa: E731
      traj = ILMTrajectory(put(traj.x, state.tokens), put(traj.slot, slot),
                           put(traj.token, token), put(traj.p_stop, p_stop),
                           put(traj.inserted, inserted))
    return t + 1, state, traj

  _, state, traj = jax.lax.while_loop(cond, body, (jnp.int32(0), state, traj))
  return state, traj


def generate(forward_fn: Callable, params, tokens_BxW, mask_BxW, slot_ok_BxW, config:
             ILMSamplerConfig, rng: jax.Array, *, token_ok_V, return_trajectory: bool = False):
  """(tokens [B, W], mask [B, W], calls [B][, ILMTrajectory]) after inserting until every row
  stops (module docstring). `slot_ok_BxW` marks where insertion may start (e.g. BOS for a fresh
  answer); `token_ok_V` the insertable vocabulary (`models.ilm.insertable_tokens`). `calls[b]`
  = model calls row b used, the last being the one that stopped it (insertions + 1 when the stop
  head fired)."""
  if tokens_BxW.shape != mask_BxW.shape or tokens_BxW.shape != slot_ok_BxW.shape:
    raise ValueError(f"tokens {tokens_BxW.shape}, mask {mask_BxW.shape} and slot_ok "
                     f"{slot_ok_BxW.shape} must have the same [B, W] shape")
  state, traj = _generate(forward_fn, params, jnp.asarray(tokens_BxW), jnp.asarray(mask_BxW),
                          jnp.asarray(slot_ok_BxW), jnp.asarray(token_ok_V, bool), rng,
                          config=config, return_trajectory=return_trajectory)
  out = (state.tokens, state.mask.astype(jnp.int32), state.calls)
  return out + (traj,) if return_trajectory else out
