"""Hugging Face interop for Dream checkpoints: config.json, safetensors weights, tokenizer, chat.

Reads and writes the layout of the published `Dream-org/Dream-v0-{Base,Instruct}-7B` folders
(`DreamModel` from their `modeling_dream.py`, Qwen2 tensor names), so a model fine-tuned here
loads in the original PyTorch code and vice versa. The streaming machinery (memory-mapped,
per-device slices, donated in-place stacking on load; one shard at a time on save; atomic
folder replacement) is `hf`'s, shared through its private helpers; this module supplies
Dream's config mapping and name table.

Weights (PyTorch `Linear` weights are [out, in]; D model width, H heads, K kv heads, E head dim,
F MLP width, V vocabulary rows, i the layer):

  model.embed_tokens.weight                         [V, D]    -> wte [V, D]
  model.layers.{i}.input_layernorm.weight           [D]       -> blocks/attn_norm[i]
  model.layers.{i}.self_attn.q_proj.weight          [H·E, D]  -> blocks/q_proj[i]  [D, H, E]
  model.layers.{i}.self_attn.q_proj.bias            [H·E]     -> blocks/q_bias[i]  [H, E]
  model.layers.{i}.self_attn.{k,v}_proj.weight      [K·E, D]  -> blocks/{k,v}_proj[i] [D, K, E]
  model.layers.{i}.self_attn.{k,v}_proj.bias        [K·E]     -> blocks/{k,v}_bias[i] [K, E]
  model.layers.{i}.self_attn.o_proj.weight          [D, H·E]  -> blocks/attn_out[i] [H, E, D]
  model.layers.{i}.post_attention_layernorm.weight  [D]       -> blocks/ff_norm[i]
  model.layers.{i}.mlp.{gate,up}_proj.weight        [F, D]    -> blocks/{ff,up}_proj[i] [D, F]
  model.layers.{i}.mlp.down_proj.weight             [D, F]    -> blocks/ff_out[i]   [F, D]
  model.norm.weight                                 [D]       -> ln_f
  lm_head.weight                                    [V, D]    -> lm_head [D, V] (absent if tied)

Tokenizer: the published folders ship the slow `DreamTokenizer` files (vocab.json, merges.txt,
tokenizer_config.json; no tokenizer.json). `load_tokenizer` builds the equivalent fast
`tokenizers.Tokenizer` from them (Qwen2's byte-level BPE: NFC, its split regex, byte-level
mapping, added tokens at their ids), or reads a tokenizer.json when the folder has one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import jax

from mdpo_jax import parallel
from mdpo_jax.models import dream, hf

PathLike = str | os.PathLike

HF_ARCHITECTURES = ["DreamModel"]
HF_AUTO_MAP = {"AutoConfig": "configuration_dream.DreamConfig",
               "AutoModel": "modeling_dream.DreamModel"}
HF_MODEL_TYPE = "Dream"
VOCAB_FILE, MERGES_FILE = "vocab.json", "merges.txt"
TOKENIZER_CONFIG_FILE, ADDED_TOKENS_FILE = "tokenizer_config.json", "added_tokens.json"

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# The Instruct template's system turn when the conversation has none (tokenizer_config.json).
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
# Config id keys and the Dream tokenizer's token for each (published ids: mask 151666,
# eos 151643, im_end 151645, beginoftext 151665; config.json sets bos = eos = pad = 151643).
DREAM_SPECIAL_TOKENS = {"mask_token_id": "<|mask|>", "eos_token_id": "<|endoftext|>",
                        "bos_token_id": "<|beginoftext|>", "eot_token_id": IM_END}
# Qwen2's pre-tokenizer split (tokenization_qwen2.py / DreamTokenizer PRETOKENIZE_REGEX).
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
                r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Switches of the reference `DreamConfig` (configuration_dream.py): (key, the reference default
# when absent, the values `dream.forward` implements, what another value would change).
_ARCH_REQUIREMENTS: tuple[tuple[str, Any, tuple, str], ...] = (
    ("hidden_act", "silu", ("silu",), "the MLP is down(silu(gate(x)) * up(x)); only silu"),
    ("use_sliding_window", False, (False,), "sliding-window attention is not implemented"),
    ("rope_scaling", None, (None,), "only unscaled RoPE (rope_type 'default') is implemented"),
    ("use_mrope", False, (False,), "multimodal RoPE is not implemented"),
    ("attention_bias", True, (True,), "DreamModel's q/k/v projections always carry biases"),
    ("mlp_bias", False, (False,), "MLP biases are not implemented"),
)


# ----------------------------------------------------------------------------------------------
# config.json
# ----------------------------------------------------------------------------------------------


def _check_architecture(hf_config: Mapping[str, Any]) -> None:
  model_type = hf_config.get("model_type", HF_MODEL_TYPE)
  if model_type != HF_MODEL_TYPE:
    hf._fail("model_type", model_type, repr(HF_MODEL_TYPE))
  for key, default, allowed, why in _ARCH_REQUIREMENTS:
    value = hf_config.get(key, default)
    if not any(value is a or (type(value) is type(a) and value == a) for a in allowed):
      hf._fail(key, value, " or ".join(repr(a) for a in allowed), why)
  tie = hf_config.get("tie_word_embeddings", False)
  if not isinstance(tie, bool):
    hf._fail("tie_word_embeddings", tie, "true or false")


def _shape_fields(hf_config: Mapping[str, Any]) -> dict[str, Any]:
  """Shape and numerics from config.json; absent keys take the reference DreamConfig defaults."""
  d_model = hf._int_key(hf_config, "hidden_size", 4096)
  n_heads = hf._int_key(hf_config, "num_attention_heads", 32)
  n_kv = hf._int_key(hf_config, "num_key_value_heads", None)
  head_dim = hf._int_key(hf_config, "head_dim", None)
  if head_dim is not None and n_heads and head_dim * n_heads != d_model:
    hf._fail("head_dim", head_dim, f"null or hidden_size/num_attention_heads = "
             f"{d_model // max(n_heads, 1)}", "DreamAttention derives head_dim from hidden_size")
  return dict(
      d_model=d_model, n_heads=n_heads, n_kv_heads=n_heads if n_kv is None else n_kv,
      n_layers=hf._int_key(hf_config, "num_hidden_layers", 32),
      mlp_hidden_size=hf._int_key(hf_config, "intermediate_size", 22016),
      rms_norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)),
      rope_theta=float(hf_config.get("rope_theta", 10000.0)),
      max_sequence_length=hf._int_key(hf_config, "max_position_embeddings", 32768),
      tie_embeddings=hf_config.get("tie_word_embeddings", False),
      init_std=float(hf_config.get("initializer_range", dream.DreamConfig.init_std)))


def _config_from_hf(hf_config: Mapping[str, Any], dtype: Any, tok: Any, where: str,
                    overrides: Mapping[str, Any]) -> dream.DreamConfig:
  """`config_from_hf` with the tokenizer facts and config file name (`where`) already known."""
  _check_architecture(hf_config)
  fields = _shape_fields(hf_config)
  rows = hf._int_key(hf_config, "vocab_size", 151936)
  hf._check_vocab(tok, rows, where)
  if dtype is None:
    declared = hf_config.get("torch_dtype", hf_config.get("dtype"))
    dtype = declared if declared in hf._SUPPORTED_DTYPES else "bfloat16"
  dtype = hf._normalize_dtype(dtype, "dtype")
  bad = sorted(set(overrides) - set(hf._RUNTIME_FIELDS))
  if bad:
    raise ValueError(f"config_from_hf: cannot override {bad}; overridable fields: "
                     f"{hf._RUNTIME_FIELDS} (shapes and ids come from config.json)")
  ids = hf._special_ids(hf_config, rows, tok, where, defaults=dream.DreamConfig(),
                        tokens=DREAM_SPECIAL_TOKENS, family="Dream")
  fields.update(vocab_size=rows, dtype=dtype, param_dtype=dtype, **ids)
  fields.update(overrides)
  return dream.DreamConfig(**fields)


def config_from_hf(hf_config: Mapping[str, Any], *, dtype: Any = None, tokenizer: Any = None,
                   **overrides: Any) -> dream.DreamConfig:
  """Build a `DreamConfig` from a Dream `config.json` dict, rejecting what we cannot compute.

  Absent keys take the reference `DreamConfig` defaults, as the original code would. A switch
  whose value changes the math away from `dream.forward` (sliding window on, `rope_scaling`
  set, `hidden_act` not silu, multimodal RoPE, MLP biases, `attention_bias` false, a
  `head_dim` other than hidden_size/heads, a `model_type` other than "Dream") raises a
  `ValueError` naming the key, its value and what is supported. Special ids follow
  `hf._special_ids` with Dream's tokens (`DREAM_SPECIAL_TOKENS`): config.json, else
  `tokenizer` (a `tokenizers.Tokenizer` or a folder/file `load_tokenizer` reads), else the
  `DreamConfig` default when it fits; `eot_token_id` (not in the published file) becomes
  `<|im_end|>`. `dtype` and `overrides` behave as in `hf.config_from_hf`.
  """
  tok = None if tokenizer is None else _tokenizer_facts(tokenizer)
  return _config_from_hf(hf_config, dtype, tok, hf.CONFIG_FILE, overrides)


def config_to_hf(config: dream.DreamConfig) -> dict[str, Any]:
  """The `config.json` dict for `config`, in the form of the published Dream checkpoints, with
  `architectures`, `auto_map` and `model_type` so the original classes load the folder;
  `eot_token_id` is an extra key the reference ignores."""
  c = config
  return {
      "architectures": list(HF_ARCHITECTURES),
      "attention_dropout": 0.0,
      "auto_map": dict(HF_AUTO_MAP),
      "bos_token_id": c.bos_token_id,
      "eos_token_id": c.eos_token_id,
      "eot_token_id": c.eot_token_id,
      "hidden_act": "silu",
      "hidden_size": c.d_model,
      "initializer_range": c.init_std,
      "intermediate_size": c.mlp_hidden_size,
      "mask_token_id": c.mask_token_id,
      "max_position_embeddings": c.max_sequence_length,
      "max_window_layers": c.n_layers,
      "model_type": HF_MODEL_TYPE,
      "num_attention_heads": c.n_heads,
      "num_hidden_layers": c.n_layers,
      "num_key_value_heads": c.n_kv_heads,
      "pad_token_id": c.pad_token_id,
      "rms_norm_eps": c.rms_norm_eps,
      "rope_scaling": None,
      "rope_theta": c.rope_theta,
      "sliding_window": None,
      "tie_word_embeddings": c.tie_embeddings,
      "torch_dtype": c.param_dtype,
      "use_cache": False,
      "use_mrope": False,
      "use_sliding_window": False,
      "vocab_size": c.vocab_size,
  }


# ----------------------------------------------------------------------------------------------
# The name/layout table.
# ----------------------------------------------------------------------------------------------


def _layout(config: dream.DreamConfig) -> list[hf._Entry]:
  """Every leaf of our params with its HF name, shape and transform (see `hf._Entry`)."""
  c = config
  v, d, h, k, e, f = (c.vocab_size, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim,
                      c.mlp_hidden_size)
  single, pair, swap = ((0,),), ((0,), (1,)), (1, 0)

  def top(path, name, hf_shape, perm, groups):
    return hf._Entry(path, name, hf_shape, hf_shape, perm, groups, False, prefix="")

  def layer(ours, name, hf_shape, view_shape, perm, groups):
    return hf._Entry(("blocks", ours), f"model.layers.{{i}}.{name}", hf_shape, view_shape, perm,
                     groups, True, prefix="")

  split_out = ((0, 1), (2,))  # [X·E, D] viewed as (X, E, D)
  entries = [top(("wte",), "model.embed_tokens.weight", (v, d), (0, 1), pair)]
  entries += [
      layer("attn_norm", "input_layernorm.weight", (d,), (d,), (0,), single),
      layer("q_proj", "self_attn.q_proj.weight", (h * e, d), (h, e, d), (2, 0, 1), split_out),
      layer("q_bias", "self_attn.q_proj.bias", (h * e,), (h, e), (0, 1), ((0, 1),)),
      layer("k_proj", "self_attn.k_proj.weight", (k * e, d), (k, e, d), (2, 0, 1), split_out),
      layer("k_bias", "self_attn.k_proj.bias", (k * e,), (k, e), (0, 1), ((0, 1),)),
      layer("v_proj", "self_attn.v_proj.weight", (k * e, d), (k, e, d), (2, 0, 1), split_out),
      layer("v_bias", "self_attn.v_proj.bias", (k * e,), (k, e), (0, 1), ((0, 1),)),
      layer("attn_out", "self_attn.o_proj.weight", (d, h * e), (d, h, e), (1, 2, 0),
            ((0,), (1, 2))),
      layer("ff_norm", "post_attention_layernorm.weight", (d,), (d,), (0,), single),
      layer("ff_proj", "mlp.gate_proj.weight", (f, d), (f, d), swap, pair),
      layer("up_proj", "mlp.up_proj.weight", (f, d), (f, d), swap, pair),
      layer("ff_out", "mlp.down_proj.weight", (d, f), (d, f), swap, pair),
  ]
  entries.append(top(("ln_f",), "model.norm.weight", (d,), (0,), single))
  if not c.tie_embeddings:
    entries.append(top(("lm_head",), "lm_head.weight", (v, d), swap, pair))
  abstract = dream.abstract_params(c)  # Internal consistency with the model's parameter tree.
  for entry in entries:
    want = (c.n_layers,) + entry.layer_shape if entry.stacked else entry.layer_shape
    assert tuple(hf._get_path(abstract, entry.path).shape) == want, (entry.path, want)
  assert len(entries) == len(jax.tree.leaves(abstract)), "layout misses a parameter"
  return entries


# ----------------------------------------------------------------------------------------------
# Loading and saving.
# ----------------------------------------------------------------------------------------------


def load_pretrained(path: PathLike, *, dtype: Any = None, mesh: jax.sharding.Mesh | None = None,
                    rules: Sequence[tuple[str, Any]] = parallel.DEFAULT_RULES,
                    tokenizer: Any = None, param_dtype: Any = None,
                    **overrides: Any) -> tuple[dream.DreamConfig, dict]:
  """Load a Dream checkpoint folder into (sharded) device parameters, tensor by tensor.

  Same contract as `hf.load_pretrained` (arguments, streaming, NaN/Inf warning, errors naming
  the file, key or tensor), for Dream folders: config.json, `model.safetensors` or the shards of
  `model.safetensors.index.json`; `tokenizer` None takes the folder's own tokenizer (tokenizer.json
  or vocab.json + merges.txt) when it has one. A tied model's redundant `lm_head.weight` is
  ignored. Returns (`DreamConfig`, params).
  """
  folder = Path(path)
  if not folder.is_dir():
    raise FileNotFoundError(f"checkpoint folder {folder} does not exist or is not a folder")
  config_file = folder / hf.CONFIG_FILE
  hf_config = hf._read_json(config_file, "checkpoint config")
  tok = _folder_tokenizer(folder, tokenizer)
  probe = _config_from_hf(hf_config, dtype or "float32", tok, str(config_file), overrides)
  ckpt = hf._Checkpoint(folder)
  try:
    entries = _layout(probe)
    hf._validate_tensors(ckpt, entries, probe, tied_alias="lm_head.weight", family="Dream")
    if dtype is None:
      declared = hf_config.get("torch_dtype", hf_config.get("dtype"))
      dtype = hf._checkpoint_dtype(ckpt, ckpt.tensors, declared)
    dtype = hf._normalize_dtype(dtype, "dtype")
    config = probe.replace(dtype=dtype,
                           param_dtype=hf._normalize_dtype(param_dtype or dtype, "param_dtype"))
    params = hf._load_params(ckpt, entries, config, mesh, rules, model=dream)
  finally:
    ckpt.close()
  return config, params


def save_pretrained(path: PathLike, config: dream.DreamConfig, params: Mapping[str, Any], *,
                    max_shard_bytes: int | None = hf.DEFAULT_MAX_SHARD_BYTES,
                    overwrite: bool = False, extra_files: Iterable[PathLike] = ()) -> Path:
  """Write config.json and safetensors weights under the published Dream names and layouts.

  As `hf.save_pretrained`: one file or `model-0000k-of-0000n.safetensors` shards plus the index,
  each tensor in its own dtype (`load_pretrained` gives back the same bits), host memory about
  one shard, the folder assembled beside `path` and renamed into place. `extra_files`: e.g. the
  tokenizer files and configuration_dream.py / modeling_dream.py / generation_utils.py for the
  original `trust_remote_code` loader.
  """
  folder, extra = hf._check_save_args(path, max_shard_bytes, overwrite, extra_files)
  items = hf._items(config, params, model=dream, layout=_layout)
  return hf._write_checkpoint(folder, items, config_to_hf(config), max_shard_bytes, extra)


# ----------------------------------------------------------------------------------------------
# Tokenizer and chat template.
# ----------------------------------------------------------------------------------------------


def _added_tokens(folder: Path) -> list[tuple[int, dict]]:
  """(id, spec) of the added tokens: tokenizer_config.json's `added_tokens_decoder`, else
  added_tokens.json (all special)."""
  config_file, added_file = folder / TOKENIZER_CONFIG_FILE, folder / ADDED_TOKENS_FILE
  if config_file.is_file():
    decoder = hf._read_json(config_file, "tokenizer config").get("added_tokens_decoder")
    if isinstance(decoder, dict) and decoder:
      return sorted((int(i), spec) for i, spec in decoder.items())
  if added_file.is_file():
    table = hf._read_json(added_file, "added tokens")
    return sorted((int(i), {"content": token, "special": True}) for token, i in table.items())
  return []


def _byte_level_bpe(folder: Path):
  """The fast equivalent of the slow Qwen2/Dream tokenizer in `folder`."""
  import tokenizers  # Local: the model code does not need it.
  from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

  tok = tokenizers.Tokenizer(models.BPE.from_file(str(folder / VOCAB_FILE),
                                                  str(folder / MERGES_FILE)))
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(trim_offsets=False)
  for token_id, spec in _added_tokens(folder):
    content = spec.get("content")
    added = tokenizers.AddedToken(
        content, single_word=bool(spec.get("single_word", False)),
        lstrip=bool(spec.get("lstrip", False)), rstrip=bool(spec.get("rstrip", False)),
        normalized=bool(spec.get("normalized", False)), special=bool(spec.get("special", True)))
    if tok.token_to_id(content) is None:
      (tok.add_special_tokens if added.special else tok.add_tokens)([added])
    if tok.token_to_id(content) != token_id:
      raise ValueError(f"tokenizer in {folder}: added token {content!r} is declared with id "
                       f"{token_id} but gets id {tok.token_to_id(content)} after {VOCAB_FILE} "
                       "(expected added tokens numbered contiguously after the vocabulary)")
  return tok


def load_tokenizer(path: PathLike):
  """A `tokenizers.Tokenizer` for a Dream folder: its tokenizer.json when it has one (or `path`
  is that file), else built from vocab.json + merges.txt + the added tokens of
  tokenizer_config.json / added_tokens.json (what the published checkpoints ship)."""
  p = Path(path)
  if p.is_file() or (p / hf.TOKENIZER_FILE).is_file():
    return hf.load_tokenizer(p)
  missing = [name for name in (VOCAB_FILE, MERGES_FILE) if not (p / name).is_file()]
  if missing:
    raise FileNotFoundError(f"no {hf.TOKENIZER_FILE}, and no {' or '.join(missing)}, in {p}: a "
                            "Dream tokenizer needs tokenizer.json or vocab.json + merges.txt")
  return _byte_level_bpe(p)


def _tokenizer_facts(tokenizer: Any) -> hf._TokenizerFacts:
  return hf._tokenizer_facts(tokenizer, DREAM_SPECIAL_TOKENS, load=load_tokenizer)


def _folder_tokenizer(folder: Path, tokenizer: Any) -> hf._TokenizerFacts | None:
  """Facts of the given tokenizer, else of the folder's own tokenizer files when it has them."""
  if tokenizer is None:
    has_own = ((folder / hf.TOKENIZER_FILE).is_file()
               or ((folder / VOCAB_FILE).is_file() and (folder / MERGES_FILE).is_file()))
    tokenizer = folder if has_own else None
  return None if tokenizer is None else _tokenizer_facts(tokenizer)


def apply_chat_template(user_message: str, *, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> str:
  """One user turn in the Dream-v0-Instruct chat template (Qwen2.5's), with the generation prompt.

  Reproduces `tokenizer.apply_chat_template([{"role": "user", "content": m}],
  add_generation_prompt=True, tokenize=False)`: the default system turn (the template inserts
  "You are a helpful assistant." when the conversation has none), the user turn (content as
  given, not trimmed), and the assistant header the answer follows. No BOS.
  """
  if not isinstance(user_message, str):
    raise TypeError(f"user_message must be a str, got {type(user_message).__name__}")
  return (f"{IM_START}system\n{system_prompt}{IM_END}\n{IM_START}user\n{user_message}{IM_END}\n"
          f"{IM_START}assistant\n")


def encode_chat(tokenizer, message: str, *,
                system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> list[int]:
  """Token ids of `apply_chat_template(message)`. `<|im_start|>` and `<|im_end|>` must be
  tokens of `tokenizer` (else their text would be split into ordinary pieces: an error)."""
  missing = [token for token in (IM_START, IM_END) if tokenizer.token_to_id(token) is None]
  if missing:
    raise ValueError(f"the Dream chat template needs token(s) {missing} the tokenizer does not "
                     "define; expected Dream's tokenizer (or prompts without the chat template)")
  return list(tokenizer.encode(apply_chat_template(message, system_prompt=system_prompt),
                               add_special_tokens=True).ids)
