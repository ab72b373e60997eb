"""Hugging Face interop for LLaDA checkpoints: config.json, safetensors weights, tokenizer.

Reads and writes the layout of the published `GSAI-ML/LLaDA-8B-{Base,Instruct}` checkpoints
(`LLaDAModelLM` from their `modeling_llada.py`), so a model fine-tuned here can be loaded by the
original PyTorch code and vice versa.

Weights (PyTorch `Linear` weights are [out, in]; D model width, H heads, K kv heads, E head dim,
F MLP width, V embedding rows, i the layer):

  model.transformer.wte.weight                 [V, D]    -> wte [V, D]
  model.transformer.blocks.{i}.attn_norm.weight [D]      -> blocks/attn_norm[i]
  model.transformer.blocks.{i}.q_proj.weight   [H·E, D]  -> blocks/q_proj[i]   [D, H, E]
  model.transformer.blocks.{i}.k_proj.weight   [K·E, D]  -> blocks/k_proj[i]   [D, K, E] (v too)
  model.transformer.blocks.{i}.attn_out.weight [D, H·E]  -> blocks/attn_out[i] [H, E, D]
  model.transformer.blocks.{i}.ff_norm.weight  [D]       -> blocks/ff_norm[i]
  model.transformer.blocks.{i}.ff_proj.weight  [F, D]    -> blocks/ff_proj[i]  [D, F] (gate; up too)
  model.transformer.blocks.{i}.ff_out.weight   [D, F]    -> blocks/ff_out[i]   [F, D]
  model.transformer.ln_f.weight                [D]       -> ln_f
  model.transformer.ff_out.weight              [V, D]    -> lm_head [D, V]  (absent when tied)

Memory: an 8B checkpoint never sits whole in host memory. Loading reads one tensor at a time —
and of it only the slice each device holds, through safetensors' memory map — straight into
(sharded) device arrays; stacked layers are written into a preallocated device stack with a
donated in-place update. Saving gathers one shard (5 GB by default) at a time to the host and
writes it with `safetensors`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding

from mdpo_jax import parallel
from mdpo_jax.models import llada

PathLike = str | os.PathLike

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"
HF_PREFIX = "model.transformer."

# What the published checkpoints carry, so the original `trust_remote_code` classes load ours.
HF_ARCHITECTURES = ["LLaDAModelLM"]
HF_AUTO_MAP = {
    "AutoConfig": "configuration_llada.LLaDAConfig",
    "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
    "AutoModel": "modeling_llada.LLaDAModelLM",
}
HF_MODEL_TYPE = "llada"

# LLaDA-8B-Instruct chat template (tokenizer_config.json `chat_template`), one user turn.
LLADA_BOS_TOKEN = "<|startoftext|>"
_HEADER_START, _HEADER_END, _EOT = "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"
# The config.json id keys that name a LLaDA special token, and that token's string in
# tokenizer.json (LLaDA-8B: bos 126080, eos 126081, eot 126348, mask 126336). A null/absent key
# takes the tokenizer's id; `pad_token_id` has no token of its own and follows `eos_token_id`.
LLADA_SPECIAL_TOKENS = {"mask_token_id": "<|mdm_mask|>", "eos_token_id": "<|endoftext|>",
                        "bos_token_id": LLADA_BOS_TOKEN, "eot_token_id": _EOT}

# safetensors dtype tags <-> numpy dtypes (bfloat16 through ml_dtypes, bit-exact).
_ST_TO_NP = {"F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
             "BF16": np.dtype(ml_dtypes.bfloat16), "F64": np.dtype(np.float64)}
_NP_TO_ST = {v.name: k for k, v in _ST_TO_NP.items()}
_SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")

# Config fields that do not come from config.json and may be overridden when loading.
_RUNTIME_FIELDS = ("logits_dtype", "honor_padding", "scan_layers", "remat", "attention_impl")


class CheckpointError(ValueError):
  """A checkpoint's tensors do not match its config (missing, unexpected, wrong shape/dtype)."""


# ----------------------------------------------------------------------------------------------
# config.json
# ----------------------------------------------------------------------------------------------

# Architecture switches of the reference `ModelConfig` (configuration_llada.py): (key, the
# reference default used when the key is absent, the values our `llada.forward` implements, and
# what any other value would change). Absent keys take the reference default because that is
# what the original code would build from the same config.json.
_ARCH_REQUIREMENTS: tuple[tuple[str, Any, tuple, str], ...] = (
    ("block_type", "sequential", ("llama",),
     "'sequential'/'parallel' blocks use a fused att_proj and an ungated MLP"),
    ("activation_type", "swiglu", ("silu",),
     "the llama block computes act(ff_proj(x)) * up_proj(x); only silu gives SwiGLU"),
    ("layer_norm_type", "default", ("rms",), "only RMSNorm (weight only) is implemented"),
    ("layer_norm_with_affine", True, (True,), "norms without a weight are not implemented"),
    ("include_bias", False, (False,), "linear/norm biases are not implemented"),
    ("include_qkv_bias", False, (False, None), "q/k/v biases are not implemented"),
    ("alibi", False, (False,), "ALiBi attention biases are not implemented"),
    ("rope", False, (True,), "the model needs rotary position embeddings"),
    ("rope_full_precision", True, (True,), "RoPE is always applied in float32 here"),
    ("attention_layer_norm", False, (False,), "q/k layer norms are not implemented"),
    ("scale_logits", False, (False,), "logit scaling by 1/sqrt(d_model) is not implemented"),
    ("input_emb_norm", False, (False,), "embedding scaling by sqrt(d_model) is not implemented"),
    ("block_group_size", 1, (1,), "grouped blocks are stored under different tensor names"),
    ("clip_qkv", None, (None,), "q/k/v clipping is not implemented"),
)


def _fail(key: str, value: Any, allowed: str, why: str = "") -> None:
  detail = f" ({why})" if why else ""
  raise ValueError(f"config.json: {key}={value!r} is not supported; supported: {allowed}{detail}")


def _normalize_dtype(dtype: Any, what: str) -> str:
  try:
    name = jnp.dtype(dtype).name
  except TypeError:
    name = str(dtype)
  if name not in _SUPPORTED_DTYPES:
    raise ValueError(f"{what}={dtype!r} is not supported; allowed {_SUPPORTED_DTYPES}")
  return name


def _int_key(hf: Mapping[str, Any], key: str, default: Any) -> Any:
  value = hf.get(key, default)
  if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
    raise ValueError(f"config.json: {key}={value!r} must be an integer")
  return value


def _effective_kv_heads(hf: Mapping[str, Any], n_heads: int) -> int:
  """n_kv_heads as the reference resolves it together with `multi_query_attention`."""
  n_kv = _int_key(hf, "n_kv_heads", None)
  mqa = hf.get("multi_query_attention")
  if mqa not in (None, True, False):
    _fail("multi_query_attention", mqa, "null, true or false")
  if n_kv is None:
    return 1 if mqa is True else n_heads
  if mqa is not None and n_kv != (1 if mqa else n_heads):
    raise ValueError(f"config.json: multi_query_attention={mqa!r} contradicts n_kv_heads={n_kv} "
                     f"(allowed: multi_query_attention null, or n_kv_heads "
                     f"{1 if mqa else n_heads} to match it)")
  return n_kv


@dataclasses.dataclass(frozen=True)
class _TokenizerFacts:
  """What loading needs from a tokenizer: what it is called in messages (its tokenizer.json),
  how many embedding rows its ids need (max id + 1), and the ids of the LLaDA special tokens it
  defines."""

  label: str
  size: int
  ids: Mapping[str, int]


def _tokenizer_facts(tokenizer: Any, tokens: Mapping[str, str] = LLADA_SPECIAL_TOKENS,
                     load: Callable[[Path], Any] | None = None) -> _TokenizerFacts:
  """Facts of a `tokenizers.Tokenizer`, or of the tokenizer.json at a path (file or folder).

  `tokens` maps config id keys to the special-token strings to look up (a family's table);
  `load` reads a path (default `load_tokenizer`)."""
  if isinstance(tokenizer, (str, os.PathLike)):
    p = Path(tokenizer)
    label = f"tokenizer {p / TOKENIZER_FILE if p.is_dir() else p}"
    tokenizer = (load or load_tokenizer)(p)
  else:
    label = "the given tokenizer object"
  vocab = tokenizer.get_vocab(with_added_tokens=True)
  size = max(vocab.values(), default=-1) + 1
  ids = {key: int(vocab[token]) for key, token in tokens.items() if token in vocab}
  return _TokenizerFacts(label, size, ids)


def _check_vocab(tok: _TokenizerFacts | None, rows: int, where: str) -> None:
  """Tokenizer ids the embedding cannot hold would be clamped by the lookup: refuse them."""
  if tok is not None and tok.size > rows:
    raise ValueError(f"{tok.label} has token ids up to {tok.size - 1} ({tok.size} ids) "
                     f"but {where} gives the model {rows} embedding rows (embedding_size/"
                     f"vocab_size); expected a tokenizer with at most {rows} ids, such as this "
                     "checkpoint's own tokenizer.json")


def _special_ids(hf: Mapping[str, Any], rows: int, tok: _TokenizerFacts | None,
                 where: str, *, defaults: Any = None,
                 tokens: Mapping[str, str] = LLADA_SPECIAL_TOKENS,
                 family: str = "LLaDA") -> dict[str, int]:
  """The five special ids: config.json, else the tokenizer's token, else the LLaDA default.

  An id that config.json sets must lie in [0, rows). A null/absent one takes the tokenizer's id
  for its LLaDA token (`LLADA_SPECIAL_TOKENS`), else the `LLaDAConfig` default when it fits the
  vocabulary; `pad_token_id` follows `eos_token_id`. The model's forward pass uses none of them.
  mask and eos have no stand-in (the sampler and losses need the mask, decoding and padding the
  EOS), so a missing one is an error naming the key and both files; bos and eot fall back to
  eos with a warning (bos is not read by any computation; eot = eos only makes decoding stop at
  EOS, and the chat template checks its tokens in the tokenizer itself, see `encode_chat`).
  Another family passes its config `defaults`, token table and name (see `hf_dream`).
  """
  defaults = llada.LLaDAConfig() if defaults is None else defaults
  ids: dict[str, int] = {}
  stand_ins = []
  for name in ("mask_token_id", "eos_token_id", "bos_token_id", "eot_token_id", "pad_token_id"):
    value = _int_key(hf, name, None)
    if value is not None:
      if not 0 <= value < rows:
        raise ValueError(f"{where}: {name}={value} is outside the model's vocabulary "
                         f"[0, {rows}); expected an id below {rows}")
      ids[name] = value
    elif tok is not None and name in tok.ids:
      ids[name] = tok.ids[name]
    elif name == "pad_token_id":
      ids[name] = ids["eos_token_id"]
    elif getattr(defaults, name) < rows:
      ids[name] = getattr(defaults, name)
    else:
      token = tokens[name]
      looked = (f"{tok.label} has no {token!r} token" if tok is not None
                else f"no {TOKENIZER_FILE} was given to look up {token!r} in")
      why = (f"{where}: {name} is {'null' if name in hf else 'absent'}, {looked}, and the "
             f"{family} default {getattr(defaults, name)} is outside the vocabulary [0, {rows})")
      if name in ("mask_token_id", "eos_token_id"):
        raise ValueError(f"{why}; set {name} in {where} (the sampler, losses and decoding need "
                         "it)")
      ids[name] = ids["eos_token_id"]
      stand_ins.append(why)
  for why in stand_ins:
    logging.warning("%s; using eos_token_id=%d in its place", why, ids["eos_token_id"])
  return ids


def _config_from_hf(hf_config: Mapping[str, Any], dtype: Any, tok: _TokenizerFacts | None,
                    where: str, overrides: Mapping[str, Any]) -> llada.LLaDAConfig:
  """`config_from_hf` with the tokenizer facts and config file name (`where`) already known."""
  hf = dict(hf_config)
  model_type = hf.get("model_type", HF_MODEL_TYPE)
  if model_type != HF_MODEL_TYPE:
    _fail("model_type", model_type, repr(HF_MODEL_TYPE))
  for key, default, allowed, why in _ARCH_REQUIREMENTS:
    value = hf.get(key, default)
    # Compare type-strictly: JSON 1 must not pass for true, nor 0 for false.
    if not any(value is a or (type(value) is type(a) and value == a) for a in allowed):
      _fail(key, value, " or ".join(repr(a) for a in allowed), why)
  norm_bias = hf.get("bias_for_layer_norm")
  if norm_bias is None:
    norm_bias = hf.get("include_bias", False)
  if norm_bias:
    _fail("bias_for_layer_norm", hf.get("bias_for_layer_norm"), "false or null",
          "norm biases are not implemented")
  weight_tying = hf.get("weight_tying", True)
  if not isinstance(weight_tying, bool):
    _fail("weight_tying", weight_tying, "true or false")

  d_model = _int_key(hf, "d_model", 768)
  n_heads = _int_key(hf, "n_heads", 12)
  mlp_hidden = _int_key(hf, "mlp_hidden_size", None)
  if mlp_hidden is None:
    mlp_hidden = _int_key(hf, "mlp_ratio", 4) * d_model
  vocab_size = _int_key(hf, "vocab_size", 50257)
  embedding_size = _int_key(hf, "embedding_size", None)
  rows = vocab_size if embedding_size is None else embedding_size
  if rows < vocab_size:
    raise ValueError(f"config.json: embedding_size={embedding_size} must be >= vocab_size="
                     f"{vocab_size}")
  _check_vocab(tok, rows, where)

  if dtype is None:
    declared = hf.get("torch_dtype", hf.get("dtype"))
    dtype = declared if declared in _SUPPORTED_DTYPES else "bfloat16"
  dtype = _normalize_dtype(dtype, "dtype")
  bad = sorted(set(overrides) - set(_RUNTIME_FIELDS))
  if bad:
    raise ValueError(f"config_from_hf: cannot override {bad}; overridable fields: "
                     f"{_RUNTIME_FIELDS} (shapes and ids come from config.json)")
  ids = _special_ids(hf, rows, tok, where)
  fields = dict(
      vocab_size=rows, d_model=d_model, n_layers=_int_key(hf, "n_layers", 12), n_heads=n_heads,
      n_kv_heads=_effective_kv_heads(hf, n_heads), mlp_hidden_size=mlp_hidden,
      rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
      rope_theta=float(hf.get("rope_theta", 10000.0)),
      max_sequence_length=_int_key(hf, "max_sequence_length", 1024),
      tie_embeddings=weight_tying, dtype=dtype, param_dtype=dtype,
      init_std=float(hf.get("init_std", llada.LLaDAConfig.init_std)), **ids)
  fields.update(overrides)
  return llada.LLaDAConfig(**fields)


def config_from_hf(hf_config: Mapping[str, Any], *, dtype: Any = None, tokenizer: Any = None,
                   **overrides: Any) -> llada.LLaDAConfig:
  """Build our `LLaDAConfig` from a LLaDA `config.json` dict, rejecting what we cannot compute.

  Keys absent from `hf_config` take the defaults of the reference `ModelConfig`, exactly as the
  original code would. Any architecture switch whose value changes the math away from what
  `llada.forward` implements raises a `ValueError` naming the key, its value and what is
  supported. `embedding_size` (the rows of the embedding and LM head, >= vocab_size) becomes our
  `vocab_size`, since our logits cover every row.

  Special ids (`_special_ids`): a set id is used (and must fit the vocabulary); a null/absent
  one (LLaDA's config.json has no bos/eot, `bos_token_id` may be null) comes from `tokenizer`'s
  LLaDA token, else the `LLaDAConfig` default when it fits, else (bos, eot) eos with a warning;
  a mask or eos id found nowhere is an error. `pad_token_id` absent follows `eos_token_id`.

  `tokenizer`: a `tokenizers.Tokenizer` or the path of a tokenizer.json (file or folder), for
  those ids; a tokenizer whose ids need more rows than the model has is an error (its ids would
  be clamped by the embedding lookup). Fewer is fine (LLaDA pads its embedding to 126464 rows).
  `dtype` sets both `param_dtype` and `dtype`; None takes `torch_dtype` (or `dtype`) from the
  config when it names a supported float type, else bfloat16 (what LLaDA ships).
  `overrides` may set the runtime fields that config.json does not describe
  (`honor_padding`, `scan_layers`, `remat`, `attention_impl`, `logits_dtype`).
  """
  tok = None if tokenizer is None else _tokenizer_facts(tokenizer)
  return _config_from_hf(hf_config, dtype, tok, CONFIG_FILE, overrides)


def config_to_hf(config: llada.LLaDAConfig) -> dict[str, Any]:
  """The `config.json` dict for `config`, in the form of the published LLaDA checkpoints.

  Every architecture key is written explicitly (the reference defaults differ from LLaDA's, so an
  omitted key would change the model), together with `architectures`, `auto_map` and
  `model_type`, so the original `configuration_llada.py` / `modeling_llada.py` load the folder.
  `bos_token_id`, `eot_token_id` and `torch_dtype` are extra keys the reference ignores.
  """
  c = config
  return {
      "activation_type": "silu",
      "alibi": False,
      "alibi_bias_max": 8.0,
      "architectures": list(HF_ARCHITECTURES),
      "attention_dropout": 0.0,
      "attention_layer_norm": False,
      "attention_layer_norm_with_affine": True,
      "auto_map": dict(HF_AUTO_MAP),
      "bias_for_layer_norm": False,
      "block_group_size": 1,
      "block_type": "llama",
      "bos_token_id": c.bos_token_id,
      "d_model": c.d_model,
      "embedding_dropout": 0.0,
      "embedding_size": c.vocab_size,
      "eos_token_id": c.eos_token_id,
      "eot_token_id": c.eot_token_id,
      "flash_attention": False,
      "include_bias": False,
      "include_qkv_bias": False,
      "init_cutoff_factor": None,
      "init_device": "meta",
      "init_fn": "mitchell",
      "init_std": c.init_std,
      "input_emb_norm": False,
      "layer_norm_type": "rms",
      "layer_norm_with_affine": True,
      "mask_token_id": c.mask_token_id,
      "max_sequence_length": c.max_sequence_length,
      "mlp_hidden_size": c.mlp_hidden_size,
      "mlp_ratio": max(1, c.mlp_hidden_size // c.d_model),
      "model_type": HF_MODEL_TYPE,
      "multi_query_attention": None,
      "n_heads": c.n_heads,
      "n_kv_heads": c.n_kv_heads,
      "n_layers": c.n_layers,
      "pad_token_id": c.pad_token_id,
      "residual_dropout": 0.0,
      "rms_norm_eps": c.rms_norm_eps,
      "rope": True,
      "rope_full_precision": True,
      "rope_theta": c.rope_theta,
      "scale_logits": False,
      "torch_dtype": c.param_dtype,
      "use_cache": False,
      "vocab_size": c.vocab_size,
      "weight_tying": c.tie_embeddings,
  }


def _read_json(path: Path, what: str) -> dict:
  if not path.is_file():
    raise FileNotFoundError(f"{what}: {path} does not exist")
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{what}: {path} is not valid JSON ({e}); expected a JSON object") from e
  if not isinstance(value, dict):
    raise ValueError(f"{what}: {path} must hold a JSON object, got {type(value).__name__}")
  return value


# ----------------------------------------------------------------------------------------------
# The name/layout table.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One of our parameter leaves and its Hugging Face tensor(s).

  ours = hf.reshape(view_shape).transpose(perm); `groups[j]` lists the view axes that make up HF
  axis j (a split axis such as H·E -> (H, E)). Stacked entries have one HF tensor per layer
  (`template` holds `{i}`) and our leaf carries a leading layer axis.
  """

  path: tuple[str, ...]
  template: str
  hf_shape: tuple[int, ...]
  view_shape: tuple[int, ...]
  perm: tuple[int, ...]
  groups: tuple[tuple[int, ...], ...]
  stacked: bool
  prefix: str = HF_PREFIX  # prepended to `template` (another family's names carry their own)

  def hf_name(self, layer: int | None = None) -> str:
    return self.prefix + (self.template.format(i=layer) if self.stacked else self.template)

  @property
  def layer_shape(self) -> tuple[int, ...]:
    return tuple(self.view_shape[p] for p in self.perm)


def _layout(config: llada.LLaDAConfig) -> list[_Entry]:
  """Every leaf of our params with its HF name, shape and transform, in checkpoint order."""
  c = config
  v, d, h, k, e, f = (c.vocab_size, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim,
                      c.mlp_hidden_size)
  ident1, ident2, swap = (0,), (0, 1), (1, 0)
  single, pair = ((0,),), ((0,), (1,))

  def top(path, name, hf_shape, perm, groups=None):
    groups = groups or tuple((i,) for i in range(len(hf_shape)))
    return _Entry(path, name, hf_shape, hf_shape, perm, groups, False)

  def layer(name, hf_shape, view_shape, perm, groups):
    return _Entry(("blocks", name), f"blocks.{{i}}.{name}.weight", hf_shape, view_shape, perm,
                  groups, True)

  entries = [top(("wte",), "wte.weight", (v, d), ident2, pair)]
  entries += [
      layer("attn_norm", (d,), (d,), ident1, single),
      layer("q_proj", (h * e, d), (h, e, d), (2, 0, 1), ((0, 1), (2,))),
      layer("k_proj", (k * e, d), (k, e, d), (2, 0, 1), ((0, 1), (2,))),
      layer("v_proj", (k * e, d), (k, e, d), (2, 0, 1), ((0, 1), (2,))),
      layer("attn_out", (d, h * e), (d, h, e), (1, 2, 0), ((0,), (1, 2))),
      layer("ff_norm", (d,), (d,), ident1, single),
      layer("ff_proj", (f, d), (f, d), swap, pair),
      layer("up_proj", (f, d), (f, d), swap, pair),
      layer("ff_out", (d, f), (d, f), swap, pair),
  ]
  entries.append(top(("ln_f",), "ln_f.weight", (d,), ident1, single))
  if not c.tie_embeddings:
    entries.append(top(("lm_head",), "ff_out.weight", (v, d), swap, pair))
  # Internal consistency with the model's own parameter tree.
  abstract = llada.abstract_params(c)
  for entry in entries:
    node = abstract
    for key in entry.path:
      node = node[key]
    want = (c.n_layers,) + entry.layer_shape if entry.stacked else entry.layer_shape
    assert tuple(node.shape) == want, (entry.path, node.shape, want)
  assert len(entries) == len(jax.tree.leaves(abstract)), "layout misses a parameter"
  return entries


def _get_path(tree: Mapping[str, Any], path: Sequence[str]) -> Any:
  node = tree
  for key in path:
    node = node[key]
  return node


def _set_path(tree: dict, path: Sequence[str], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


# ----------------------------------------------------------------------------------------------
# Reading safetensors checkpoints.
# ----------------------------------------------------------------------------------------------


class _Checkpoint:
  """The tensors of a checkpoint folder: one `model.safetensors` or shards listed in the index.

  Opens every file with safetensors' memory-mapped reader; `read` copies out only the requested
  slice of one tensor.
  """

  def __init__(self, folder: Path):
    from safetensors import safe_open  # Local: only checkpoint I/O needs it.

    self.folder = folder
    index_path, single_path = folder / INDEX_FILE, folder / SAFETENSORS_FILE
    if index_path.is_file():
      index = _read_json(index_path, "checkpoint index")
      weight_map = index.get("weight_map")
      if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"checkpoint index {index_path}: 'weight_map' must be a non-empty "
                         "object mapping tensor names to shard files")
      by_file: dict[str, list[str]] = {}
      for name, file in weight_map.items():
        by_file.setdefault(file, []).append(name)
      for file, names in sorted(by_file.items()):
        if not (folder / file).is_file():
          raise FileNotFoundError(
              f"checkpoint index {index_path} maps {len(names)} tensor(s) (e.g. {names[0]!r}) "
              f"to shard {file!r}, which does not exist in {folder}")
      files = sorted(by_file)
    elif single_path.is_file():
      weight_map, files = None, [SAFETENSORS_FILE]
    else:
      found = sorted(p.name for p in folder.glob("*.safetensors"))
      raise FileNotFoundError(f"no {SAFETENSORS_FILE} or {INDEX_FILE} in {folder}"
                              + (f" (found {found})" if found else ""))
    self._handles = {}
    self.tensors: dict[str, tuple[str, str, tuple[int, ...]]] = {}  # name -> (file, dtype, shape)
    for file in files:
      handle = self._open(folder / file, safe_open)
      self._handles[file] = handle
      for name in handle.keys():
        if name in self.tensors:
          raise CheckpointError(f"tensor {name!r} appears in both {self.tensors[name][0]!r} "
                                f"and {file!r}")
        view = handle.get_slice(name)
        self.tensors[name] = (file, view.get_dtype(), tuple(view.get_shape()))
    if weight_map is not None:
      for name, file in weight_map.items():
        if self.tensors.get(name, (None,))[0] != file:
          raise CheckpointError(f"checkpoint index maps tensor {name!r} to {file!r}, but that "
                                "file does not contain it")

  @staticmethod
  def _open(path: Path, safe_open: Callable) -> Any:
    """safetensors' reader on `path`; a truncated or corrupt file is a one-line ValueError."""
    try:
      return safe_open(str(path), framework="numpy")
    except Exception as e:  # safetensors raises its own SafetensorError (an Exception)
      size = path.stat().st_size if path.is_file() else 0
      raise ValueError(f"safetensors file {path} ({size} bytes) cannot be read: "
                       f"{_one_line(e)}; expected a complete safetensors file (truncated "
                       "download or interrupted copy? fetch or save it again)") from e

  def read(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
    """A numpy copy of `tensor[index]` (bit-exact, bf16 as ml_dtypes.bfloat16)."""
    file = self.tensors[name][0]
    try:
      view = self._handles[file].get_slice(name)
      return np.asarray(view[index] if index else view[:])
    except Exception as e:
      raise ValueError(f"safetensors file {self.folder / file}: tensor {name!r} cannot be read "
                       f"({_one_line(e)}); expected a complete safetensors file") from e

  def close(self) -> None:
    self._handles.clear()


def _checkpoint_dtype(ckpt: _Checkpoint, names: Iterable[str], declared: Any) -> str:
  """The float type the checkpoint stores (to keep it when loading with dtype=None)."""
  tags = sorted({ckpt.tensors[n][1] for n in names})
  kinds = sorted({_ST_TO_NP[t].name for t in tags if t in _ST_TO_NP})
  if len(kinds) == 1 and kinds[0] in _SUPPORTED_DTYPES:
    return kinds[0]
  if declared in _SUPPORTED_DTYPES:
    return declared
  raise ValueError(f"checkpoint in {ckpt.folder} stores dtypes {tags} and config.json declares "
                   f"torch_dtype={declared!r}; pass dtype= one of {_SUPPORTED_DTYPES} to "
                   "load_pretrained")


def _validate_tensors(ckpt: _Checkpoint, entries: list[_Entry], config: llada.LLaDAConfig, *,
                      tied_alias: str = HF_PREFIX + "ff_out.weight", family: str = "LLaDA") -> None:
  """Missing, unexpected, wrong-shape and non-float tensors, each error naming the tensor.

  `tied_alias`: the LM head's name, ignored when the config ties it to the embedding."""
  expected: dict[str, tuple[int, ...]] = {}
  for entry in entries:
    layers = range(config.n_layers) if entry.stacked else [None]
    for i in layers:
      expected[entry.hf_name(i)] = entry.hf_shape
  missing = [n for n in expected if n not in ckpt.tensors]
  if missing:
    shown = ", ".join(f"{n!r} (expected shape {list(expected[n])})" for n in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    raise CheckpointError(f"checkpoint {ckpt.folder} is missing tensor(s) {shown}{more}")
  ignorable = set()
  if config.tie_embeddings:  # A tied model's head is the embedding; a saved alias is redundant.
    ignorable.add(tied_alias)
  unexpected = sorted(n for n in ckpt.tensors if n not in expected and n not in ignorable)
  if unexpected:
    shown = ", ".join(repr(n) for n in unexpected[:5])
    more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
    raise CheckpointError(f"checkpoint {ckpt.folder} has unexpected tensor(s) {shown}{more} "
                          f"that this {family} config does not use")
  for name, shape in expected.items():
    file, tag, got = ckpt.tensors[name]
    if got != shape:
      raise CheckpointError(f"tensor {name!r} in {file}: expected shape {list(shape)} (from "
                            f"config.json), got {list(got)}")
    if tag not in _ST_TO_NP:
      raise CheckpointError(f"tensor {name!r} in {file} has dtype {tag}; supported: "
                            f"{sorted(_ST_TO_NP)}")


def _hf_slices(entry: _Entry, index: tuple[slice, ...]):
  """Map a slice of our (per-layer) array onto the HF tensor.

  Returns the HF index to read, the view-shaped block it gives, and the index that finishes the
  job on that block (inner axes of a split HF axis are read whole, then sliced).
  """
  index = tuple(index) + (slice(None),) * (len(entry.perm) - len(index))
  view_index: list[tuple[int, int]] = [(0, 0)] * len(entry.view_shape)
  for j, s in enumerate(index):
    axis = entry.perm[j]
    start, stop, step = s.indices(entry.view_shape[axis])
    if step != 1:
      raise ValueError(f"strided device slices are not supported ({s})")
    view_index[axis] = (start, stop)
  hf_index, block_shape, finish = [], [], [slice(None)] * len(entry.view_shape)
  for group in entry.groups:
    outer, inner = group[0], group[1:]
    inner_size = math.prod(entry.view_shape[a] for a in inner)
    start, stop = view_index[outer]
    hf_index.append(slice(start * inner_size, stop * inner_size))
    block_shape.append(stop - start)
    for a in inner:
      block_shape.append(entry.view_shape[a])
      finish[a] = slice(*view_index[a])
  return tuple(hf_index), tuple(block_shape), tuple(finish)


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split())


def _all_finite(array: np.ndarray) -> bool:
  """No NaN/Inf in `array`, checked in 16M-element chunks (the bool temporary stays small)."""
  flat = array.reshape(-1)
  step = 1 << 24
  return all(bool(np.isfinite(flat[i:i + step]).all()) for i in range(0, flat.size, step))


def _reader(ckpt: _Checkpoint, entry: _Entry, name: str, dtype: np.dtype,
            nonfinite: dict[str, str], label: str) -> Callable:
  """Callback for `jax.make_array_from_callback`: our-layout slices read from the HF tensor.

  Devices holding the same slice (replication) share one read. A block holding NaN/Inf (after
  the cast to `dtype`) records `nonfinite[name] = label` (our param path).
  """
  cache: dict[tuple, np.ndarray] = {}

  def callback(index: tuple[slice, ...]) -> np.ndarray:
    hf_index, block_shape, finish = _hf_slices(entry, index)
    key = tuple((s.start, s.stop) for s in hf_index) + tuple((s.start, s.stop) for s in finish)
    if key not in cache:
      block = ckpt.read(name, hf_index).reshape(block_shape)[finish]
      cache[key] = np.ascontiguousarray(block.transpose(entry.perm).astype(dtype, copy=False))
      if not _all_finite(cache[key]):
        nonfinite[name] = label
    return cache[key]

  return callback


def _warn_nonfinite(nonfinite: Mapping[str, str], where: str) -> None:
  if nonfinite:
    shown = ", ".join(f"{n!r} ({label})" for n, label in list(nonfinite.items())[:8])
    more = f" and {len(nonfinite) - 8} more" if len(nonfinite) > 8 else ""
    logging.warning("%s: %d tensor(s) hold NaN/Inf values: %s%s", where, len(nonfinite), shown,
                    more)


def _layer_sharding(sharding: jax.sharding.Sharding, ndim: int) -> jax.sharding.Sharding:
  """The sharding of one layer of a stacked array (the stack's sharding minus the layer axis)."""
  if isinstance(sharding, SingleDeviceSharding):
    return sharding
  if isinstance(sharding, NamedSharding):
    spec = tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec))
    return NamedSharding(sharding.mesh, PartitionSpec(*spec[1:]), memory_kind=sharding.memory_kind)
  raise TypeError(f"unsupported sharding {type(sharding).__name__} for stacked parameters; "
                  "use NamedSharding or SingleDeviceSharding")


@functools.lru_cache(maxsize=None)
def _zeros_fn(shape: tuple[int, ...], dtype: str, sharding: jax.sharding.Sharding) -> Callable:
  return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)


@functools.lru_cache(maxsize=None)
def _set_layer_fn(sharding: jax.sharding.Sharding) -> Callable:
  # Donating the stack makes the update in place: device memory holds the stack plus one layer.
  return jax.jit(lambda stack, layer, i: jax.lax.dynamic_update_index_in_dim(stack, layer, i, 0),
                 out_shardings=sharding, donate_argnums=0)


def _load_params(ckpt: _Checkpoint, entries: Sequence[_Entry], config: llada.LLaDAConfig,
                 mesh: jax.sharding.Mesh | None, rules: Sequence[tuple[str, Any]], *,
                 model: Any = llada) -> dict:
  """Stream every tensor of `ckpt` into (sharded) device arrays; warn about NaN/Inf ones.

  `model`: the family's module (its `abstract_params` and `param_shardings`)."""
  target = np.dtype(config.param_dtype)
  if mesh is None:
    device = SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: device, model.abstract_params(config))
  else:
    shardings = model.param_shardings(config, mesh, rules)
  params: dict = {}
  nonfinite: dict[str, str] = {}
  for entry in entries:
    sharding = _get_path(shardings, entry.path)
    label = "params" + "".join(f"[{key!r}]" for key in entry.path)
    if not entry.stacked:
      array = jax.make_array_from_callback(
          entry.layer_shape, sharding,
          _reader(ckpt, entry, entry.hf_name(), target, nonfinite, label))
    else:
      shape = (config.n_layers,) + entry.layer_shape
      array = _zeros_fn(shape, target.name, sharding)()
      layer_sharding = _layer_sharding(sharding, len(shape))
      set_layer = _set_layer_fn(sharding)
      for i in range(config.n_layers):
        layer = jax.make_array_from_callback(
            entry.layer_shape, layer_sharding,
            _reader(ckpt, entry, entry.hf_name(i), target, nonfinite, f"{label}[{i}]"))
        array = set_layer(array, layer, np.int32(i))
        del layer
    _set_path(params, entry.path, array)
  _warn_nonfinite(nonfinite, f"checkpoint {ckpt.folder}")
  return params


def _folder_tokenizer(folder: Path, tokenizer: Any) -> _TokenizerFacts | None:
  """Facts of the given tokenizer, else of the folder's own tokenizer.json when it has one."""
  if tokenizer is None:
    own = folder / TOKENIZER_FILE
    tokenizer = own if own.is_file() else None
  return None if tokenizer is None else _tokenizer_facts(tokenizer)


def load_pretrained(path: PathLike, *, dtype: Any = None, mesh: jax.sharding.Mesh | None = None,
                    rules: Sequence[tuple[str, Any]] = parallel.DEFAULT_RULES,
                    tokenizer: Any = None, param_dtype: Any = None,
                    **overrides: Any) -> tuple[llada.LLaDAConfig, dict]:
  """Load a LLaDA checkpoint folder into (sharded) device parameters.

  Reads `config.json` and `model.safetensors` (or the shards named by
  `model.safetensors.index.json`). Tensors are moved one at a time, each device reading only
  its own slice through the memory map, so host memory holds at most one tensor; stacked layers
  are written into a device-side stack by a donated in-place update. Each tensor is checked for
  NaN/Inf as it streams through the host; one `logging.warning` names every such tensor (its
  Hugging Face name and our param path). Loading goes on: the values are what the file holds.

  Args:
    path: the checkpoint folder.
    dtype: compute (and, without `param_dtype`, parameter) dtype; None keeps the checkpoint's own
      float type bit for bit.
    param_dtype: the stored parameters' dtype when it differs from `dtype`, e.g. float32
      master weights for training a bfloat16 checkpoint (bfloat16 weights cannot take small
      optimiser steps); None: `dtype`.
    mesh: place parameters with `llada.param_shardings(config, mesh, rules)`; None puts them
      on the first local device.
    rules: logical-axis rules for the mesh (`parallel.DEFAULT_RULES`, or a run's
      `parallel.parse_rules(config.mesh.rules)`); unused without a mesh.
    tokenizer: the tokenizer the model will be used with (a `tokenizers.Tokenizer`, or a
      tokenizer.json file or folder); None: the folder's own tokenizer.json, if it has one. It
      supplies the special ids config.json leaves null, and must fit the model's vocabulary
      (see `config_from_hf`).
    **overrides: runtime config fields (see `config_from_hf`), e.g. `honor_padding=False`.

  Raises:
    FileNotFoundError: no folder, config.json or weights, or an index naming a missing shard.
    ValueError: an unsupported config value (names the key); config.json or an index that is
      not JSON, a truncated/corrupt safetensors file, a tokenizer whose ids the embedding cannot
      hold, a mask/eos id found nowhere (each names the file); `CheckpointError` (a ValueError)
      for a missing, unexpected or wrongly shaped tensor (names the tensor and the shapes).
  """
  folder = Path(path)
  if not folder.is_dir():
    raise FileNotFoundError(f"checkpoint folder {folder} does not exist or is not a folder")
  config_file = folder / CONFIG_FILE
  hf_config = _read_json(config_file, "checkpoint config")
  tok = _folder_tokenizer(folder, tokenizer)
  probe = _config_from_hf(hf_config, dtype or "float32", tok, str(config_file), overrides)
  ckpt = _Checkpoint(folder)
  try:
    entries = _layout(probe)
    _validate_tensors(ckpt, entries, probe)
    if dtype is None:
      declared = hf_config.get("torch_dtype", hf_config.get("dtype"))
      dtype = _checkpoint_dtype(ckpt, ckpt.tensors, declared)
    config = probe.replace(dtype=_normalize_dtype(dtype, "dtype"),
                           param_dtype=_normalize_dtype(param_dtype or dtype, "param_dtype"))
    params = _load_params(ckpt, entries, config, mesh, rules)
  finally:
    ckpt.close()
  return config, params


# ----------------------------------------------------------------------------------------------
# Writing.
# ----------------------------------------------------------------------------------------------


def _to_host(x: Any) -> np.ndarray:
  """A host copy of one (possibly sharded, possibly multi-host) array."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    replicated = NamedSharding(x.sharding.mesh, PartitionSpec())
    x = jax.jit(lambda a: a, out_shardings=replicated)(x)
    return np.asarray(x.addressable_data(0))
  return np.asarray(jax.device_get(x))


@functools.lru_cache(maxsize=None)
def _take_layer_fn() -> Callable:
  return jax.jit(lambda stack, i: jax.lax.dynamic_index_in_dim(stack, i, 0, keepdims=False))


@dataclasses.dataclass
class _Item:
  """One HF tensor to write: its name, safetensors dtype tag, shape, and how to fetch it."""

  name: str
  tag: str
  shape: tuple[int, ...]
  fetch: Callable[[], np.ndarray]

  @property
  def nbytes(self) -> int:
    return math.prod(self.shape) * _ST_TO_NP[self.tag].itemsize


def _items(config: llada.LLaDAConfig, params: Mapping[str, Any], *, model: Any = llada,
           layout: Callable[[Any], list[_Entry]] | None = None) -> list[_Item]:
  """The HF tensors of `params` in checkpoint order, each fetched lazily in HF layout.

  `model`/`layout`: the family's module (`abstract_params`) and name table (default LLaDA's)."""
  abstract = model.abstract_params(config)
  want = {jax.tree_util.keystr(p): a for p, a in jax.tree_util.tree_leaves_with_path(abstract)}
  try:
    got = {jax.tree_util.keystr(p): a for p, a in jax.tree_util.tree_leaves_with_path(params)}
  except Exception as e:  # pragma: no cover - exotic containers
    raise ValueError(f"params must be a nested dict of arrays ({e})") from e
  if set(got) != set(want):
    raise ValueError(f"params do not match the config: missing {sorted(set(want) - set(got))}, "
                     f"unexpected {sorted(set(got) - set(want))}")
  for key, leaf in got.items():
    if tuple(np.shape(leaf)) != tuple(want[key].shape):
      raise ValueError(f"params{key}: shape {tuple(np.shape(leaf))} does not match the config's "
                       f"{tuple(want[key].shape)}")
    name = np.dtype(leaf.dtype).name
    if name not in _NP_TO_ST:
      raise ValueError(f"params{key}: dtype {name} cannot be saved; allowed {sorted(_NP_TO_ST)}")

  items = []
  for entry in (layout or _layout)(config):
    leaf = _get_path(params, entry.path)
    tag = _NP_TO_ST[np.dtype(leaf.dtype).name]
    inverse = tuple(int(a) for a in np.argsort(entry.perm))

    def to_hf(array: np.ndarray, entry=entry, inverse=inverse) -> np.ndarray:
      return np.ascontiguousarray(array.transpose(inverse)).reshape(entry.hf_shape)

    if entry.stacked:
      for i in range(config.n_layers):
        fetch = (lambda leaf=leaf, i=i, to_hf=to_hf:
                 to_hf(_to_host(_take_layer_fn()(leaf, np.int32(i)))))
        items.append(_Item(entry.hf_name(i), tag, entry.hf_shape, fetch))
    else:
      items.append(_Item(entry.hf_name(), tag, entry.hf_shape,
                         lambda leaf=leaf, to_hf=to_hf: to_hf(_to_host(leaf))))
  return items


def _write_safetensors(path: Path | None, items: Sequence[_Item]) -> None:
  """Write one shard with `safetensors.numpy.save_file`, holding this shard's tensors on host.

  Host memory peaks at one shard (5 GB by default in `save_pretrained`, as Hugging Face shards).
  `path=None` still fetches every tensor (the other processes of a multi-host job must join the
  gathers) but writes nothing.
  """
  from safetensors.numpy import save_file
  tensors = {}
  for item in items:
    array = item.fetch()
    if array.shape != item.shape or _NP_TO_ST[array.dtype.name] != item.tag:
      raise RuntimeError(f"tensor {item.name!r}: fetched {array.dtype}{list(array.shape)}, "
                         f"expected {item.tag}{list(item.shape)}")
    if path is not None:
      tensors[item.name] = np.ascontiguousarray(array)
    del array
  if path is not None:
    save_file(tensors, str(path), metadata={"format": "pt"})


def _plan_shards(items: Sequence[_Item], max_shard_bytes: int | None) -> list[list[_Item]]:
  """Greedy split in checkpoint order; a tensor larger than the limit gets a shard of its own."""
  if max_shard_bytes is None:
    return [list(items)]
  shards: list[list[_Item]] = [[]]
  size = 0
  for item in items:
    if shards[-1] and size + item.nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(item)
    size += item.nbytes
  return shards


DEFAULT_MAX_SHARD_BYTES = 5 * 10**9


def _check_save_args(path: PathLike, max_shard_bytes, overwrite: bool,
                     extra_files: Iterable[PathLike]) -> tuple[Path, list[Path]]:
  """`save_pretrained`'s argument checks, before anything is gathered: (folder, extra files)."""
  if sys.byteorder != "little":  # pragma: no cover
    raise RuntimeError("save_pretrained writes little-endian safetensors; big-endian host")
  if max_shard_bytes is not None and (not isinstance(max_shard_bytes, int) or max_shard_bytes < 1):
    raise ValueError(f"max_shard_bytes={max_shard_bytes!r}: must be a positive integer or None")
  folder = Path(path)
  if folder.exists() and not folder.is_dir():
    raise FileExistsError(f"{folder} exists and is not a folder")
  if folder.is_dir() and any(folder.iterdir()) and not overwrite:
    raise FileExistsError(f"{folder} is not empty; pass overwrite=True to replace it")
  extra = [Path(p) for p in extra_files]
  for p in extra:
    if not p.is_file():
      raise FileNotFoundError(f"extra_files: {p} does not exist")
  return folder, extra


def _write_shards(folder: Path, shards: Sequence[Sequence[_Item]], total_bytes: int) -> None:
  """One `model.safetensors`, or numbered shards plus `model.safetensors.index.json`."""
  if len(shards) == 1:
    _write_safetensors(folder / SAFETENSORS_FILE, shards[0])
    return
  weight_map = {}
  for k, shard in enumerate(shards):
    file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
    _write_safetensors(folder / file, shard)
    weight_map.update({item.name: file for item in shard})
  index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
  (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def save_pretrained(path: PathLike, config: llada.LLaDAConfig, params: Mapping[str, Any], *,
                    max_shard_bytes: int | None = DEFAULT_MAX_SHARD_BYTES, overwrite: bool = False,
                    extra_files: Iterable[PathLike] = ()) -> Path:
  """Write `config.json` and safetensors weights in the published LLaDA names and layouts.

  One `model.safetensors`, or with `max_shard_bytes` as many `model-0000k-of-0000n.safetensors`
  shards as needed plus `model.safetensors.index.json` (a single shard is written as
  `model.safetensors`). Tensors go to the host one shard at a time, each in its own dtype,
  so `load_pretrained` gives back the same bits. The folder is assembled under a temporary name
  beside `path` and renamed into place, so a crash never leaves a half-written checkpoint.

  Args:
    path: the checkpoint folder to create.
    config, params: the model (params as from `llada.init_params` or `load_pretrained`).
    max_shard_bytes: shard size limit in bytes (default 5 GB, as Hugging Face shards; None: a
      single file). Host memory peaks at about one shard.
    overwrite: replace an existing non-empty folder (it is swapped out, then deleted).
    extra_files: files copied into the folder too, e.g. tokenizer.json, tokenizer_config.json,
      configuration_llada.py and modeling_llada.py for the original `trust_remote_code` loader.

  Returns:
    The checkpoint folder.
  """
  folder, extra = _check_save_args(path, max_shard_bytes, overwrite, extra_files)
  return _write_checkpoint(folder, _items(config, params), config_to_hf(config),
                           max_shard_bytes, extra)


def _write_checkpoint(folder: Path, items: Sequence[_Item], hf_config: dict,
                      max_shard_bytes: int | None, extra: Sequence[Path]) -> Path:
  """`save_pretrained`'s writing, for any family: shards, config.json and extra files, assembled
  under a temporary name beside `folder` and renamed into place (other hosts only gather)."""
  shards = _plan_shards(items, max_shard_bytes)
  writer = jax.process_index() == 0
  tags = {item.tag for item in items}
  if len(tags) == 1:  # Declare what is actually stored.
    hf_config["torch_dtype"] = _ST_TO_NP[tags.pop()].name

  if not writer:  # Other hosts take part in the gathers only.
    for shard in shards:
      _write_safetensors(None, shard)
    return folder

  folder.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
  try:
    _write_shards(tmp, shards, sum(item.nbytes for item in items))
    (tmp / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n",
                                   encoding="utf-8")
    for p in extra:
      shutil.copy2(p, tmp / p.name)
    os.chmod(tmp, 0o755)
    if folder.exists():
      old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
      old.rmdir()
      os.replace(folder, old)
      os.replace(tmp, folder)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, folder)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return folder


# ----------------------------------------------------------------------------------------------
# Tokenizer and chat template.
# ----------------------------------------------------------------------------------------------


def load_tokenizer(path: PathLike):
  """The `tokenizers.Tokenizer` in `path` (a folder holding tokenizer.json, or the file itself)."""
  import tokenizers  # Local: the model code does not need it.

  p = Path(path)
  file = p / TOKENIZER_FILE if p.is_dir() else p
  if not file.is_file():
    raise FileNotFoundError(f"no {TOKENIZER_FILE} at {file}: a fast-tokenizer file is required "
                            "(LLaDA checkpoints ship one; slow tokenizers are not supported)")
  try:
    return tokenizers.Tokenizer.from_file(str(file))
  except Exception as e:  # tokenizers raises a bare Exception for unreadable files
    raise ValueError(f"tokenizer file {file} cannot be read ({_one_line(e)}); expected a "
                     "Hugging Face fast-tokenizer JSON (tokenizer.json)") from e


def apply_chat_template(user_message: str, *, bos_token: str = LLADA_BOS_TOKEN) -> str:
  """One user turn in the LLaDA-8B-Instruct chat template, with the generation prompt.

  Reproduces `tokenizer.apply_chat_template([{"role": "user", "content": m}],
  add_generation_prompt=True, tokenize=False)`: BOS, a Llama-3 style user header, the message
  stripped of surrounding whitespace (the template's `| trim`), `<|eot_id|>`, and the assistant
  header the answer follows.
  """
  if not isinstance(user_message, str):
    raise TypeError(f"user_message must be a str, got {type(user_message).__name__}")
  return (f"{bos_token}{_HEADER_START}user{_HEADER_END}\n\n{user_message.strip()}{_EOT}"
          f"{_HEADER_START}assistant{_HEADER_END}\n\n")


def encode_chat(tokenizer, message: str, *, bos_token: str = LLADA_BOS_TOKEN) -> list[int]:
  """Token ids of `apply_chat_template(message)`, encoded as LLaDA's generate.py does.

  The reference calls `tokenizer(prompt)`, i.e. with the tokenizer's own special-token
  post-processing enabled; so do we, so ids match the reference for the same tokenizer.json.
  The template's special tokens (BOS unless `bos_token=""`, the headers, EOT) must be tokens of
  `tokenizer`; otherwise their text would be split into ordinary pieces, so that is an error.
  """
  needed = {"BOS (bos_token_id)": bos_token, "header start": _HEADER_START,
            "header end": _HEADER_END, "EOT (eot_token_id)": _EOT}
  missing = [f"{role} {token!r}" for role, token in needed.items()
             if token and tokenizer.token_to_id(token) is None]
  if missing:
    raise ValueError(f"the chat template needs token(s) the tokenizer does not define: "
                     f"{', '.join(missing)}; expected LLaDA's tokenizer.json (or prompts without "
                     "the chat template)")
  return list(tokenizer.encode(apply_chat_template(message, bos_token=bos_token),
                               add_special_tokens=True).ids)
