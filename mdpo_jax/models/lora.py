"""LoRA fine-tuning of LLaDA through `qwix` (low-rank adapters on frozen base weights).

Why this shape. qwix applies LoRA by intercepting `jnp.einsum`/`lax.dot_general` inside the call of
an NNX module (`qwix.apply_lora_to_model`): it picks a `qwix.LoraRule` by matching the *current
module's path* against the rule's `module_path` regex, recognises the weight operand as an
`nnx.Param` attribute of that module (`flax_util.find_param`), and keeps the adapters as
`<param>_lora_a` / `<param>_lora_b` (`nnx.LoRAParam`) attributes of the same module. Our model
keeps all its math in the pure `llada.forward`, with the layers stacked and scanned, so
intercepting `LLaDA.__call__` would see every einsum inside one root module, could not find the
scanned per-layer weight slices among its attributes and would create one adapter shared by all
layers. Instead, this file gives qwix exactly what it expects, one layer at a time:

  `_Layer` is an NNX module with one `_Projection` submodule per projection (`q_proj`, ...,
  `ff_out`; paths are those names), each holding its weight as `kernel` and applying it with
  `jnp.einsum(llada.PROJECTIONS[name], x, kernel)`. A `qwix.LoraProvider` whose rule's
  `module_path` is `q_proj|v_proj|...` (the chosen targets) is applied to it with
  `qwix.apply_lora_to_model`, so qwix selects the targets, derives the adapter shapes from each
  einsum (A: the weight's contracting dims × rank, B: rank × its output dims), initialises them
  (A ~ he_uniform, B = 0) and computes x·W + (alpha/rank)·x·A·B.

  * `init_adapters` runs that once per layer (vmapped over layer keys) and returns only the
    adapters, stacked along a leading `layers` axis: {"blocks": {name: {"lora_a", "lora_b"}}}.
  * `forward` is `llada.forward` with a projector that, inside the layer scan, rebuilds the
    qwix-wrapped `_Layer` from this layer's base-weight slices and adapter slices
    (`nnx.merge`, trace-time only) and routes every projection through it.

So the base params stay the plain pytree (an ordinary argument; no gradient or optimizer state is
ever made for them), the trainable pytree is only the adapters, and `merge` folds them into the
base weights (W + (alpha/rank)·A·B) for saving, export or sampling with the plain forward.
`policy_forward_fn` is the same forward taking {"base", "adapters"} as one params argument (what
the RL trainer samples and scores old-policy log-probs with).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import qwix
from flax import nnx

from mdpo_jax import parallel
from mdpo_jax.models import families, llada

TARGETS = tuple(llada.PROJECTIONS)      # q_proj, k_proj, v_proj, attn_out, ff_proj, up_proj, ff_out
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "attn_out")
_PARAM = "kernel"                        # the weight's attribute name in `_Projection`; qwix names
_QWIX_A, _QWIX_B = _PARAM + "_lora_a", _PARAM + "_lora_b"   # the adapters after it


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Which projections get adapters, their rank and alpha (scale alpha/rank). Frozen, hashable."""

  rank: int
  alpha: float
  targets: tuple[str, ...] = TARGETS

  def __post_init__(self):
    _check_rank(self.rank, "LoraConfig.rank", allow_zero=False)
    _check_alpha(self.alpha, "LoraConfig.alpha")
    object.__setattr__(self, "targets", _parse_targets(self.targets, "LoraConfig.targets"))

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def rule(self) -> qwix.LoraRule:
    """The qwix rule: module paths of `_Layer` are the projection names."""
    return qwix.LoraRule(module_path="|".join(self.targets), rank=self.rank, alpha=self.alpha)


def _check_rank(value, field: str, *, allow_zero: bool):
  low = 0 if allow_zero else 1
  if not isinstance(value, int) or isinstance(value, bool) or value < low:
    raise ValueError(f"{field}={value!r}: must be an integer ≥ {low}"
                     + (" (0 = LoRA off)" if allow_zero else ""))


def _check_alpha(value, field: str):
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
      or value <= 0:
    raise ValueError(f"{field}={value!r}: must be a finite number > 0")


def _parse_targets(value, field: str) -> tuple[str, ...]:
  if isinstance(value, str):
    names = tuple(t.strip() for t in value.split(",") if t.strip())
  elif isinstance(value, Sequence) and all(isinstance(t, str) for t in value):
    names = tuple(value)
  else:
    raise ValueError(f"{field}={value!r}: must be a comma-separated string or a sequence of "
                     f"names from {TARGETS}")
  unknown = [t for t in names if t not in TARGETS]
  if not names or unknown or len(set(names)) != len(names):
    raise ValueError(f"{field}={value!r}: must name each target at most once, at least one, "
                     f"from {TARGETS}" + (f"; unknown {unknown}" if unknown else ""))
  return tuple(t for t in TARGETS if t in names)   # canonical order


def from_config(model: Mapping[str, Any]) -> LoraConfig | None:
  """LoraConfig from a run's `config.model` (`lora_rank`, `lora_alpha`, `lora_targets`);
  None when `lora_rank` is 0. Errors name the config field, the value and what is allowed."""
  rank = model.get("lora_rank", 0)
  _check_rank(rank, "model.lora_rank", allow_zero=True)
  if rank == 0:
    return None
  alpha = model.get("lora_alpha", 16.0)
  _check_alpha(alpha, "model.lora_alpha")
  targets = _parse_targets(model.get("lora_targets", ",".join(TARGETS)), "model.lora_targets")
  return LoraConfig(rank=rank, alpha=float(alpha), targets=targets)


def check_fits(config: families.ModelConfig, lora: LoraConfig, field: str = "model.lora_rank"):
  """The rank must not exceed any adapted weight's input or output size (it would not be low)."""
  shapes = _layer_shapes(config)
  for name in lora.targets:
    fan_in, fan_out = _fans(name, shapes[name])
    if lora.rank > min(fan_in, fan_out):
      raise ValueError(f"{field}={lora.rank}: must be ≤ min(fan-in, fan-out) = "
                       f"{min(fan_in, fan_out)} of {name} {shapes[name]}")


# ----------------------------------------------------------------------------------------------
# The per-layer NNX module that qwix wraps.
# ----------------------------------------------------------------------------------------------


class _Projection(nnx.Module):
  """One weight and its einsum; qwix finds `kernel` as the einsum's weight operand."""

  def __init__(self, kernel, equation: str):
    self.kernel = nnx.Param(kernel)
    self.equation = equation

  def __call__(self, x):
    return jnp.einsum(self.equation, x, self.kernel.get_value())


class _Layer(nnx.Module):
  """One block's seven projections as submodules named after the weights (their qwix paths)."""

  def __init__(self, kernels: Mapping[str, Any]):
    for name in TARGETS:
      setattr(self, name, _Projection(kernels[name], llada.PROJECTIONS[name]))

  def __call__(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """{name: x} -> {name: projection(x)}: any subset, so a block can call them one by one."""
    return {name: getattr(self, name)(x) for name, x in inputs.items()}


def _layer_shapes(config: families.ModelConfig) -> dict[str, tuple[int, ...]]:
  blocks = families.of_config(config).model.abstract_params(config)["blocks"]
  return {name: tuple(blocks[name].shape[1:]) for name in TARGETS}


def _fans(name: str, shape) -> tuple[int, int]:
  """(fan-in, fan-out) of a projection weight: sizes of its contracted and its output dims."""
  lhs, rhs = llada.PROJECTIONS[name].split("->")[0].split(",")
  fan_in = math.prod(d for c, d in zip(rhs, shape) if c in lhs)
  return fan_in, math.prod(shape) // fan_in


def _qwix_layer(config: families.ModelConfig, lora: LoraConfig, rng) -> _Layer:
  """A `_Layer` (zero base weights of one layer, param dtype) with qwix's adapters created."""
  dt = jnp.dtype(config.param_dtype)
  shapes = _layer_shapes(config)
  kernels = {name: jnp.zeros(shapes[name], dt) for name in TARGETS}
  inputs = {}
  for name in TARGETS:   # a one-token input of the right shape for each einsum
    lhs, rhs = llada.PROJECTIONS[name].split("->")[0].split(",")
    sizes = dict(zip(rhs, shapes[name]))
    inputs[name] = jnp.zeros(tuple(sizes.get(c, 1) for c in lhs), dt)
  provider = qwix.LoraProvider([lora.rule()])
  return qwix.apply_lora_to_model(_Layer(kernels), provider, inputs, rngs=nnx.Rngs(params=rng))


@functools.lru_cache(maxsize=16)
def _layer_graph(config: families.ModelConfig, lora: LoraConfig):
  """(graphdef, abstract state) of the qwix-wrapped `_Layer`; shapes only, nothing allocated."""
  return nnx.split(nnx.eval_shape(lambda: _qwix_layer(config, lora, jax.random.key(0))))


def _from_qwix(state: Mapping[str, Any]) -> dict:
  return {name: {"lora_a": state[name][_QWIX_A], "lora_b": state[name][_QWIX_B]}
          for name in TARGETS if _QWIX_A in state.get(name, {})}


# ----------------------------------------------------------------------------------------------
# Public API: init, forward, merge.
# ----------------------------------------------------------------------------------------------


def init_adapters(config: families.ModelConfig, lora: LoraConfig, rng: jax.Array) -> dict:
  """Fresh adapters {"blocks": {target: {"lora_a", "lora_b"}}}, leaves stacked over layers,
  in `config.param_dtype`, initialised by qwix (A ~ he_uniform, B = 0, so the model starts as the
  base model). Shapes per layer (qwix's, from the einsum): lora_a [*contracted dims of W, rank] and
  lora_b [rank, *output dims of W], e.g. q_proj: [D, r] and [r, H, E]."""
  check_fits(config, lora)

  def one_layer(key):
    layer = _qwix_layer(config, lora, key)
    return _from_qwix(nnx.to_pure_dict(nnx.state(layer, nnx.LoRAParam)))

  keys = jax.random.split(rng, config.n_layers)
  return {"blocks": jax.jit(jax.vmap(one_layer))(keys)}


def abstract_adapters(config: families.ModelConfig, lora: LoraConfig) -> dict:
  """Shapes and dtypes of `init_adapters`' result; allocates nothing."""
  return jax.eval_shape(lambda: init_adapters(config, lora, jax.random.key(0)))


def num_adapter_params(config: families.ModelConfig, lora: LoraConfig) -> int:
  """Trainable parameter count: n_layers · rank · Σ_targets (fan-in + fan-out)."""
  shapes = _layer_shapes(config)
  return config.n_layers * lora.rank * sum(sum(_fans(n, shapes[n])) for n in lora.targets)


def adapter_logical_axes(config: families.ModelConfig, lora: LoraConfig) -> dict:
  """Logical axis names of the adapters (same tree): A keeps the axes of the weight's contracted
  dims, B those of its output dims; the rank axis is never sharded."""
  axes = families.of_config(config).model.param_logical_axes(config)["blocks"]
  out = {}
  for name in lora.targets:
    lhs, rhs = llada.PROJECTIONS[name].split("->")[0].split(",")
    w_axes = axes[name][1:]
    a_axes = tuple(ax for c, ax in zip(rhs, w_axes) if c in lhs)
    b_axes = tuple(ax for c, ax in zip(rhs, w_axes) if c not in lhs)
    out[name] = {"lora_a": ("layers", *a_axes, None), "lora_b": ("layers", None, *b_axes)}
  return {"blocks": out}


def adapter_shardings(config: families.ModelConfig, lora: LoraConfig,
                      mesh: jax.sharding.Mesh,
                      rules: Sequence[tuple[str, Any]] = parallel.DEFAULT_RULES) -> dict:
  """NamedShardings of the adapters on `mesh` (same tree as `init_adapters`' result), from
  `adapter_logical_axes` and the rules table."""
  return parallel.shardings_from_axes(adapter_logical_axes(config, lora),
                                      abstract_adapters(config, lora), mesh, rules)


def projector(config: families.ModelConfig, lora: LoraConfig) -> llada.Projector:
  """The `llada.forward` projector that routes a layer's projections through qwix's LoRA."""
  graphdef, abstract_state = _layer_graph(config, lora)

  def make(w: Mapping[str, Any], layer_adapters: Mapping[str, Any]):
    state = {}
    for name in TARGETS:
      state[name] = {_PARAM: w[name]}
      if name in layer_adapters:
        dt = w[name].dtype   # adapters run in the compute dtype, like the base weights
        state[name][_QWIX_A] = layer_adapters[name]["lora_a"].astype(dt)
        state[name][_QWIX_B] = layer_adapters[name]["lora_b"].astype(dt)
    layer_state = jax.tree.map(lambda x: x, abstract_state)
    nnx.replace_by_pure_dict(layer_state, state)
    layer = nnx.merge(graphdef, layer_state)
    return lambda name, x: layer({name: x})[name]

  return make


def forward(config: families.ModelConfig, lora: LoraConfig, base_params, adapters, tokens_BxL,
            *, attention_mask=None, positions=None, return_head: bool = False, **cache_kwargs):
  """Logits of the base model with adapters: each targeted projection is
  x·W + (alpha/rank)·(x·A)·B (computed by qwix), everything else as in the family's plain
  `forward` (`llada.forward`, `dream.forward`: both take the same projector hook and the same
  cache contract, `cache_kwargs`)."""
  model = families.of_config(config).model
  return model.forward(config, base_params, tokens_BxL, attention_mask=attention_mask,
                       positions=positions, adapters=adapters["blocks"],
                       projector=projector(config, lora), return_head=return_head,
                       **cache_kwargs)


def forward_fn(config: families.ModelConfig, lora: LoraConfig, base_params) -> Any:
  """`fwd(adapters, tokens_BxL, attention_mask=None)`: the form losses take, trainable = adapters.
  Build it inside the jitted step (it closes over `base_params`, which must be a traced argument
  there, not a captured constant)."""
  return functools.partial(_forward_adapters_first, config, lora, base_params)


def _forward_adapters_first(config, lora, base_params, adapters, tokens_BxL, *,
                            return_head: bool = False, **kwargs):
  return forward(config, lora, base_params, adapters, tokens_BxL, return_head=return_head,
                 **kwargs)


def policy_forward_fn(config: families.ModelConfig, lora: LoraConfig) -> Any:
  """`fwd({"base": base_params, "adapters": adapters}, tokens_BxL, attention_mask=None)`: the
  base-plus-adapters model with both pytrees in one params argument, for callers that take a
  single params pytree and no gradient (the sampler, old-policy log-probs). A hashable partial of
  static configs only, so it is a valid static jit argument and never captures weights."""
  return functools.partial(_forward_policy, config, lora)


def _forward_policy(config, lora, params, tokens_BxL, *, return_head: bool = False, **kwargs):
  return forward(config, lora, params["base"], params["adapters"], tokens_BxL,
                 return_head=return_head, **kwargs)


def delta(lora: LoraConfig, adapters) -> dict:
  """Weight updates (alpha/rank)·A·B per target, stacked over layers, shaped like the weights."""
  out = {}
  for name, ab in adapters["blocks"].items():
    lhs, rhs = llada.PROJECTIONS[name].split("->")[0].split(",")
    a_chars = "".join(c for c in rhs if c in lhs)
    b_chars = "".join(c for c in rhs if c not in lhs)
    out[name] = lora.scale * jnp.einsum(f"n{a_chars}r,nr{b_chars}->n{rhs}", ab["lora_a"],
                                        ab["lora_b"], preferred_element_type=jnp.float32)
  return out


def merge(lora: LoraConfig, base_params, adapters) -> dict:
  """Base params with W ← W + (alpha/rank)·A·B for every adapted weight (computed in float32,
  stored in the weight's dtype): run the plain `llada.forward` on the result."""
  deltas = delta(lora, adapters)
  blocks = dict(base_params["blocks"])
  for name, d in deltas.items():
    w = blocks[name]
    blocks[name] = (w.astype(jnp.float32) + d).astype(w.dtype)
  return {**base_params, "blocks": blocks}
