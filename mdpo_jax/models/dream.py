"""Dream: the Qwen2.5-initialised masked diffusion LM (Dream-v0-{Base,Instruct}-7B), SPEC §1.

The network is LLaDA's with q/k/v biases (`LLaDAConfig.qkv_bias`): the same NNX module,
parameter names, logical axes, pure forward, scan over layers, attention mask and left padding,
so the logical-axis rules (`parallel.DEFAULT_RULES`, a run's `mesh.rules`) and LoRA targets
apply unchanged; this module holds only what is Dream's own — the config's defaults and presets
and the logit shift. What differs from LLaDA:

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
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from mdpo_jax.models import llada
# The parameters are LLaDA's module built from a DreamConfig (q/k/v biases included).
from mdpo_jax.models.llada import (  # noqa: F401  (this family's parameter API)
    abstract_params, init_params, init_sharded_params, param_logical_axes, param_shardings)

Params = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class DreamConfig(llada.LLaDAConfig):
  """Shape, numerics and special tokens of a Dream-family model (defaults: Dream-v0-7B).

  `LLaDAConfig`'s fields and checks with Dream's defaults and q/k/v biases; a distinct type, so
  `models.families` tells the families apart by it (and by nothing else).
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
  # Published config.json / tokenizer: <|mask|> 151666, <|endoftext|> 151643 (bos, eos and pad
  # in config.json), <|im_end|> 151645 (end of an Instruct turn).
  mask_token_id: int = 151666
  bos_token_id: int = 151643
  eos_token_id: int = 151643
  pad_token_id: int = 151643
  eot_token_id: int = 151645
  qkv_bias: bool = True

  def __post_init__(self):
    super().__post_init__()
    if self.qkv_bias is not True:
      raise ValueError(f"DreamConfig.qkv_bias={self.qkv_bias!r}: Dream has q/k/v biases "
                       "(allowed: True)")


def dream_7b(**overrides) -> DreamConfig:
  """The published Dream-v0-7B shape (Base and Instruct), bf16: 7,615,616,512 parameters."""
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


def forward(config: DreamConfig, params: Params, tokens_BxL, *, attention_mask=None,
            positions=None, adapters=None, projector: llada.Projector | None = None,
            return_head: bool = False, **cache_kwargs):
  """Logits [B, L, V] where row i is the prediction for token i (already shifted).

  The network (`llada.hidden_states` with q/k/v biases) is bidirectional; its raw output row
  i−1 predicts token i (`unshifted_logits`). This function applies `shift_to_targets` to the
  hidden states before the LM head, so callers — samplers, losses, RL — read "prediction for
  position i at i" exactly as for LLaDA. Padding, `positions`, `adapters`/`projector` (LoRA's
  hook): as in `llada.forward`.

  The cache contract of `llada.forward` holds with the shift: a window forward over positions
  [s, s + W) runs the network on [s − 1, s + W) (so s ≥ 1) and keeps the shifted rows s..s+W−1.
  """
  kw = dict(attention_mask=attention_mask, positions=positions, adapters=adapters,
            projector=projector)
  if cache_kwargs.get("cache") is not None:
    start, width = cache_kwargs["window_start"], cache_kwargs["window_width"]
    cache, return_cache = cache_kwargs["cache"], cache_kwargs.get("return_cache", False)
    out = llada.hidden_states(config, params, tokens_BxL, **kw, cache=cache,
                              window_start=start - 1, window_width=width + 1,
                              return_cache=return_cache)
    key_mask = cache.key_mask_BxL
    if key_mask is not None:
      key_mask = jax.lax.dynamic_slice(key_mask, (0, start - 1), (key_mask.shape[0], width + 1))
    logits = llada.lm_head(config, params, shift_to_targets(out[0], key_mask)[:, 1:])
    return (logits, out[2]) if return_cache else logits
  if return_head and any(v is not None and v is not False for v in cache_kwargs.values()):
    raise ValueError("return_head=True needs a full forward (no cache keywords)")
  out = llada.hidden_states(config, params, tokens_BxL, **kw, **cache_kwargs)
  hidden_BxLxD = shift_to_targets(out[0], out[1])
  if return_head:   # `llada.forward`'s contract: shifted hidden states and the LM head
    return hidden_BxLxD, functools.partial(llada.lm_head, config, params)
  logits = llada.lm_head(config, params, hidden_BxLxD)
  return (logits, out[2]) if cache_kwargs.get("return_cache") else logits


def unshifted_logits(config: DreamConfig, params: Params, tokens_BxL, *, attention_mask=None,
                     positions=None, adapters=None, projector: llada.Projector | None = None):
  """The network's own rows (what the Hugging Face `DreamModel` returns): row i predicts token
  i+1. For parity checks and AR-style use; masked-diffusion code wants `forward`."""
  return llada.forward(config, params, tokens_BxL, attention_mask=attention_mask,
                       positions=positions, adapters=adapters, projector=projector)


def forward_fn(config: DreamConfig) -> Callable:
  """`forward_fn(params, tokens_BxL, attention_mask=None)` (shifted logits): the model-agnostic
  form samplers and losses take, exactly like `llada.forward_fn` (a hashable partial)."""
  return functools.partial(forward, config)
