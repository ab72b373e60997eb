"""Dream: the Qwen2.5-initialised masked diffusion LM (Dream-v0-{Base,Instruct}-7B), SPEC §1.

Same conventions as `llada` (NNX module whose weights carry logical axis names, pure `forward`
over a nested-dict pytree, layers stacked and scanned, attention mask and left padding
honoured), and the same parameter names wherever the math is the same, so the logical-axis rules
(`parallel.DEFAULT_RULES`, a run's `mesh.rules`) and LoRA targets apply unchanged. What differs
from LLaDA:

  * grouped-query attention (28 query heads, 4 kv heads in the 7B model);
  * biases on the q/k/v projections (none on the output projection or the MLP);
  * RMSNorm eps 1e-6, RoPE θ 1e6, a Qwen2.5 vocabulary (152064 rows) and its own special ids;
  * **shifted logits.** Dream was initialised from an autoregressive model, so the network's
    output row i−1 holds the prediction for token i (the reference generation code does
    `logits = cat(logits[:, :1], logits[:, :-1])`). `forward` applies that shift — in this
    file's `shift_to_targets` and nowhere else — so that, as for LLaDA, `forward(...)[:, i]`
    is the prediction for position i. Samplers, losses and RL code therefore treat both families
    alike. `unshifted_logits` gives the network's raw rows (the Hugging Face model's output).

Parameter layout (D model width, H heads, K kv heads, E head dim, F MLP width, N layers,
V vocabulary); the Hugging Face names are in `mdpo_jax.models.hf_dream`:

  wte      [V, D]          ('vocab', 'embed')
  blocks/  attn_norm [N, D], ff_norm [N, D]                  ('layers', 'norm')
           q_proj [N, D, H, E], k_proj/v_proj [N, D, K, E]    ('layers', 'embed', 'heads'|'kv_heads', 'head_dim')
           q_bias [N, H, E], k_bias/v_bias [N, K, E]          ('layers', 'heads'|'kv_heads', 'head_dim')
           attn_out [N, H, E, D]                             ('layers', 'heads', 'head_dim', 'embed')
           ff_proj (gate), up_proj [N, D, F]; ff_out [N, F, D]
  ln_f     [D]
  lm_head  [D, V]          ('embed', 'vocab')   (absent when embeddings are tied)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mdpo_jax import parallel
from mdpo_jax.models import llada

Params = Mapping[str, Any]

_DTYPES = ("float32", "bfloat16", "float16")
_ATTENTION_IMPLS = ("xla", "dot_product_attention")
_REMAT = ("none", "full", "save_dots")
_BIASES = {"q_proj": "q_bias", "k_proj": "k_bias", "v_proj": "v_bias"}


@dataclasses.dataclass(frozen=True)
class DreamConfig:
  """Shape, numerics and special tokens of a Dream-family model (defaults: Dream-v0-7B).

  Frozen and hashable (a static argument under `jax.jit`). Field names match `LLaDAConfig`
  wherever the meaning is the same, so code that reads `mask_token_id`, `eos_token_id`,
  `eot_token_id`, `vocab_size`, `honor_padding`, ... works with either family.
  """

  vocab_size: int = 152064
  d_model: int = 3584
  n_layers: int = 28
  n_heads: int = 28
  n_kv_heads: int = 4
  mlp_hidden_size: int = 18944
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1000000.0
  max_sequence_length: int = 131072
  tie_embeddings: bool = False
  # Published config.json / tokenizer: <|mask|> 151666, <|endoftext|> 151643 (bos, eos and pad
  # in config.json), <|im_end|> 151645 (end of an Instruct turn).
  mask_token_id: int = 151666
  bos_token_id: int = 151643
  eos_token_id: int = 151643
  pad_token_id: int = 151643
  eot_token_id: int = 151645
  # Numerics as in LLaDAConfig: params in `param_dtype`, matmuls in `dtype`, RMSNorm/RoPE/softmax
  # in float32, logits in `logits_dtype`.
  dtype: str = "bfloat16"
  param_dtype: str = "bfloat16"
  logits_dtype: str = "float32"
  # True (ours, and what Dream's own generation code does): keys where attention_mask == 0 are
  # never attended to and positions restart at each row's first real token. False: the mask
  # is ignored and positions are 0..L−1 (the HF model called without a mask).
  honor_padding: bool = True
  scan_layers: bool = True
  remat: str = "none"
  attention_impl: str = "xla"
  init_std: float = 0.02

  def __post_init__(self):
    positive = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size",
                "max_sequence_length")
    for name in positive:
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"DreamConfig.{name}={value!r}: must be a positive integer")
    if self.d_model % self.n_heads:
      raise ValueError(f"DreamConfig.d_model={self.d_model} must be divisible by "
                       f"n_heads={self.n_heads}")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"DreamConfig.n_kv_heads={self.n_kv_heads} must divide "
                       f"n_heads={self.n_heads}")
    if self.head_dim % 2:
      raise ValueError(f"DreamConfig: head_dim={self.head_dim} (d_model/n_heads) must be even "
                       "for rotary embeddings")
    for name in ("dtype", "param_dtype", "logits_dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(f"DreamConfig.{name}={getattr(self, name)!r}: allowed {_DTYPES}")
    if self.remat not in _REMAT:
      raise ValueError(f"DreamConfig.remat={self.remat!r}: allowed {_REMAT}")
    if self.attention_impl not in _ATTENTION_IMPLS:
      raise ValueError(f"DreamConfig.attention_impl={self.attention_impl!r}: "
                       f"allowed {_ATTENTION_IMPLS}")
    if not self.rms_norm_eps > 0:
      raise ValueError(f"DreamConfig.rms_norm_eps={self.rms_norm_eps!r}: must be > 0")
    if not self.rope_theta > 0:
      raise ValueError(f"DreamConfig.rope_theta={self.rope_theta!r}: must be > 0")
    for name in ("mask_token_id", "bos_token_id", "eos_token_id", "pad_token_id", "eot_token_id"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < self.vocab_size:
        raise ValueError(f"DreamConfig.{name}={value!r}: must be an integer in [0, vocab_size="
                         f"{self.vocab_size})")

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  def replace(self, **changes) -> "DreamConfig":
    return dataclasses.replace(self, **changes)

  def num_params(self) -> int:
    """Parameter count (embedding, head and q/k/v biases included); 7,615,616,512 for 7B."""
    d, f, n, e = self.d_model, self.mlp_hidden_size, self.n_layers, self.head_dim
    q, kv = self.n_heads * e, self.n_kv_heads * e
    per_layer = 2 * d + (d * q + q) + 2 * (d * kv + kv) + q * d + 3 * d * f
    head = 0 if self.tie_embeddings else self.vocab_size * d
    return self.vocab_size * d + n * per_layer + d + head


def dream_7b(**overrides) -> DreamConfig:
  """The published Dream-v0-7B shape (Base and Instruct), bf16."""
  return DreamConfig(**overrides)


def tiny(vocab_size: int = 64, **overrides) -> DreamConfig:
  """A float32 toy Dream (GQA: 4 heads, 2 kv heads) for tests and CPU demos; special ids at the
  top of the vocabulary as in `llada.tiny`."""
  defaults = dict(
      vocab_size=vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden_size=64,
      rope_theta=10000.0, max_sequence_length=512, mask_token_id=vocab_size - 1,
      bos_token_id=vocab_size - 4, eos_token_id=vocab_size - 3, pad_token_id=vocab_size - 3,
      eot_token_id=vocab_size - 2, dtype="float32", param_dtype="float32")
  defaults.update(overrides)
  return DreamConfig(**defaults)


PRESETS: dict[str, Callable[..., DreamConfig]] = {"dream_7b": dream_7b, "tiny": tiny}


# ----------------------------------------------------------------------------------------------
# Parameters: an NNX module whose variables carry logical axis names.
# ----------------------------------------------------------------------------------------------


def _param(rngs: nnx.Rngs, init, shape, dtype, axes: tuple[str, ...]) -> nnx.Param:
  assert len(axes) == len(shape), (axes, shape)
  return nnx.Param(init(rngs.params(), shape, dtype), logical_axes=axes)


class Blocks(nnx.Module):
  """All transformer blocks, stacked along a leading `layers` axis."""

  def __init__(self, config: DreamConfig, *, rngs: nnx.Rngs):
    c, dt = config, jnp.dtype(config.param_dtype)
    n, d, h, k, e, f = (c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim,
                        c.mlp_hidden_size)
    normal = nnx.initializers.normal(c.init_std)
    out_normal = nnx.initializers.normal(c.init_std / (2 * n) ** 0.5)
    ones, zeros = nnx.initializers.ones, nnx.initializers.zeros
    self.attn_norm = _param(rngs, ones, (n, d), dt, ("layers", "norm"))
    self.q_proj = _param(rngs, normal, (n, d, h, e), dt, ("layers", "embed", "heads", "head_dim"))
    self.k_proj = _param(rngs, normal, (n, d, k, e), dt, ("layers", "embed", "kv_heads", "head_dim"))
    self.v_proj = _param(rngs, normal, (n, d, k, e), dt, ("layers", "embed", "kv_heads", "head_dim"))
    self.q_bias = _param(rngs, zeros, (n, h, e), dt, ("layers", "heads", "head_dim"))
    self.k_bias = _param(rngs, zeros, (n, k, e), dt, ("layers", "kv_heads", "head_dim"))
    self.v_bias = _param(rngs, zeros, (n, k, e), dt, ("layers", "kv_heads", "head_dim"))
    self.attn_out = _param(rngs, out_normal, (n, h, e, d), dt,
                           ("layers", "heads", "head_dim", "embed"))
    self.ff_norm = _param(rngs, ones, (n, d), dt, ("layers", "norm"))
    self.ff_proj = _param(rngs, normal, (n, d, f), dt, ("layers", "embed", "mlp"))
    self.up_proj = _param(rngs, normal, (n, d, f), dt, ("layers", "embed", "mlp"))
    self.ff_out = _param(rngs, out_normal, (n, f, d), dt, ("layers", "mlp", "embed"))


class Dream(nnx.Module):
  """The Dream model. `nnx.split` it once; jitted code calls the pure `forward` on `params_of`."""

  def __init__(self, config: DreamConfig, *, rngs: nnx.Rngs):
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


def params_of(model: Dream) -> dict:
  """The model's parameters as an ordinary nested dict of arrays."""
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@functools.lru_cache(maxsize=32)
def param_logical_axes(config: DreamConfig) -> dict:
  """Logical axis names of every parameter: a nested dict of tuples, the same tree as params."""
  state = nnx.state(nnx.eval_shape(lambda: Dream(config, rngs=nnx.Rngs(0))), nnx.Param)
  leaves = jax.tree.map(lambda v: tuple(v.get_metadata("logical_axes")), state,
                        is_leaf=lambda v: isinstance(v, nnx.Variable))
  return nnx.to_pure_dict(leaves)


def abstract_params(config: DreamConfig) -> dict:
  """Shapes and dtypes of the parameters (`jax.ShapeDtypeStruct` leaves); allocates nothing."""
  return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def init_params(config: DreamConfig, rng: jax.Array) -> dict:
  """Fresh parameters on the default device. For sharded init use `init_sharded_params`."""
  return params_of(Dream(config, rngs=nnx.Rngs(params=rng)))


def param_shardings(config: DreamConfig, mesh: jax.sharding.Mesh,
                    rules: Sequence[tuple[str, Any]] = parallel.DEFAULT_RULES) -> dict:
  """NamedSharding of every parameter on `mesh` (same tree as the params), from their logical
  axes and the rules table (`parallel.DEFAULT_RULES`, or a run's `parallel.parse_rules`)."""
  return parallel.shardings_from_axes(param_logical_axes(config), abstract_params(config), mesh,
                                      rules)


def init_sharded_params(config: DreamConfig, rng: jax.Array, mesh: jax.sharding.Mesh,
                        rules: Sequence[tuple[str, Any]] = parallel.DEFAULT_RULES) -> dict:
  """Initialise parameters directly into their shards; the values equal `init_params`."""
  shardings = param_shardings(config, mesh, rules)
  return jax.jit(lambda key: init_params(config, key), out_shardings=shardings)(rng)


# ----------------------------------------------------------------------------------------------
# The forward pass: pure functions (RMSNorm, RoPE and attention are LLaDA's: the same math).
# ----------------------------------------------------------------------------------------------


def block(config: DreamConfig, layer: Params, x_BxLxD, cos_BxLxE, sin_BxLxE, key_mask_BxL,
          adapters=None, projector: llada.Projector | None = None):
  """One Qwen2-style pre-norm block: x += o_proj(Attn(q+bq, k+bk, v+bv)); x += SwiGLU MLP.

  `projector` (default `llada.plain_projector`) applies the seven weight projections (LoRA's
  hook, see `llada.block`); the q/k/v biases are added to its output.
  """
  dt = x_BxLxD.dtype
  w = {name: value.astype(dt) for name, value in layer.items()}
  project = (projector or llada.plain_projector)(w, adapters)
  h = llada.rms_norm(x_BxLxD, w["attn_norm"], config.rms_norm_eps)
  q, k, v = (project(name, h) + w[bias] for name, bias in _BIASES.items())
  q, k = llada.apply_rope(q, cos_BxLxE, sin_BxLxE), llada.apply_rope(k, cos_BxLxE, sin_BxLxE)
  o_BxLxHxE = llada.attention(q, k, v, key_mask_BxL, config.attention_impl)
  x_BxLxD = x_BxLxD + project("attn_out", o_BxLxHxE)
  h = llada.rms_norm(x_BxLxD, w["ff_norm"], config.rms_norm_eps)
  gate_BxLxF = project("ff_proj", h)
  up_BxLxF = project("up_proj", h)
  return x_BxLxD + project("ff_out", jax.nn.silu(gate_BxLxF) * up_BxLxF)


def shift_to_targets(rows_BxLxX, key_mask_BxL=None):
  """Dream's logit shift, the only place it is applied: out[:, i] = rows[:, i−1].

  Row 0 keeps its own row (as the reference's `cat(logits[:, :1], logits[:, :-1])` does). With
  a key mask (padding honoured), a row whose predecessor is padding also keeps its own row, so
  a left-padded sequence gets exactly the unpadded sequence's outputs on its real positions (the
  reference takes a pad's row there; that position is a row's first prompt token, which no
  sampler or loss ever predicts). Works on logits or, cheaper, on the hidden states before the
  position-wise LM head.
  """
  prev_BxLxX = jnp.concatenate([rows_BxLxX[:, :1], rows_BxLxX[:, :-1]], axis=1)
  if key_mask_BxL is None:
    return prev_BxLxX
  prev_real_BxL = jnp.concatenate(
      [jnp.zeros_like(key_mask_BxL[:, :1]), key_mask_BxL[:, :-1]], axis=1).astype(bool)
  return jnp.where(prev_real_BxL[..., None], prev_BxLxX, rows_BxLxX)


def _key_mask_and_positions(config: DreamConfig, tokens_BxL, attention_mask, positions):
  key_mask_BxL = None
  if config.honor_padding and attention_mask is not None:
    key_mask_BxL = attention_mask.astype(bool)
  if positions is None:
    if key_mask_BxL is not None:
      positions = llada.positions_from_mask(key_mask_BxL)
    else:
      positions = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1], dtype=jnp.int32),
                                   tokens_BxL.shape)
  return key_mask_BxL, positions


def _trunk(config: DreamConfig, params: Params, tokens_BxL, key_mask_BxL, positions_BxL,
           adapters, projector):
  """Embedding, the blocks (scanned or unrolled, optionally rematerialised) and the final norm."""
  cos_BxLxE, sin_BxLxE = llada.rope_tables(positions_BxL, config.head_dim, config.rope_theta)
  x_BxLxD = jnp.take(params["wte"], tokens_BxL, axis=0).astype(jnp.dtype(config.dtype))

  def apply_block(x, layer_and_adapters):
    layer, layer_adapters = layer_and_adapters
    return block(config, layer, x, cos_BxLxE, sin_BxLxE, key_mask_BxL, layer_adapters, projector)

  if config.remat == "full":
    apply_block = jax.checkpoint(apply_block)
  elif config.remat == "save_dots":
    apply_block = jax.checkpoint(
        apply_block, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)

  per_layer = (params["blocks"], adapters)
  if config.scan_layers:
    x_BxLxD, _ = jax.lax.scan(lambda x, layer: (apply_block(x, layer), None), x_BxLxD, per_layer)
  else:
    for i in range(config.n_layers):
      x_BxLxD = apply_block(x_BxLxD, jax.tree.map(lambda a, i=i: a[i], per_layer))
  return llada.rms_norm(x_BxLxD, params["ln_f"], config.rms_norm_eps)


def _head(config: DreamConfig, params: Params, x_BxLxD):
  head_DxV = params["wte"].T if config.tie_embeddings else params["lm_head"]
  logits_BxLxV = jnp.einsum("bld,dv->blv", x_BxLxD, head_DxV.astype(x_BxLxD.dtype),
                            preferred_element_type=jnp.float32)
  return logits_BxLxV.astype(config.logits_dtype)


def forward(config: DreamConfig, params: Params, tokens_BxL, *, attention_mask=None,
            positions=None, adapters=None, projector: llada.Projector | None = None):
  """Logits [B, L, V] where row i is the prediction for token i (already shifted).

  The network is bidirectional (no causal mask). Its raw output row i−1 predicts token i
  (`unshifted_logits`); this function applies `shift_to_targets`, so callers — samplers, losses,
  RL — read "prediction for position i at i" exactly as for LLaDA. Padding: with
  `config.honor_padding` (default) keys where `attention_mask == 0` are never attended to and
  positions restart at each row's first real token (a left-padded row gives the unpadded row's
  logits on its real positions); with `honor_padding=False` the mask is ignored and positions
  are 0..L−1. Explicit `positions` override both. `adapters`/`projector`: LoRA's hook, as in
  `llada.forward`.
  """
  key_mask_BxL, positions = _key_mask_and_positions(config, tokens_BxL, attention_mask,
                                                    positions)
  x_BxLxD = _trunk(config, params, tokens_BxL, key_mask_BxL, positions, adapters, projector)
  return _head(config, params, shift_to_targets(x_BxLxD, key_mask_BxL))


def unshifted_logits(config: DreamConfig, params: Params, tokens_BxL, *, attention_mask=None,
                     positions=None, adapters=None, projector: llada.Projector | None = None):
  """The network's own rows (what the Hugging Face `DreamModel` returns): row i predicts token
  i+1. For parity checks and AR-style use; masked-diffusion code wants `forward`."""
  key_mask_BxL, positions = _key_mask_and_positions(config, tokens_BxL, attention_mask,
                                                    positions)
  x_BxLxD = _trunk(config, params, tokens_BxL, key_mask_BxL, positions, adapters, projector)
  return _head(config, params, x_BxLxD)


def forward_fn(config: DreamConfig) -> Callable:
  """`forward_fn(params, tokens_BxL, attention_mask=None)` (shifted logits): the model-agnostic
  form samplers and losses take, exactly like `llada.forward_fn` (a hashable partial)."""
  return functools.partial(forward, config)
