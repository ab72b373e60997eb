"""Building a run from its config: mesh, tokenizer, model config and (sharded) parameters.

Shared by every trainer and by `mdpo_jax.evaluate`, so a checkpoint is always rebuilt exactly the
way it was trained.
"""

from __future__ import annotations

import dataclasses
import logging
import string
from typing import Any

import jax

from mdpo_jax import parallel
from mdpo_jax.data import tokenizer as tokenizer_lib
from mdpo_jax.models import hf, llada, lora
from mdpo_jax.training import checkpoint

# Printable ASCII and newline: every task prompt/answer format fits, 100 tokens with specials.
CHAR_ALPHABET = "".join(chr(c) for c in range(32, 127)) + "\n"

_MODEL_OVERRIDES = ("d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size",
                    "rope_theta", "max_sequence_length", "dtype", "param_dtype", "remat",
                    "scan_layers", "honor_padding")


def make_tokenizer(config):
  """The run's tokenizer: "char" (printable ASCII), a tokenizer.json (file or folder), or ""
  for the one in `model.hf_checkpoint`."""
  if config.data.tokenizer == "char":
    return tokenizer_lib.build_char_tokenizer(CHAR_ALPHABET)
  if not config.data.tokenizer:
    if not config.model.hf_checkpoint:
      raise ValueError('data.tokenizer="" needs model.hf_checkpoint (its tokenizer.json)')
    return hf.load_tokenizer(config.model.hf_checkpoint)
  return hf.load_tokenizer(config.data.tokenizer)


def model_config(config, tokenizer) -> llada.LLaDAConfig:
  """LLaDAConfig from `config.model` (preset + overrides) with the tokenizer's special ids."""
  m = config.model
  if m.hf_checkpoint:
    raise ValueError("model_config: use load_model for model.hf_checkpoint")
  if m.preset not in llada.PRESETS:
    raise ValueError(f"model.preset={m.preset!r}: allowed {sorted(llada.PRESETS)}")
  ids = tokenizer_lib.special_ids(tokenizer)
  fields = dict(vocab_size=ids["vocab_size"], bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                pad_token_id=ids["eos"], eot_token_id=ids["eot"], mask_token_id=ids["mask"])
  for name in _MODEL_OVERRIDES:
    value = m.get(name)
    if value is not None and value != "":
      fields[name] = value
  base = llada.PRESETS[m.preset]()
  try:
    return dataclasses.replace(base, **fields)
  except ValueError as e:
    raise ValueError(str(e).replace("LLaDAConfig.", "model.")) from e


def lora_config(config, model_cfg: llada.LLaDAConfig) -> lora.LoraConfig | None:
  """The run's LoRA settings (`model.lora_rank/lora_alpha/lora_targets`), validated against the
  model's shapes; None when `model.lora_rank` is 0 (full fine-tuning)."""
  lora_cfg = lora.from_config(config.model)
  if lora_cfg is not None:
    lora.check_fits(model_cfg, lora_cfg)
  return lora_cfg


def load_model(config, tokenizer, mesh, rng: jax.Array, *,
               lora_supported: bool = False) -> tuple[llada.LLaDAConfig, Any]:
  """(model config, params placed on `mesh`): fresh, from a Hugging Face folder, or from a run.

  Callers that do not handle LoRA (`model.lora_rank` > 0) leave `lora_supported` False and get an
  error instead of a silently full fine-tune or a checkpoint of adapters read as full params.
  """
  m = config.model
  if not lora_supported and m.get("lora_rank", 0):
    raise ValueError(f"model.lora_rank={m.lora_rank}: LoRA is supported by trainer=sft|pretrain "
                     "only (RL trainers, evaluate and reproduce read full-parameter runs); "
                     "allowed here: 0")
  if m.hf_checkpoint:
    overrides = {k: m[k] for k in ("remat", "scan_layers", "honor_padding")}
    return hf.load_pretrained(m.hf_checkpoint, mesh=mesh, **overrides)
  cfg = model_config(config, tokenizer)
  if m.init_checkpoint:
    abstract = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        llada.abstract_params(cfg), parallel.param_shardings(cfg, mesh))
    params, _, step = checkpoint.restore_params(m.init_checkpoint, abstract)
    logging.info("params from %s (step %d)", m.init_checkpoint, step)
    return cfg, params
  return cfg, parallel.init_sharded_params(cfg, rng, mesh)
