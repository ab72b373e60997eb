"""The training state: one pytree that a checkpoint saves and restores whole."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """params, optimiser state, optimiser-step counter and the base RNG key.

  `rng` holds raw uint32 key data (`jax.random.key_data`), which every checkpoint format can
  store; per-step keys are `fold_in(rng, step)`, so a resumed run draws exactly the keys an
  uninterrupted run would.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array

  def step_key(self, step=None) -> jax.Array:
    return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step if step is None
                              else step)


@flax.struct.dataclass
class ExtraTrainState(TrainState):
  """A train state with an RL algorithm's own trainable state beside the model's (Co-GRPO's
  schedule policy): `extra = {"params": ..., "opt_state": ...}`, checkpointed with the rest."""

  extra: Any


def with_extra(state: TrainState, extra) -> ExtraTrainState:
  """`state` (or a state-shaped tree of shardings) plus `extra`."""
  fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(TrainState)}
  return ExtraTrainState(**fields, extra=extra)


def fresh_extra(params, optimizer: optax.GradientTransformation) -> dict:
  """Extra trainable state at its start: the params and `optimizer.init` of them."""
  return {"params": params, "opt_state": optimizer.init(params)}


def create(params, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
  """A fresh state at step 0 (unsharded; `create_sharded` places it on a mesh)."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params),
                    rng=jax.random.key_data(jax.random.key(seed)))


def shardings(params, optimizer: optax.GradientTransformation, seed: int,
              mesh: jax.sharding.Mesh) -> TrainState:
  """The NamedSharding of every leaf of a fresh state over `params` (arrays, or
  `jax.ShapeDtypeStruct`s carrying shardings): the optimiser moments sharded exactly as the params
  they track.

  Left to propagation, `optimizer.init` under jit returns *replicated* moments (the zeros carry
  no sharding), so an FSDP run would hold every float32 Adam moment whole on every device;
  `optax.tree_map_params` gives each params-shaped part of the optimiser state the params'
  shardings, and counters and the like are replicated.
  """
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  param_shardings = jax.tree.map(
      lambda x: x.sharding if isinstance(getattr(x, "sharding", None),
                                         jax.sharding.NamedSharding) else replicated, params)
  abstract = jax.eval_shape(lambda p: create(p, optimizer, seed), params)
  opt_shardings = optax.tree_map_params(optimizer, lambda _, sh: sh, abstract.opt_state,
                                        param_shardings,
                                        transform_non_params=lambda _: replicated)
  return TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings,
                    rng=replicated)


def create_sharded(params, optimizer: optax.GradientTransformation, seed: int,
                   mesh: jax.sharding.Mesh) -> TrainState:
  """A fresh state placed on `mesh` with `shardings(...)`: moments sharded as their params."""
  out = shardings(params, optimizer, seed, mesh)
  return jax.jit(lambda p: create(p, optimizer, seed), out_shardings=out)(params)


def abstract_sharded(params, optimizer: optax.GradientTransformation, seed: int,
                     mesh: jax.sharding.Mesh) -> TrainState:
  """What `create_sharded` would return, as `jax.ShapeDtypeStruct`s carrying their shardings;
  allocates nothing (`params` may be abstract too). The memory planner lowers steps against it."""
  shapes = jax.eval_shape(lambda p: create(p, optimizer, seed), params)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings(params, optimizer, seed, mesh))
