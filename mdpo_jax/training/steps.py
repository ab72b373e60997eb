"""Jitted update steps shared by the trainers: gradients averaged over micro-batches (one
`lax.scan`, one dispatch per optimiser step), then one optimiser update.

Cheaper than `optax.MultiSteps`, which would dispatch once per micro-batch. A micro-batch's
gradient function is `grad_fn(params, micro, index) -> ((loss, aux), grads)`; `index` lets a
step draw per-micro-batch noise (`fold_in(key, index)`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from mdpo_jax.training import state as state_lib


def split_micro(batch, num_micro: int):
  """[N, ...] leaves → [num_micro, N / num_micro, ...]."""
  return jax.tree.map(lambda x: x.reshape(num_micro, x.shape[0] // num_micro, *x.shape[1:]),
                      batch)


def mean_gradients(grad_fn: Callable, params, micro_batches, num_micro: int):
  """(mean grads, per-micro-batch losses [M], per-micro-batch aux [M]) by a scan over the
  leading axis of `micro_batches`."""
  def body(grads, xs):
    index, micro = xs
    (loss, aux), g = grad_fn(params, micro, index)
    return jax.tree.map(jnp.add, grads, g), (loss, aux)

  zeros = jax.tree.map(jnp.zeros_like, params)
  grads, (losses, aux) = jax.lax.scan(body, zeros, (jnp.arange(num_micro), micro_batches))
  return jax.tree.map(lambda g: g / num_micro, grads), losses, aux


def apply_gradients(state: state_lib.TrainState, grads, optimizer: optax.GradientTransformation,
                    loss: jax.Array) -> tuple[state_lib.TrainState, dict[str, Any]]:
  """One optimiser update; returns the new state, the gradient norm (before clipping) and
  `skipped` (1.0 when the loss or a gradient was NaN/Inf and the optimiser kept the old state:
  `optim.make_optimizer`'s wrapper sees the non-finite loss as a non-finite gradient)."""
  grads = jax.tree.map(lambda g: jnp.where(jnp.isfinite(loss), g, jnp.nan), grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                      opt_state=opt_state)
  grads_f32 = jax.tree.map(lambda g: g.astype(jnp.float32), grads)   # bf16 grads: norm in f32
  return new, {"grad_norm": optax.tree.norm(grads_f32),
               "skipped": 1.0 - opt_state.last_finite.astype(jnp.float32)}
