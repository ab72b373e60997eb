"""Model families: the one place that maps a family name to its code.

A family is a model module (`llada`, `dream`, `ar`: config class, `PRESETS`, `forward_fn`,
`init_sharded_params`, `abstract_params`, `param_shardings`, `param_logical_axes`, `forward`)
and its Hugging Face module (`hf`, `hf_dream`: `load_pretrained`, `save_pretrained`,
`load_tokenizer`, `encode_chat`, `HF_MODEL_TYPE`). Both modules expose the same names, and every
family's `forward` returns "prediction for position i at i" (Dream shifts inside its own
forward), so samplers, losses and RL code take `forward_fn(model_cfg)` and never ask which
family it is. Training code and the CLIs dispatch here — on `model.family` in a run's config,
on a model config's type, or on a checkpoint folder's config.json `model_type` — and nowhere
else.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from mdpo_jax.models import ar, dream, hf, hf_dream, llada

ModelConfig = llada.LLaDAConfig | dream.DreamConfig | ar.ARConfig
CONFIG_FILE = hf.CONFIG_FILE      # every family's folder holds its config here


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  model: ModuleType       # llada | dream
  hf: ModuleType          # hf | hf_dream
  config_type: type
  display: str            # how messages name it ("LLaDA", "Dream")
  # Tokenizer files a Hugging Face folder may hold, as alternatives (each a tuple of files).
  tokenizer_files: tuple[tuple[str, ...], ...]
  # Whether the family has a Hugging Face checkpoint format (`model.hf_checkpoint`); the AR
  # baseline does not (its `hf` module serves only the tokenizer).
  hf_folders: bool = True

  @property
  def presets(self) -> tuple[str, ...]:
    return tuple(sorted(self.model.PRESETS))

  @property
  def hf_model_type(self) -> str:
    return self.hf.HF_MODEL_TYPE


FAMILIES: dict[str, Family] = {
    "llada": Family("llada", llada, hf, llada.LLaDAConfig, "LLaDA", ((hf.TOKENIZER_FILE,),)),
    "dream": Family("dream", dream, hf_dream, dream.DreamConfig, "Dream",
                    ((hf.TOKENIZER_FILE,), (hf_dream.VOCAB_FILE, hf_dream.MERGES_FILE))),
    "ar": Family("ar", ar, hf, ar.ARConfig, "AR baseline", ((hf.TOKENIZER_FILE,),),
                 hf_folders=False),
}
HF_FAMILIES = tuple(name for name, f in FAMILIES.items() if f.hf_folders)
NAMES = tuple(FAMILIES)
DEFAULT = "llada"


def get(name: str) -> Family:
  """The family called `name` (`model.family`); ValueError naming the allowed ones."""
  try:
    return FAMILIES[name]
  except KeyError:
    raise ValueError(f"model.family={name!r}: allowed {NAMES}") from None


def of_config(model_cfg: Any) -> Family:
  """The family a model config (`LLaDAConfig`, `DreamConfig`) belongs to."""
  for family in FAMILIES.values():
    if type(model_cfg) is family.config_type:   # DreamConfig subclasses LLaDAConfig
      return family
  raise TypeError(f"not a model config of a known family {NAMES}: {type(model_cfg).__name__}")


def forward_fn(model_cfg: Any) -> Callable:
  """`fwd(params, tokens_BxL, attention_mask=None)` of the config's family (a hashable partial;
  logits where row i is the prediction for position i, whichever family)."""
  return of_config(model_cfg).model.forward_fn(model_cfg)


def preset(name: str, preset_name: str) -> ModelConfig:
  """The family's preset config (before a run's overrides and token ids)."""
  family = get(name)
  if preset_name not in family.model.PRESETS:
    raise ValueError(f"model.preset={preset_name!r}: allowed {family.presets} for "
                     f"model.family={name!r}")
  return family.model.PRESETS[preset_name]()


def detect(folder: str | Path) -> Family:
  """The family of a Hugging Face folder, from its config.json `model_type` (absent: LLaDA,
  whose loader assumes it too). Errors name the file or the value and what is allowed."""
  config_file = Path(folder) / CONFIG_FILE
  hf_config = hf._read_json(config_file, "checkpoint config")
  model_type = hf_config.get("model_type", hf.HF_MODEL_TYPE)
  for family in map(FAMILIES.get, HF_FAMILIES):
    if model_type == family.hf_model_type:
      return family
  allowed = ", ".join(f"{FAMILIES[n].hf_model_type!r} ({FAMILIES[n].display})"
                      for n in HF_FAMILIES)
  raise ValueError(f"{config_file}: model_type={model_type!r}: allowed {allowed}")


def _tokenizer_text(family: Family) -> str:
  return " or ".join(" + ".join(files) for files in family.tokenizer_files)


def folder_text(family: Family | None = None) -> str:
  """What a Hugging Face folder of `family` (None: of any family) holds, for messages."""
  families = map(FAMILIES.get, HF_FAMILIES) if family is None else (family,)
  return "a Hugging Face " + " or ".join(
      f"{f.display} folder ({CONFIG_FILE}, weights, {_tokenizer_text(f)})" for f in families)


def missing_tokenizer(family: Family, folder: str | Path) -> str | None:
  """None when `folder` holds one of the family's tokenizer file sets, else what is missing."""
  p = Path(folder)
  if any(all((p / name).is_file() for name in files) for files in family.tokenizer_files):
    return None
  return _tokenizer_text(family)
