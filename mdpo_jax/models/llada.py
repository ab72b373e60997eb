"""LLaDA: the bidirectional Llama-style transformer behind masked diffusion LMs (SPEC §1).

The parameters live in a Flax NNX module (`LLaDA`) so that every weight carries its logical axis
names; the math lives in pure functions over an ordinary nested-dict pytree, so that `forward`,
losses, samplers and RL steps can all take `params` as a plain argument (policy, reference and old
policy are then just three pytrees).

Layers are stored stacked (leading `layers` axis) and applied with `jax.lax.scan` by default, so
compile time does not grow with depth. Parameter layout (D model width, H heads, K kv heads,
E head dim, F MLP width, N layers, V vocabulary):

  wte      [V, D]          ('vocab', 'embed')
  blocks/  attn_norm [N, D], ff_norm [N, D]                  ('layers', 'norm')
           q_proj [N, D, H, E], k_proj/v_proj [N, D, K, E]    ('layers', 'embed', 'heads'|'kv_heads', 'head_dim')
           attn_out [N, H, E, D]                             ('layers', 'heads', 'head_dim', 'embed')
           ff_proj (gate), up_proj [N, D, F]; ff_out [N, F, D]
  ln_f     [D]
  lm_head  [D, V]          ('embed', 'vocab')   (absent when embeddings are tied)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mdpo_jax import parallel

Params = Mapping[str, Any]

_DTYPES = ("float32", "bfloat16", "float16")
_ATTENTION_IMPLS = ("xla", "dot_product_attention", "cudnn", "splash")
_REMAT = ("none", "full", "save_dots")


@dataclasses.dataclass(frozen=True)
class LLaDAConfig:
  """Shape, numerics and special tokens of a LLaDA-family model.

  Frozen and hashable, so it is a static argument under `jax.jit`. Token ids live here and
  nowhere else: samplers and losses read `mask_token_id`, `eos_token_id`, ... from the config.
  """

  vocab_size: int = 126464
  d_model: int = 4096
  n_layers: int = 32
  n_heads: int = 32
  n_kv_heads: int = 32
  mlp_hidden_size: int = 12288
  rms_norm_eps: float = 1e-5
  rope_theta: float = 500000.0
  max_sequence_length: int = 4096
  tie_embeddings: bool = False
  mask_token_id: int = 126336
  bos_token_id: int = 126080
  eos_token_id: int = 126081
  pad_token_id: int = 126081
  eot_token_id: int = 126348
  # Numerics: parameters are stored in `param_dtype`, matmuls run in `dtype`; RMSNorm, RoPE and
  # the attention softmax always run in float32 (SPEC §1). Logits come out in `logits_dtype`
  # (float32 by default: the sampler's confidences are probabilities of these logits).
  dtype: str = "bfloat16"
  param_dtype: str = "bfloat16"
  logits_dtype: str = "float32"
  # True (ours): attention_mask is honoured and positions restart at each row's first real token.
  # False: reproduce the original checkpoint code exactly (pads attended to, positions 0..L-1).
  honor_padding: bool = True
  scan_layers: bool = True
  remat: str = "none"
  attention_impl: str = "xla"
  init_std: float = 0.02
  # Biases on the q/k/v projections (Qwen2-style families such as Dream; LLaDA has none).
  qkv_bias: bool = False
  # Causal attention (a position sees itself and earlier positions only): the autoregressive
  # baseline family (`models/ar.py`). LLaDA and Dream are bidirectional.
  causal: bool = False

  def __post_init__(self):
    name_ = type(self).__name__   # errors name the family's config class
    positive = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size",
                "max_sequence_length")
    for name in positive:
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name_}.{name}={value!r}: must be a positive integer")
    if self.d_model % self.n_heads:
      raise ValueError(f"{name_}.d_model={self.d_model} must be divisible by "
                       f"n_heads={self.n_heads}")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"{name_}.n_kv_heads={self.n_kv_heads} must divide "
                       f"n_heads={self.n_heads}")
    if self.head_dim % 2:
      raise ValueError(f"{name_}: head_dim={self.head_dim} (d_model/n_heads) must be even "
                       "for rotary embeddings")
    for name in ("dtype", "param_dtype", "logits_dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(f"{name_}.{name}={getattr(self, name)!r}: allowed {_DTYPES}")
    if self.remat not in _REMAT:
      raise ValueError(f"{name_}.remat={self.remat!r}: allowed {_REMAT}")
    if self.attention_impl not in _ATTENTION_IMPLS:
      raise ValueError(f"{name_}.attention_impl={self.attention_impl!r}: "
                       f"allowed {_ATTENTION_IMPLS}")
    if not self.rms_norm_eps > 0:
      raise ValueError(f"{name_}.rms_norm_eps={self.rms_norm_eps!r}: must be > 0")
    if not self.rope_theta > 0:
      raise ValueError(f"{name_}.rope_theta={self.rope_theta!r}: must be > 0")
    for name in ("mask_token_id", "bos_token_id", "eos_token_id", "pad_token_id", "eot_token_id"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < self.vocab_size:
        raise ValueError(f"{name_}.{name}={value!r}: must be an integer in [0, vocab_size="
                         f"{self.vocab_size})")

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)

  def num_params(self) -> int:
    """Parameter count (embedding, head and any q/k/v biases included)."""
    d, f, n, e = self.d_model, self.mlp_hidden_size, self.n_layers, self.head_dim
    q, kv = self.n_heads * e, self.n_kv_heads * e
    bias = q + 2 * kv if self.qkv_bias else 0
    per_layer = 2 * d + d * q + 2 * d * kv + q * d + 3 * d * f + bias
    head = 0 if self.tie_embeddings else self.vocab_size * d
    return self.vocab_size * d + n * per_layer + d + head


def llada_8b(**overrides) -> LLaDAConfig:
  """The published LLaDA-8B (Base and Instruct) shape, bf16."""
  return LLaDAConfig(**overrides)


def tiny(vocab_size: int = 64, **overrides) -> LLaDAConfig:
  """A float32 toy model for tests and CPU demos; special ids sit at the top of the vocabulary."""
  defaults = dict(
      vocab_size=vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden_size=64,
      rope_theta=10000.0, max_sequence_length=512, mask_token_id=vocab_size - 1,
      bos_token_id=vocab_size - 4, eos_token_id=vocab_size - 3, pad_token_id=vocab_size - 3,
      eot_token_id=vocab_size - 2, dtype="float32", param_dtype="float32")
  defaults.update(overrides)
  return LLaDAConfig(**defaults)


PRESETS: dict[str, Callable[..., LLaDAConfig]] = {"llada_8b": llada_8b, "tiny": tiny}


# ----------------------------------------------------------------------------------------------
# Parameters: an NNX module whose variables carry logical axis names.
# ----------------------------------------------------------------------------------------------


def _param(rngs: nnx.Rngs, init, shape, dtype, axes: tuple[str, ...]) -> nnx.Param:
  assert len(axes) == len(shape), (axes, shape)
  return nnx.Param(init(rngs.params(), shape, dtype), logical_axes=axes)


class Blocks(nnx.Module):
  """All transformer blocks, stacked along a leading `layers` axis."""

  def __init__(self, config: LLaDAConfig, *, rngs: nnx.Rngs):
    c, dt = config, jnp.dtype(config.param_dtype)
    n, d, h, k, e, f = (c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim,
                        c.mlp_hidden_size)
    normal = nnx.initializers.normal(c.init_std)
    # Output projections scaled by depth (GPT-2 style) so the residual stream stays O(1).
    out_normal = nnx.initializers.normal(c.init_std / (2 * n) ** 0.5)
    ones = nnx.initializers.ones
    self.attn_norm = _param(rngs, ones, (n, d), dt, ("layers", "norm"))
    self.q_proj = _param(rngs, normal, (n, d, h, e), dt, ("layers", "embed", "heads", "head_dim"))
    self.k_proj = _param(rngs, normal, (n, d, k, e), dt, ("layers", "embed", "kv_heads", "head_dim"))
    self.v_proj = _param(rngs, normal, (n, d, k, e), dt, ("layers", "embed", "kv_heads", "head_dim"))
    if c.qkv_bias:
      zeros = nnx.initializers.zeros
      self.q_bias = _param(rngs, zeros, (n, h, e), dt, ("layers", "heads", "head_dim"))
      self.k_bias = _param(rngs, zeros, (n, k, e), dt, ("layers", "kv_heads", "head_dim"))
      self.v_bias = _param(rngs, zeros, (n, k, e), dt, ("layers", "kv_heads", "head_dim"))
    self.attn_out = _param(rngs, out_normal, (n, h, e, d), dt,
                           ("layers", "heads", "head_dim", "embed"))
    self.ff_norm = _param(rngs, ones, (n, d), dt, ("layers", "norm"))
    self.ff_proj = _param(rngs, normal, (n, d, f), dt, ("layers", "embed", "mlp"))
    self.up_proj = _param(rngs, normal, (n, d, f), dt, ("layers", "embed", "mlp"))
    self.ff_out = _param(rngs, out_normal, (n, f, d), dt, ("layers", "mlp", "embed"))


class LLaDA(nnx.Module):
  """The LLaDA model. `nnx.split` it once; jitted code calls the pure `forward` on `params(model)`."""

  def __init__(self, config: LLaDAConfig, *, rngs: nnx.Rngs):
    self.config = config
    dt = jnp.dtype(config.param_dtype)
    normal = nnx.initializers.normal(config.init_std)
    self.wte = _param(rngs, normal, (config.vocab_size, config.d_model), dt, ("vocab", "embed"))
    self.blocks = Blocks(config, rngs=rngs)
    self.ln_f = _param(rngs, nnx.initializers.ones, (config.d_model,), dt, ("norm",))
    if not config.tie_embeddings:
      self.lm_head = _param(rngs, normal, (config.d_model, config.vocab_size), dt,
                            ("embed", "vocab"))

  def __call__(self, tokens_BxL, *, attention_mask=None, positions=None):
    return forward(self.config, params_of(self), tokens_BxL, attention_mask=attention_mask,
                   positions=positions)


def params_of(model: LLaDA) -> dict:
  """The model's parameters as an ordinary nested dict of arrays."""
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _axes_of(model: LLaDA) -> dict:
  state = nnx.state(model, nnx.Param)
  leaves = jax.tree.map(lambda v: tuple(v.get_metadata("logical_axes")), state,
                        is_leaf=lambda v: isinstance(v, nnx.Variable))
  return nnx.to_pure_dict(leaves)


@functools.lru_cache(maxsize=32)
def param_logical_axes(config: LLaDAConfig) -> dict:
  """Logical axis names of every parameter: a nested dict of tuples, the same tree as params."""
  return _axes_of(nnx.eval_shape(lambda: LLaDA(config, rngs=nnx.Rngs(0))))


def abstract_params(config: LLaDAConfig) -> dict:
  """Shapes and dtypes of the parameters (`jax.ShapeDtypeStruct` leaves); allocates nothing."""
  return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def init_params(config: LLaDAConfig, rng: jax.Array) -> dict:
  """Fresh parameters on the default device. For sharded init use `init_sharded_params`."""
  return params_of(LLaDA(config, rngs=nnx.Rngs(params=rng)))


def param_shardings(config: LLaDAConfig, mesh: jax.sharding.Mesh,
                    rules: Sequence[tuple[str, Any]] = parallel.DEFAULT_RULES) -> dict:
  """NamedSharding of every parameter on `mesh` (same tree as the params), from their logical
  axes and the rules table (`parallel.DEFAULT_RULES`, or a run's `parallel.parse_rules`)."""
  return parallel.shardings_from_axes(param_logical_axes(config), abstract_params(config), mesh,
                                      rules)


def init_sharded_params(config: LLaDAConfig, rng: jax.Array, mesh: jax.sharding.Mesh,
                        rules: Sequence[tuple[str, Any]] = parallel.DEFAULT_RULES) -> dict:
  """Initialise parameters directly into their shards (never materialised whole on one device);
  the values equal `init_params(config, rng)`."""
  shardings = param_shardings(config, mesh, rules)
  return jax.jit(lambda key: init_params(config, key), out_shardings=shardings)(rng)


# ----------------------------------------------------------------------------------------------
# The forward pass: pure functions.
# ----------------------------------------------------------------------------------------------


def rms_norm(x, weight, eps: float):
  """RMSNorm as in the checkpoint code: normalise in float32, cast back, then scale."""
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return normed.astype(x.dtype) * weight.astype(x.dtype)


def rope_tables(positions_BxL, head_dim: int, theta: float):
  """float32 cos/sin tables [B, L, head_dim] for rotate-half (NeoX layout) rotary embeddings."""
  inv_freq = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  angles_BxLxE2 = positions_BxL.astype(jnp.float32)[..., None] * inv_freq
  angles_BxLxE = jnp.concatenate([angles_BxLxE2, angles_BxLxE2], axis=-1)
  return jnp.cos(angles_BxLxE), jnp.sin(angles_BxLxE)


def apply_rope(x_BxLxHxE, cos_BxLxE, sin_BxLxE):
  """rot(x) = x·cos + cat(−x2, x1)·sin, in float32, cast back to the input dtype."""
  x = x_BxLxHxE.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  cos, sin = cos_BxLxE[:, :, None, :], sin_BxLxE[:, :, None, :]
  return (x * cos + rotated * sin).astype(x_BxLxHxE.dtype)


def attention_mask(key_mask_BxL, num_queries: int, num_keys: int, query_start=None):
  """Bool [B or 1, 1, Q, K] of allowed (query, key) pairs, or None when everything is allowed.

  `key_mask_BxL`: real keys (None: all). `query_start` (may be traced): the queries are the
  positions query_start .. query_start + Q − 1 and attend causally (to keys at or before their
  own position); None: bidirectional."""
  mask = None if key_mask_BxL is None else key_mask_BxL[:, None, None, :]
  if query_start is not None:
    query_Q = query_start + jnp.arange(num_queries)
    causal_QxK = jnp.arange(num_keys)[None, :] <= query_Q[:, None]
    mask = causal_QxK[None, None] if mask is None else mask & causal_QxK[None, None]
  return mask


def attention(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, key_mask_BxL, impl: str, query_start=None, *,
              interpret: bool = False):
  """Multi-head attention (GQA when K < H); softmax in float32. Bidirectional, or causal when
  `query_start` (the first query's position among the keys) is given.

  `impl` (`LLaDAConfig.attention_impl`) picks the kernel; all compute the same function on the
  rows that matter (real queries: those whose own key is not masked, or every query of a
  bidirectional call):
  * "xla": einsums and a masked softmax, everywhere.
  * "dot_product_attention": `jax.nn.dot_product_attention`, XLA's own lowering.
  * "cudnn": cuDNN flash attention (`implementation="cudnn"`), GPU only, bfloat16/float16 inputs,
    head_dim a multiple of 8 and ≤ 256. With a mask and an odd length, queries/keys are padded
    by one masked position (cuDNN's masked training kernels need even lengths).
  * "splash": the Pallas TPU Splash attention kernel; TPU only, except with `interpret=True`
    (the Pallas interpreter: tests on CPU); on several devices only under the run's mesh in
    context (`parallel.mesh_context`), where it runs in a shard_map over rows and heads.
    Padding enters as segment ids, lengths are padded to multiples of 128 (the kernel's lane
    width), any head_dim is passed through, and a causal call needs a static (Python int)
    `query_start`: the kernel's causal mask is fixed when it is built, so a traced window start
    (a cached causal window, e.g. AR decoding with a cache) raises. Bidirectional windows of a
    cached sampler work (only the key mask, not the start, reaches the kernel).
  Every unsupported case raises a one-line ValueError naming `attention_impl` (never a silent
  fall-back to another implementation); the checks run when the model is traced.
  """
  if impl == "cudnn":
    _check_cudnn(q_BxLxHxE)
    return _fused_dot_product_attention(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, key_mask_BxL,
                                        query_start, implementation="cudnn")
  if impl == "splash":
    return _splash_attention(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, key_mask_BxL, query_start,
                             interpret=interpret)
  h, k = q_BxLxHxE.shape[2], k_BxLxKxE.shape[2]
  if k != h:
    k_BxLxKxE = jnp.repeat(k_BxLxKxE, h // k, axis=2)
    v_BxLxKxE = jnp.repeat(v_BxLxKxE, h // k, axis=2)
  scale = q_BxLxHxE.shape[-1] ** -0.5
  mask = attention_mask(key_mask_BxL, q_BxLxHxE.shape[1], k_BxLxKxE.shape[1], query_start)
  if impl == "dot_product_attention":
    return jax.nn.dot_product_attention(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, mask=mask, scale=scale)
  scores_BxHxLxL = jnp.einsum("bqhe,bkhe->bhqk", q_BxLxHxE, k_BxLxKxE,
                              preferred_element_type=jnp.float32) * scale
  if mask is not None:
    big_neg = jnp.finfo(jnp.float32).min
    scores_BxHxLxL = jnp.where(mask, scores_BxHxLxL, big_neg)
  probs_BxHxLxL = jax.nn.softmax(scores_BxHxLxL, axis=-1).astype(v_BxLxKxE.dtype)
  return jnp.einsum("bhqk,bkhe->bqhe", probs_BxHxLxL, v_BxLxKxE)


def _pad_rows(x_BxL, length: int, value=0):
  """`x` (any trailing axes after B, L) with L padded at the end to `length` with `value`: for
  kernels that need aligned lengths."""
  extra = length - x_BxL.shape[1]
  if extra == 0:
    return x_BxL
  pad = [(0, 0)] * x_BxL.ndim
  pad[1] = (0, extra)
  return jnp.pad(x_BxL, pad, constant_values=value)


def _check_cudnn(q_BxLxHxE):
  """One-line errors, at trace time, for what cuDNN flash attention cannot take; cuDNN's own
  errors surface deep inside the lowering instead."""
  if q_BxLxHxE.dtype not in (jnp.bfloat16, jnp.float16):
    raise ValueError(f"attention_impl='cudnn' needs bfloat16 or float16 activations (model "
                     f"dtype), got {q_BxLxHxE.dtype}; use attention_impl='xla' for float32")
  backend = jax.default_backend()
  if backend != "gpu":
    raise ValueError(f"attention_impl='cudnn' needs a GPU (cuDNN), but JAX's backend here is "
                     f"{backend!r}; choose attention_impl='xla' or 'dot_product_attention'")
  head_dim = q_BxLxHxE.shape[-1]
  if head_dim % 8 or head_dim > 256:
    raise ValueError(f"attention_impl='cudnn' needs head_dim a multiple of 8 and ≤ 256, got "
                     f"{head_dim}; choose attention_impl='xla'")


def _fused_dot_product_attention(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, key_mask_BxL, query_start,
                                 implementation: str):
  """`jax.nn.dot_product_attention` with `implementation` ("cudnn"; "xla" in the CPU tests of
  this padding): GQA handled by the kernel, and with a mask, odd lengths padded to even ones
  (cuDNN's masked kernels need even lengths when training). The padded key is masked out and
  lies after every real query, so real rows are unchanged; padded query rows are dropped."""
  num_queries, num_keys = q_BxLxHxE.shape[1], k_BxLxKxE.shape[1]
  mask = attention_mask(key_mask_BxL, num_queries, num_keys, query_start)
  if mask is not None and (num_queries % 2 or num_keys % 2):
    if key_mask_BxL is None:
      key_mask_BxL = jnp.ones((1, num_keys), bool)
    q_BxLxHxE = _pad_rows(q_BxLxHxE, num_queries + num_queries % 2)
    k_BxLxKxE = _pad_rows(k_BxLxKxE, num_keys + num_keys % 2)
    v_BxLxKxE = _pad_rows(v_BxLxKxE, num_keys + num_keys % 2)
    key_mask_BxL = _pad_rows(key_mask_BxL, num_keys + num_keys % 2, value=False)
    mask = attention_mask(key_mask_BxL, q_BxLxHxE.shape[1], k_BxLxKxE.shape[1], query_start)
  out_BxLxHxE = jax.nn.dot_product_attention(
      q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, mask=mask, scale=q_BxLxHxE.shape[-1] ** -0.5,
      implementation=implementation)
  return out_BxLxHxE[:, :num_queries]


_SPLASH_LANES = 128   # Splash attention's key blocks (and so our padded lengths) are lane multiples


def _splash_block(length: int) -> int:
  """The largest of 512/256/128 dividing `length` (a multiple of 128): Splash's tile size."""
  return next(b for b in (512, 256, 128) if length % b == 0)


@functools.lru_cache(maxsize=64)
def _splash_kernel(heads: int, num_queries: int, num_keys: int, causal_offset, interpret: bool,
                   mesh_key):
  """A Splash attention kernel (forward and backward tiles) for [heads, Q, K] with lengths
  already multiples of 128: full mask, or causal with query i at key position i + offset.
  Cached (building one processes its mask in NumPy), so its tables must be constants; they
  belong to the mesh in context when built (a shard_map's manual mesh), hence `mesh_key`."""
  del mesh_key
  from jax.experimental.pallas.ops.tpu import splash_attention as splash

  shape = (num_queries, num_keys)
  if causal_offset is None:
    head_mask = splash.FullMask(shape)
  else:
    head_mask = splash.CausalMask(shape, offset=causal_offset)
  bq, bkv = _splash_block(num_queries), _splash_block(num_keys)
  blocks = splash.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                             block_kv_dkv=bkv, block_kv_dkv_compute=bkv, block_q_dq=bq,
                             block_kv_dq=bkv)
  with jax.ensure_compile_time_eval():   # concrete mask tables even when built while tracing
    return splash.make_splash_mha_single_device(
        splash.MultiHeadMask([head_mask] * heads), block_sizes=blocks, interpret=interpret)


def _check_splash(query_start, interpret: bool):
  """`query_start` as a Python int (or None), after one-line errors for what our Splash call
  cannot do: run off a TPU (except interpreted), run with several devices visible but no mesh
  in context (XLA cannot partition a Mosaic kernel, so `_on_mesh` shard_maps it over the mesh
  in context; without one we cannot tell a one-device program from a sharded one), or take a
  causal window whose start is traced (the kernel's causal mask is fixed when it is built)."""
  backend = jax.default_backend()
  if backend != "tpu" and not interpret:
    raise ValueError(f"attention_impl='splash' needs a TPU (a Pallas TPU kernel), but JAX's "
                     f"backend here is {backend!r}; choose attention_impl='xla' or "
                     "'dot_product_attention'")
  mesh = jax.sharding.get_abstract_mesh()
  if not interpret and jax.device_count() > 1 and (mesh is None or mesh.empty):
    raise ValueError(f"attention_impl='splash' on {jax.device_count()} devices needs the run's "
                     "mesh in context (parallel.mesh_context, config mesh.constrain_rows) to "
                     "shard_map the Pallas TPU kernel; one device, or choose "
                     "attention_impl='xla'")
  if query_start is None:
    return None
  try:
    return int(query_start)
  except TypeError:   # a tracer (jax.errors.ConcretizationTypeError is a TypeError)
    raise ValueError("attention_impl='splash' supports causal attention from a static "
                     "query_start only (a cached causal window with a traced start is not); "
                     "choose attention_impl='xla' for cached causal decoding") from None


def _splash_attention(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, key_mask_BxL, query_start, *,
                      interpret: bool):
  """Splash attention over the batch (vmap). Key padding as segment ids: real keys 1, padded
  keys (and the kernel's alignment padding) 0. Queries: bidirectional, all 1, so every query
  sees exactly the real keys, as in "xla"; causal, a query takes its own position's id, so a
  real query sees the real keys at or before it, and a left-pad query the pad keys at or before
  it (itself at least: a softmax row with no allowed key is avoided; its output is unused). The
  alignment rows appended to the queries are dropped (a row with no allowed key gives the mean
  of the values, finite). The kernel does not scale: q is scaled first, in float32, then cast
  back to its dtype (one extra rounding in bfloat16)."""
  query_start = _check_splash(query_start, interpret)
  batch, num_queries, heads, head_dim = q_BxLxHxE.shape
  num_keys = k_BxLxKxE.shape[1]
  lanes = _SPLASH_LANES
  padded_q, padded_k = -(-num_queries // lanes) * lanes, -(-num_keys // lanes) * lanes
  kv_ids_BxL = (jnp.ones((batch, num_keys), jnp.int32) if key_mask_BxL is None
                else jnp.broadcast_to(key_mask_BxL, (batch, num_keys)).astype(jnp.int32))
  if query_start is None:
    q_ids_BxQ = jnp.ones((batch, num_queries), jnp.int32)
  else:
    ids_BxL = _pad_rows(kv_ids_BxL, max(num_keys, query_start + num_queries))
    q_ids_BxQ = ids_BxL[:, query_start:query_start + num_queries]
  scaled_q = (q_BxLxHxE.astype(jnp.float32) * head_dim ** -0.5).astype(q_BxLxHxE.dtype)
  q_BxHxQxE = _pad_rows(scaled_q, padded_q).transpose(0, 2, 1, 3)
  k_BxKxLxE = _pad_rows(k_BxLxKxE, padded_k).transpose(0, 2, 1, 3)
  v_BxKxLxE = _pad_rows(v_BxLxKxE, padded_k).transpose(0, 2, 1, 3)

  def rows(q_BxHxQxE, k_BxKxLxE, v_BxKxLxE, q_ids_BxQ, kv_ids_BxL):   # this device's part
    from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds
    kernel = _splash_kernel(q_BxHxQxE.shape[1], padded_q, padded_k, query_start, interpret,
                            jax.sharding.get_abstract_mesh())
    one_row = lambda q, k, v, q_ids, kv_ids: kernel(q, k, v, SegmentIds(q=q_ids, kv=kv_ids))
    return jax.vmap(one_row)(q_BxHxQxE, k_BxKxLxE, v_BxKxLxE, q_ids_BxQ, kv_ids_BxL)

  out_BxHxQxE = _on_mesh(rows, q_BxHxQxE, k_BxKxLxE, v_BxKxLxE,
                         _pad_rows(q_ids_BxQ, padded_q), _pad_rows(kv_ids_BxL, padded_k))
  return out_BxHxQxE.transpose(0, 2, 1, 3)[:, :num_queries]


def _on_mesh(rows, q_BxHxQxE, k_BxKxLxE, v_BxKxLxE, q_ids_BxQ, kv_ids_BxL):
  """`rows(...)` as is without a mesh in context; with one (`parallel.mesh_context`), inside a
  shard_map (XLA cannot partition a Pallas TPU kernel itself): rows split over the data axes
  when they divide the batch (as `parallel.constrain_rows`), heads over `tensor` when it
  divides both head counts, replicated otherwise. Attention is independent per row and head,
  so each device runs the kernel on its own rows and heads."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    return rows(q_BxHxQxE, k_BxKxLxE, v_BxKxLxE, q_ids_BxQ, kv_ids_BxL)
  size = lambda a: mesh.shape[a] if a in mesh.axis_names else 1
  data = tuple(a for a in ("data", "fsdp") if size(a) > 1)
  if not data or q_BxHxQxE.shape[0] % functools.reduce(lambda n, a: n * size(a), data, 1):
    data = None
  heads = "tensor" if size("tensor") > 1 else None
  if heads and (q_BxHxQxE.shape[1] % size(heads) or k_BxKxLxE.shape[1] % size(heads)):
    heads = None
  if not hasattr(jax, "shard_map"):
    raise ValueError(f"attention_impl='splash' on a mesh needs jax.shard_map (jax >= 0.7), "
                     f"this is jax {jax.__version__}; choose attention_impl='xla'")
  spec, ids_spec = jax.sharding.PartitionSpec(data, heads), jax.sharding.PartitionSpec(data)
  return jax.shard_map(rows, in_specs=(spec, spec, spec, ids_spec, ids_spec), out_specs=spec,
                       check_vma=False)(q_BxHxQxE, k_BxKxLxE, v_BxKxLxE, q_ids_BxQ, kv_ids_BxL)


# The seven weight projections of a block: einsum equation (input, weight -> output) per weight.
# LoRA (`mdpo_jax.models.lora`) adapts any subset of them through the `projector` hook below.
PROJECTIONS: dict[str, str] = {
    "q_proj": "bld,dhe->blhe",
    "k_proj": "bld,dke->blke",
    "v_proj": "bld,dke->blke",
    "attn_out": "blhe,hed->bld",
    "ff_proj": "bld,df->blf",
    "up_proj": "bld,df->blf",
    "ff_out": "blf,fd->bld",
}

# projector(weights, layer_adapters) -> project(name, x): how a block applies its projections.
Projector = Callable[[Mapping[str, Any], Any], Callable[[str, Any], Any]]


def plain_projector(w: Mapping[str, Any], adapters=None) -> Callable[[str, Any], Any]:
  """project(name, x) = einsum(PROJECTIONS[name], x, w[name]): the model without adapters."""
  del adapters
  return lambda name, x: jnp.einsum(PROJECTIONS[name], x, w[name])


def block(config: LLaDAConfig, layer: Params, x_BxWxD, cos_BxWxE, sin_BxWxE, key_mask_BxL,
          adapters=None, projector: Projector | None = None, past_kv=None, window_start=None):
  """One pre-norm residual block: x += Attn(attn_norm(x)); x += MLP(ff_norm(x)).

  Returns (new x, (k, v)): this block's keys (after RoPE) and values of the positions in x
  (with `past_kv`: of the whole sequence, the window's written over the cached ones).
  `projector` (default `plain_projector`) builds the function that applies the seven weight
  projections from this layer's (compute-dtype) weights and its slice of `adapters`.
  `past_kv` = (k_BxLxKxE, v_BxLxKxE) of the whole sequence (a KV cache): x then holds only the
  window of positions [window_start, window_start + W), whose fresh keys/values replace the
  cached ones there, and its queries attend over all L positions.
  """
  dt = x_BxWxD.dtype
  w = {name: value.astype(dt) for name, value in layer.items()}
  project = (projector or plain_projector)(w, adapters)
  h = rms_norm(x_BxWxD, w["attn_norm"], config.rms_norm_eps)
  q = project("q_proj", h)
  k = project("k_proj", h)
  v = project("v_proj", h)
  if config.qkv_bias:   # added after the projection (and after any LoRA delta), before RoPE
    q, k, v = q + w["q_bias"], k + w["k_bias"], v + w["v_bias"]
  q, k = apply_rope(q, cos_BxWxE, sin_BxWxE), apply_rope(k, cos_BxWxE, sin_BxWxE)
  keys, values = k, v
  if past_kv is not None:   # the window's fresh K/V over the cached ones of the whole sequence
    at = (0, window_start, 0, 0)
    keys = jax.lax.dynamic_update_slice(past_kv[0], k.astype(past_kv[0].dtype), at)
    values = jax.lax.dynamic_update_slice(past_kv[1], v.astype(past_kv[1].dtype), at)
  query_start = None
  if config.causal:
    query_start = 0 if window_start is None else window_start
  o_BxWxHxE = attention(q, keys, values, key_mask_BxL, config.attention_impl, query_start)
  x_BxWxD = x_BxWxD + project("attn_out", o_BxWxHxE)
  h = rms_norm(x_BxWxD, w["ff_norm"], config.rms_norm_eps)
  gate_BxWxF = project("ff_proj", h)
  up_BxWxF = project("up_proj", h)
  return x_BxWxD + project("ff_out", jax.nn.silu(gate_BxWxF) * up_BxWxF), (keys, values)


def positions_from_mask(attention_mask_BxL):
  """Each row's first real token gets position 0: clip(cumsum(mask) − 1, 0)."""
  return jnp.maximum(jnp.cumsum(attention_mask_BxL.astype(jnp.int32), axis=-1) - 1, 0)


class KVCache(NamedTuple):
  """Keys (after RoPE) and values of every layer and position: what a caching sampler reuses
  across denoising steps (Fast-dLLM's approximate cache). Positions and the key mask of the
  whole sequence come with it, so a window forward places its queries consistently with left
  padding. k, v: [N, B, L, K, E] in the compute dtype; key_mask_BxL: bool or None (no padding)."""

  k: jax.Array
  v: jax.Array
  key_mask_BxL: jax.Array | None
  positions_BxL: jax.Array


def hidden_states(config: LLaDAConfig, params: Params, tokens_BxL, *, attention_mask=None,
                  positions=None, adapters=None, projector: Projector | None = None,
                  return_cache: bool = False, cache: KVCache | None = None,
                  window_start=None, window_width: int | None = None):
  """(final-norm hidden states, key mask [B, L] or None[, KVCache]): the network up to the LM
  head. Padding, `positions`, `adapters` and `projector` as in `forward`.

  The cache contract (what caching samplers use; `forward` passes it through):
  * `return_cache=True`: also return the `KVCache` of this full forward.
  * `cache=...`, `window_start=s` (may be traced), `window_width=W` (static): hidden states of
    positions [s, s + W) only, shape [B, W, D]. Their queries attend to every position: the
    window's keys/values are computed afresh from `tokens_BxL` (the whole current sequence),
    all others come from the cache. With a cache made from the same tokens the result equals
    the full forward's rows s..s+W−1 (up to float rounding). With `return_cache=True` too,
    also the cache with the window's fresh keys/values written in (incremental decoding).
  """
  if cache is not None:
    if window_start is None or window_width is None:
      raise ValueError("a cached forward needs window_start and window_width")
    key_mask_BxL, positions = cache.key_mask_BxL, cache.positions_BxL
  else:
    key_mask_BxL = None
    if config.honor_padding and attention_mask is not None:
      key_mask_BxL = attention_mask.astype(bool)
    if positions is None:
      if key_mask_BxL is not None:
        positions = positions_from_mask(key_mask_BxL)
      else:
        positions = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1], dtype=jnp.int32),
                                     tokens_BxL.shape)
  full_positions_BxL = positions
  if cache is not None:
    batch = tokens_BxL.shape[0]
    tokens_BxL = jax.lax.dynamic_slice(tokens_BxL, (0, window_start), (batch, window_width))
    positions = jax.lax.dynamic_slice(positions, (0, window_start), (batch, window_width))
  cos_BxWxE, sin_BxWxE = rope_tables(positions, config.head_dim, config.rope_theta)
  x_BxWxD = jnp.take(params["wte"], tokens_BxL, axis=0).astype(jnp.dtype(config.dtype))

  def apply_block(x, per_layer):   # rows split over the data axes at block boundaries
    layer, layer_adapters, past_kv = per_layer
    x, kv = block(config, layer, parallel.constrain_rows(x), cos_BxWxE, sin_BxWxE, key_mask_BxL,
                  layer_adapters, projector, past_kv, window_start)
    return x, kv

  if config.remat == "full":
    apply_block = jax.checkpoint(apply_block)
  elif config.remat == "save_dots":
    apply_block = jax.checkpoint(
        apply_block, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)

  past = None if cache is None else (cache.k, cache.v)
  per_layer = (params["blocks"], adapters, past)

  def scan_body(x, layer):
    x, kv = apply_block(x, layer)
    return x, (kv if return_cache else None)

  if config.scan_layers:
    x_BxWxD, kv = jax.lax.scan(scan_body, x_BxWxD, per_layer)
  else:
    kvs = []
    for i in range(config.n_layers):
      x_BxWxD, kv_i = scan_body(x_BxWxD, jax.tree.map(lambda a, i=i: a[i], per_layer))
      kvs.append(kv_i)
    kv = jax.tree.map(lambda *a: jnp.stack(a), *kvs) if return_cache else None
  x_BxWxD = rms_norm(x_BxWxD, params["ln_f"], config.rms_norm_eps)
  if return_cache:
    return x_BxWxD, key_mask_BxL, KVCache(kv[0], kv[1], key_mask_BxL, full_positions_BxL)
  return x_BxWxD, key_mask_BxL


def lm_head(config: LLaDAConfig, params: Params, x_BxLxD):
  """Logits [B, L, V] (in `config.logits_dtype`) of hidden states, position by position."""
  head_DxV = params["wte"].T if config.tie_embeddings else params["lm_head"]
  logits_BxLxV = jnp.einsum("bld,dv->blv", x_BxLxD, head_DxV.astype(jnp.dtype(config.dtype)),
                            preferred_element_type=jnp.float32)
  return logits_BxLxV.astype(config.logits_dtype)


def forward(config: LLaDAConfig, params: Params, tokens_BxL, *, attention_mask=None,
            positions=None, adapters=None, projector: Projector | None = None,
            return_head: bool = False, **cache_kwargs):
  """Logits [B, L, V] for every position (bidirectional; causal with `config.causal`, whose
  row i then predicts token i + 1 — `models/ar.py` shifts it).

  With `config.honor_padding` (default) keys where `attention_mask == 0` are never attended to and
  positions restart at each row's first real token, so a left-padded row gives the logits of the
  unpadded row. With `honor_padding=False` the mask is ignored and positions are 0..L−1, as in the
  original checkpoint code. Explicit `positions` override both.

  `adapters` (a pytree whose leaves are stacked along the `layers` axis like `params["blocks"]`)
  and `projector` are the LoRA hook (`mdpo_jax.models.lora.forward`); both None: the plain model.

  `cache_kwargs` is the cache contract of `hidden_states` (`return_cache=True` → (logits,
  KVCache); `cache=, window_start=s, window_width=W` → logits [B, W, V] of positions s..s+W−1).

  `return_head=True` (full forward only) returns (hidden_BxLxD, head) instead of the logits:
  `head(x_BxCxD)` gives the logits of any rows of the hidden states, so a loss can apply the LM
  head a few positions at a time and never hold [B, L, V] logits (`diffusion/chunked.py`).
  """
  if return_head and any(v is not None and v is not False for v in cache_kwargs.values()):
    raise ValueError("return_head=True needs a full forward (no cache keywords)")
  out = hidden_states(config, params, tokens_BxL, attention_mask=attention_mask,
                      positions=positions, adapters=adapters, projector=projector, **cache_kwargs)
  if return_head:
    return out[0], functools.partial(lm_head, config, params)
  logits = lm_head(config, params, out[0])
  return (logits, out[2]) if cache_kwargs.get("return_cache") else logits


def forward_fn(config: LLaDAConfig) -> Callable:
  """`forward_fn(params, tokens_BxL, attention_mask=None)`: the model-agnostic form samplers and
  losses take (a `functools.partial`, hashable and stable, so it is a valid static argument)."""
  return functools.partial(forward, config)
