"""Building a run from its config: mesh, tokenizer, model config and (sharded) parameters.

Shared by every trainer and by `mdpo_jax.evaluate`, so a checkpoint is always rebuilt exactly the
way it was trained.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from mdpo_jax import config as config_lib
from mdpo_jax import parallel
from mdpo_jax.data import tokenizer as tokenizer_lib
from mdpo_jax.models import families, lora
from mdpo_jax.training import checkpoint

# Printable ASCII and newline: every task prompt/answer format fits, 100 tokens with specials.
CHAR_ALPHABET = "".join(chr(c) for c in range(32, 127)) + "\n"

def make_mesh(config):
  """The run's device mesh (`mesh.data/fsdp/tensor`; sizes are checked against the devices)."""
  return parallel.make_mesh(data=config.mesh.data, fsdp=config.mesh.fsdp,
                            tensor=config.mesh.tensor)


def rules(config):
  """The run's logical-axis rules: `parallel.DEFAULT_RULES` with `mesh.rules` applied."""
  return parallel.parse_rules(config.mesh.rules)


def make_tokenizer(config):
  """The run's tokenizer: "char" (printable ASCII), a tokenizer.json (file or folder), or ""
  for the one in `model.hf_checkpoint` (read by `model.family`'s loader: a Dream folder may hold
  vocab.json + merges.txt instead)."""
  load_tokenizer = families.get(config.model.family).hf.load_tokenizer
  if config.data.tokenizer == "char":
    return tokenizer_lib.build_char_tokenizer(CHAR_ALPHABET)
  if not config.data.tokenizer:
    if not config.model.hf_checkpoint:
      raise ValueError('data.tokenizer="" needs model.hf_checkpoint (its tokenizer.json)')
    return load_tokenizer(config.model.hf_checkpoint)
  try:
    return load_tokenizer(config.data.tokenizer)
  except (FileNotFoundError, ValueError) as e:
    raise type(e)(f"data.tokenizer={config.data.tokenizer}: {e}") from e


def model_config(config, tokenizer) -> families.ModelConfig:
  """The model config of `model.family` (`LLaDAConfig`, `DreamConfig`) from `config.model`
  (preset + overrides) with the tokenizer's special ids."""
  m = config_lib.ensure(config).model
  if m.hf_checkpoint:
    raise ValueError("model_config: use load_model for model.hf_checkpoint")
  ids = tokenizer_lib.special_ids(tokenizer)
  fields = dict(vocab_size=ids["vocab_size"], bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                pad_token_id=ids["eos"], eot_token_id=ids["eot"], mask_token_id=ids["mask"],
                **m.preset_overrides())
  base = families.preset(m.family, m.preset)
  try:
    return dataclasses.replace(base, **fields)
  except ValueError as e:
    raise ValueError(config_lib.model_error(e)) from e


def lora_config(config, model_cfg: families.ModelConfig) -> lora.LoraConfig | None:
  """The run's LoRA settings (`model.lora_rank/lora_alpha/lora_targets`), validated against the
  model's shapes; None when `model.lora_rank` is 0 (full fine-tuning)."""
  lora_cfg = config_lib.ensure(config).model.lora()
  if lora_cfg is not None:
    lora.check_fits(model_cfg, lora_cfg)
  return lora_cfg


def init_adapters(config, model_cfg: families.ModelConfig, lora_cfg: lora.LoraConfig, mesh):
  """A LoRA run's fresh adapters (B = 0: the model starts as its base), from the run's seed and
  placed on `mesh`; every trainer draws them the same way."""
  logging.info("LoRA rank %d on %s: %d trainable parameters", lora_cfg.rank,
               ",".join(lora_cfg.targets), lora.num_adapter_params(model_cfg, lora_cfg))
  rng = jax.random.fold_in(jax.random.key(config.seed), 1)
  return jax.device_put(lora.init_adapters(model_cfg, lora_cfg, rng),
                        lora.adapter_shardings(model_cfg, lora_cfg, mesh, rules(config)))


def _abstract(tree, shardings):
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      tree, shardings)


def load_model(config, tokenizer, mesh, rng: jax.Array, *, lora_supported: bool = False,
               step: int | None = None) -> tuple[families.ModelConfig, Any]:
  """(model config, params placed on `mesh`) of `model.family`: fresh, from a Hugging Face folder
  (`_load_hf`), or from a run (`load_run_params`: a LoRA run's checkpoint comes back merged with
  its base; `step`: that checkpoint step of the run instead of its latest).

  With `model.lora_rank` > 0 the returned params are the base the caller puts adapters on.
  Callers that do not handle that leave `lora_supported` False and get an error instead of a
  silent full fine-tune. `rng` is `jax.random.key(config.seed)` in every trainer, which is how a
  LoRA run on a freshly initialised base can be rebuilt from its saved config.
  """
  m = config.model
  if not lora_supported and m.lora_rank:
    raise ValueError(f"model.lora_rank={m.lora_rank}: this caller trains or reads full "
                     "parameters only; allowed here: 0 (LoRA runs: trainer=sft|pretrain|mdpo|"
                     "diffu_grpo; evaluate reads any run's checkpoint)")
  if m.hf_checkpoint:
    return _load_hf(config, tokenizer, mesh)
  cfg = model_config(config, tokenizer)
  if m.init_checkpoint:
    try:
      return cfg, load_run_params(m.init_checkpoint, cfg, mesh, rules=rules(config), step=step)
    except FileNotFoundError as e:
      raise FileNotFoundError(f"model.init_checkpoint={m.init_checkpoint}: {e}; allowed: a "
                              "run's WORKDIR/checkpoints folder") from e
  return cfg, families.get(m.family).model.init_sharded_params(cfg, rng, mesh, rules(config))


# The run's settings a Hugging Face folder's config.json does not decide (`hf._RUNTIME_FIELDS`).
HF_RUNTIME_FIELDS = ("remat", "scan_layers", "honor_padding", "attention_impl")


def _load_hf(config, tokenizer, mesh):
  """`model.hf_checkpoint` read by `model.family`'s loader; a folder of another family (its
  config.json `model_type`) is an error naming both settings."""
  m = config.model
  family = families.get(m.family)
  try:
    found = families.detect(m.hf_checkpoint)
  except (OSError, ValueError):
    found = family   # the loader reports the unreadable file itself
  if found is not family:
    raise ValueError(f"model.hf_checkpoint={m.hf_checkpoint}: a {found.display} folder "
                     f"(model_type {found.hf_model_type!r}) but model.family={m.family!r}; "
                     f"allowed: model.family={found.name!r} for this folder")
  overrides = {k: getattr(m, k) for k in HF_RUNTIME_FIELDS if getattr(m, k) not in (None, "")}
  try:   # model.dtype / param_dtype "" keep the checkpoint's own type
    return family.hf.load_pretrained(m.hf_checkpoint, mesh=mesh, rules=rules(config),
                                     tokenizer=_tokenizer_source(config, tokenizer),
                                     dtype=m.dtype or None, param_dtype=m.param_dtype or None,
                                     **overrides)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"model.hf_checkpoint={m.hf_checkpoint}: {e}") from e


def _tokenizer_source(config, tokenizer):
  """What the family's `load_pretrained` checks the run's tokenizer by: its tokenizer.json path
  (errors then name the file), the object itself for the character tokenizer, or None (the
  checkpoint's own tokenizer files)."""
  source = config.data.tokenizer
  if source == "char":
    return tokenizer
  return source or None


@functools.lru_cache(maxsize=None)
def _finite_fn(mesh):
  """One jitted reduction over a params tree: per leaf, "all finite" (per layer for the stacked
  leaves under "blocks"), replicated so every process can read it."""

  def leaf(path, x):
    stacked = x.ndim > 1 and any(getattr(k, "key", None) == "blocks" for k in path)
    return jnp.isfinite(x).all(axis=tuple(range(1, x.ndim)) if stacked else None)

  return jax.jit(lambda tree: jax.tree_util.tree_map_with_path(leaf, tree),
                 out_shardings=NamedSharding(mesh, PartitionSpec()))


def warn_nonfinite(tree, mesh, where: str, prefix: str = "params") -> list[str]:
  """`logging.warning` naming every leaf of `tree` (on `mesh`) that holds NaN/Inf, with the
  layers for stacked leaves; returns those names. Costs one fused reduction on the devices."""
  bad = []
  for path, ok in jax.tree_util.tree_leaves_with_path(_finite_fn(mesh)(tree)):
    ok = np.asarray(ok.addressable_data(0))
    name = prefix + jax.tree_util.keystr(path)
    if not ok.all():
      bad.append(name if ok.ndim == 0 else f"{name} (layers {np.flatnonzero(~ok).tolist()})")
  if bad:
    logging.warning("%s: %d parameter(s) hold NaN/Inf values: %s", where, len(bad),
                    ", ".join(bad))
  return bad


def load_run_params(directory, model_cfg: families.ModelConfig, mesh, *,
                    rules=parallel.DEFAULT_RULES, field: str = "model.init_checkpoint",
                    step: int | None = None):
  """Full params of the latest checkpoint (or of `step`) in a run's `directory`
  (WORKDIR/checkpoints), shaped, typed and sharded as `model_cfg`'s on `mesh`.

  A full-parameter run's checkpoint holds the params. A LoRA run's (its saved config has
  `model.lora_rank` > 0) holds only adapters: its base is rebuilt from that saved config exactly
  as the run built it (its own `model.hf_checkpoint`, `model.init_checkpoint`, recursively, or
  fresh init from its seed) and the adapters are merged in (`lora.merge`, float32 sum). `field`
  names the setting that pointed here, for errors.
  """
  saved, step = checkpoint.saved_config(directory, step)
  family = families.of_config(model_cfg)
  saved_family = saved.get("model", {}).get("family", families.DEFAULT)
  if saved_family != family.name:
    raise ValueError(f"{field}={directory}: a run of model.family={saved_family!r} but this run's "
                     f"model.family={family.name!r}; allowed: the same family")
  model = family.model
  abstract = _abstract(model.abstract_params(model_cfg),
                       model.param_shardings(model_cfg, mesh, rules))
  run_lora = lora.from_config(saved.get("model", {}))
  if run_lora is None:
    params, _, step = checkpoint.restore_params(directory, abstract, step)
    logging.info("params from %s (step %d)", directory, step)
    warn_nonfinite(params, mesh, f"{field}={directory} (step {step})")
    return params
  run = config_lib.saved(saved)
  run_cfg, base = load_model(run, make_tokenizer(run), mesh, jax.random.key(run.seed),
                             lora_supported=True)
  want = jax.tree.map(lambda a: a.shape, abstract)
  got = jax.tree.map(lambda a: a.shape, base)
  if got != want:
    raise ValueError(f"{field}={directory}: a LoRA run whose base model ({run.model.preset}, "
                     f"d_model={run_cfg.d_model}, n_layers={run_cfg.n_layers}, vocab "
                     f"{run_cfg.vocab_size}) does not match this run's model config; allowed: "
                     "the same model shapes")
  adapters, _, _ = checkpoint.restore_params(
      directory, _abstract(lora.abstract_adapters(run_cfg, run_lora),
                           lora.adapter_shardings(run_cfg, run_lora, mesh, rules)), step)
  # The base was checked by its own loader (or is a fresh init).
  warn_nonfinite(adapters, mesh, f"{field}={directory} (step {step})", prefix="adapters")
  dtypes = jax.tree.map(lambda a: a.dtype, abstract)
  merge = jax.jit(lambda b, a: jax.tree.map(lambda x, dt: x.astype(dt),
                                            lora.merge(run_lora, b, a), dtypes),
                  out_shardings=jax.tree.map(lambda a: a.sharding, abstract))
  logging.info("params from %s (step %d): LoRA rank %d adapters merged into their base",
               directory, step, run_lora.rank)
  return merge(base, adapters)
