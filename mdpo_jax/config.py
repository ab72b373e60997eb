"""The run configuration, validated once at the boundary into typed, frozen values.

`parse` turns a ConfigDict (a recipe in configs/ plus command-line overrides) or a saved config's
JSON into a `RunConfig`: one frozen dataclass per section whose attribute names are exactly the
keys of configs/base.py, so `config.rl.top_k` reads the same on either. Every check runs from
here, before any work starts, and fails with one line naming the field, the value and what is
allowed (`optim.lr=nan: must be a finite number`); the loops read the typed values and check
nothing. A task's own keys (Countdown's ranges, Sudoku's empty cells) are checked by its class,
which `parse` builds (`tasks.build` makes no problem, so this is cheap): one rule, one place.

Three layers, each in one place:
  * the dataclass annotations say each key's type; list-like keys become tuples whether given as
    a tuple or as comma-separated text from the command line ("48,12" == (48, 12));
  * `_RULES` says which values each key allows on its own (a table, per section);
  * the `_check_*` functions check keys against each other (a setting's sampler, divisibility).
configs/base.py stays the one list of keys and defaults: the dataclasses have no defaults.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from typing import Any, Callable, Mapping

from mdpo_jax import parallel
from mdpo_jax import tasks as tasks_lib
from mdpo_jax.data import generated
from mdpo_jax.models import families, llada, lora
from mdpo_jax.rl import algorithms, cogrpo, mdpo, schedule_policy
from mdpo_jax.sampling import fhs, sampler
from mdpo_jax.training import optim as optim_lib

SUPERVISED_TRAINERS = ("pretrain", "sft", "ilm")   # ilm: the insertion LM (training/ilm_loop)
TASKS = tuple(tasks_lib.TASKS)
PROCEDURAL_TASKS = tuple(n for n, t in tasks_lib.TASKS.items() if t.procedural)  # fresh problems
FILE_TASKS = tuple(n for n, t in tasks_lib.TASKS.items()   # read task.train_file/eval_file
                   if issubclass(t, tasks_lib.records.RecordTask))
FILTERS = ("none", "over_denoising")
PROMPT_SOURCES = ("train", "fresh")
DTYPES = llada._DTYPES        # what every family accepts (its config checks again when built)
REMAT = llada._REMAT
# List-valued keys that configs/base.py writes as comma-separated text (`to_json` keeps that form).
_TEXT_LISTS = frozenset({"model.lora_targets"})
_MODEL_OVERRIDES = ("d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size",
                    "rope_theta", "max_sequence_length", "dtype", "param_dtype", "remat",
                    "scan_layers", "honor_padding", "attention_impl")


def rl_trainers() -> tuple[str, ...]:
  """Names of the RL algorithms `trainer` may select (the registry in `rl/algorithms.py`)."""
  return algorithms.ALGORITHM_NAMES


def trainers() -> tuple[str, ...]:
  return SUPERVISED_TRAINERS + rl_trainers()


# ----------------------------------------------------------------------------------------------
# The typed sections.
# ----------------------------------------------------------------------------------------------


class _Section:
  """Also readable like a ConfigDict section (`section["top_k"]`, `section.get(...)`), so code
  written for either works on both."""

  def __getitem__(self, key: str):
    if key not in self.keys():
      raise KeyError(key)
    return getattr(self, key)

  def get(self, key: str, default=None):
    return getattr(self, key) if key in self.keys() else default

  def keys(self) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(self))

  def to_json(self, prefix: str = "") -> dict:
    """Plain JSON data: tuples as lists (comma-joined text for `_TEXT_LISTS`)."""
    out = {}
    for key in self.keys():
      value = getattr(self, key)
      if isinstance(value, _Section):
        out[key] = value.to_json(key)
      elif isinstance(value, tuple):
        out[key] = ",".join(value) if f"{prefix}.{key}" in _TEXT_LISTS else list(value)
      else:
        out[key] = value
    return out


_frozen = dataclasses.dataclass(frozen=True, kw_only=True)


@_frozen
class ModelConfig(_Section):
  family: str
  preset: str
  hf_checkpoint: str
  init_checkpoint: str
  d_model: int | None       # this and the rest up to honor_padding: None or "" = the preset's
  n_layers: int | None
  n_heads: int | None
  n_kv_heads: int | None
  mlp_hidden_size: int | None
  rope_theta: float | None
  max_sequence_length: int | None
  dtype: str
  param_dtype: str
  remat: str
  scan_layers: bool | None
  honor_padding: bool | None
  attention_impl: str
  lora_rank: int
  lora_alpha: float
  lora_targets: tuple[str, ...]

  def lora(self) -> lora.LoraConfig | None:
    """The LoRA settings, or None when `lora_rank` is 0 (full fine-tuning)."""
    return lora.from_config({k: getattr(self, k) for k in self.keys()})

  def preset_overrides(self) -> dict[str, Any]:
    """The model config fields (`LLaDAConfig`, `DreamConfig`) this section sets on top of its
    preset (not None / "")."""
    return {k: getattr(self, k) for k in _MODEL_OVERRIDES if getattr(self, k) not in (None, "")}


@_frozen
class MeshConfig(_Section):
  data: int
  fsdp: int
  tensor: int
  rules: str
  constrain_rows: bool


@_frozen
class TaskConfig(_Section):
  name: str
  train_file: str
  eval_file: str
  num_numbers: tuple[int, ...]
  number_min: int
  number_max: int
  target_min: int
  target_max: int
  answer_style: str
  target_sampling: str
  solution_order: str
  prompt_style: str
  empty_min: int
  empty_max: int
  graph_degree: int
  arm_min: int
  arm_max: int
  graph_nodes: int
  train_size: int
  eval_size: int
  val_size: int
  sft_extra_fresh: int
  val_file: str


@_frozen
class DataConfig(_Section):
  tokenizer: str
  seq_len: int
  prompt_len: int
  batch_size: int
  pretrain_files: str
  text_key: str


@_frozen
class OptimConfig(_Section):
  lr: float
  schedule: str
  warmup_steps: int
  end_lr_ratio: float
  b1: float
  b2: float
  eps: float
  weight_decay: float
  clip_norm: float
  grad_accum_steps: int
  mask_eps: float
  max_skipped_steps: int
  mu_dtype: str


@_frozen
class TrainConfig(_Section):
  num_steps: int
  max_minutes: float
  log_every: int
  checkpoint_every: int
  keep_checkpoints: int
  async_checkpoint: bool
  eval_every: int
  save_timeout_s: float
  resume_allow: str         # comma-separated keys or sections; `resume_allowed` lists them

  @property
  def resume_allowed(self) -> tuple[str, ...]:
    return tuple(k.strip() for k in self.resume_allow.split(",") if k.strip())


@_frozen
class EvalConfig(_Section):
  sampler: str
  num_problems: int
  batch_size: int
  gen_length: int
  block_length: int
  steps: tuple[int, ...]
  remasking: tuple[str, ...]
  temperature: float
  trajectory_stats: bool
  cache: str
  threshold: float
  cfg_scale: float
  head_chunk: int


@_frozen
class RLConfig(_Section):
  num_updates: int
  prompts_per_update: int
  group_size: int
  top_k: int
  inner_iters: int
  micro_batch: int
  temperature: float
  gen_length: int
  steps: int
  block_lengths: tuple[int, ...]
  remasking: str
  cache: str
  head_chunk: int
  clip_eps: float
  beta: float
  loss_normalisation: str
  prompt_mask_prob: float
  filter: str
  filter_pool_size: int
  filter_refresh_updates: int
  prompt_source: str
  fresh_size: int
  reward_workers: int
  reward_timeout_s: float
  cogrpo_mode: str
  cogrpo_knobs: tuple[str, ...]
  cogrpo_init_std: float
  cogrpo_schedule_lr: float
  cogrpo_rank_temperature: float
  cogrpo_cfg_scale: float


@_frozen
class LoggingConfig(_Section):
  tensorboard: bool
  wandb: bool
  wandb_project: str


@_frozen
class RunConfig(_Section):
  trainer: str
  seed: int
  model: ModelConfig
  mesh: MeshConfig
  task: TaskConfig
  data: DataConfig
  optim: OptimConfig
  train: TrainConfig
  eval: EvalConfig
  rl: RLConfig
  logging: LoggingConfig

  @property
  def is_rl(self) -> bool:
    return self.trainer not in SUPERVISED_TRAINERS

  @property
  def optimizer_steps(self) -> int:
    """Optimiser steps of the whole run (what the learning-rate schedule spans)."""
    return self.rl.num_updates * self.rl.inner_iters if self.is_rl else self.train.num_steps


SECTIONS: dict[str, type] = {
    "model": ModelConfig, "mesh": MeshConfig, "task": TaskConfig, "data": DataConfig,
    "optim": OptimConfig, "train": TrainConfig, "eval": EvalConfig, "rl": RLConfig,
    "logging": LoggingConfig,
}
_TOP_KEYS = ("trainer", "seed")

# ----------------------------------------------------------------------------------------------
# Types: each annotation's converter. A converter returns the typed value or raises ValueError
# with what is allowed (the caller prefixes `<field>=<value>: `).
# ----------------------------------------------------------------------------------------------


def _to_int(v) -> int:
  if isinstance(v, bool):
    raise ValueError("must be an integer, not a bool")
  if isinstance(v, float):
    if v.is_integer():
      return int(v)
    raise ValueError("must be an integer")
  try:
    return operator.index(v)
  except TypeError:
    raise ValueError("must be an integer") from None


def _to_float(v) -> float:
  if isinstance(v, bool) or not isinstance(v, (int, float)):
    raise ValueError("must be a number")
  if not math.isfinite(v):
    raise ValueError("must be a finite number")
  return float(v)


def _to_bool(v) -> bool:
  if not isinstance(v, bool):
    raise ValueError("must be True or False")
  return v


def _to_str(v) -> str:
  if not isinstance(v, str):
    raise ValueError("must be a string")
  return v


def _list_parts(v) -> list:
  """Entries of a list given as a tuple/list or as comma-separated text (text entries of a
  tuple are split too, as on the command line)."""
  if isinstance(v, str):
    v = [v]
  elif not isinstance(v, (tuple, list)):
    raise ValueError("must be a tuple or comma-separated text")
  parts = []
  for item in v:
    parts += ([p.strip() for p in item.split(",") if p.strip()] if isinstance(item, str)
              else [item])
  if not parts:
    raise ValueError("must list at least one entry")
  return parts


def _to_ints(v) -> tuple[int, ...]:
  out, bad = [], []
  for part in _list_parts(v):
    try:
      n = int(part) if isinstance(part, str) and re.fullmatch(r"[+-]?\d+", part) else _to_int(part)
    except ValueError:
      n = None
    (out if n is not None and n >= 1 else bad).append(part if n is None else n)
  if bad:
    raise ValueError(f"entries must be positive integers, got {bad}")
  return tuple(out)


def _to_strs(v) -> tuple[str, ...]:
  parts = _list_parts(v)
  bad = [p for p in parts if not isinstance(p, str)]
  if bad:
    raise ValueError(f"entries must be strings, got {bad}")
  return tuple(parts)


def _optional(convert):
  return lambda v: None if v is None else convert(v)


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "int": _to_int, "float": _to_float, "bool": _to_bool, "str": _to_str,
    "int | None": _optional(_to_int), "float | None": _optional(_to_float),
    "bool | None": _optional(_to_bool),
    "tuple[int, ...]": _to_ints, "tuple[str, ...]": _to_strs,
}

# ----------------------------------------------------------------------------------------------
# Rules: what each key allows on its own. A rule returns None (fine) or what is allowed.
# ----------------------------------------------------------------------------------------------

Rule = Callable[[Any], "str | None"]


def _at_least(low, text: str | None = None) -> Rule:
  return lambda v: None if v >= low else (text or f"must be ≥ {low}")


def _above(low, text: str | None = None) -> Rule:
  return lambda v: None if v > low else (text or f"must be > {low}")


def _within(low, high, *, open_high: bool = False) -> Rule:
  ok = (lambda v: low <= v < high) if open_high else (lambda v: low <= v <= high)
  return lambda v: None if ok(v) else f"must be in [{low}, {high}{')' if open_high else ']'}"


def _one_of(allowed, *, blank: str | None = None) -> Rule:
  """`blank`: what "" means, when "" is allowed too."""
  allowed = tuple(allowed)
  text = f"allowed {allowed}" + (f" or '' ({blank})" if blank else "")
  return lambda v: None if v in allowed or (blank and v == "") else text


def _each_in(allowed, *, unique: bool = False) -> Rule:
  allowed = tuple(allowed)

  def rule(values):
    bad = [v for v in values if v not in allowed]
    if bad or (unique and len(set(values)) != len(values)):
      return (f"entries must come from {allowed}" + (", each at most once" if unique else "")
              + (f"; unknown {bad}" if bad else ""))
    return None
  return rule


def _mesh_axis(v) -> str | None:
  return None if v >= 1 or v == -1 else "must be a positive integer or -1 (use the rest)"


def _trainer(v) -> str | None:
  allowed = trainers()
  return None if v in allowed else f"allowed {allowed}"


_POSITIVE, _NON_NEGATIVE = _at_least(1), _at_least(0)
_PRESET = "the preset's"
_TOP_RULES: dict[str, Rule] = {"trainer": _trainer, "seed": _NON_NEGATIVE}
_RULES: dict[str, dict[str, Rule]] = {
    "model": {
        "family": _one_of(families.NAMES),   # the preset is checked against it (_check_model)
        **{k: _POSITIVE for k in ("d_model", "n_layers", "n_heads", "n_kv_heads",
                                  "mlp_hidden_size", "max_sequence_length")},
        "rope_theta": _above(0),
        "dtype": _one_of(DTYPES, blank=_PRESET), "param_dtype": _one_of(DTYPES, blank=_PRESET),
        "remat": _one_of(REMAT, blank=_PRESET),
        "attention_impl": _one_of(llada._ATTENTION_IMPLS, blank=_PRESET),
        "lora_rank": _at_least(0, "must be an integer ≥ 0 (0 = LoRA off)"),
        "lora_alpha": _above(0),
        "lora_targets": _each_in(lora.TARGETS, unique=True),
    },
    "mesh": {"data": _mesh_axis, "fsdp": _mesh_axis, "tensor": _mesh_axis},
    "task": {   # the task's own keys are checked by its constructor (`_check_task`)
        "name": _one_of(TASKS), "train_size": _POSITIVE,
        **{k: _NON_NEGATIVE for k in ("eval_size", "val_size", "sft_extra_fresh")},
    },
    "data": {k: _POSITIVE for k in ("seq_len", "prompt_len", "batch_size")},
    "optim": {
        "lr": _above(0), "schedule": _one_of(optim_lib.SCHEDULES),
        "warmup_steps": _NON_NEGATIVE, "end_lr_ratio": _within(0, 1),
        "b1": _within(0, 1, open_high=True), "b2": _within(0, 1, open_high=True),
        "eps": _above(0), "weight_decay": _NON_NEGATIVE,
        "clip_norm": _at_least(0, "must be ≥ 0 (0 = off)"), "grad_accum_steps": _POSITIVE,
        "max_skipped_steps": _POSITIVE,
        "mask_eps": lambda v: None if 0 < v < 1 else "must be in (0, 1)",
        "mu_dtype": _one_of(optim_lib.MU_DTYPES, blank="the parameters' dtype"),
    },
    "train": {
        **{k: _POSITIVE for k in ("num_steps", "log_every", "checkpoint_every",
                                  "keep_checkpoints")},
        "max_minutes": _at_least(0, "must be ≥ 0 (0 = no limit)"),
        "save_timeout_s": _above(0),
        "eval_every": _at_least(0, "must be ≥ 0 (0 = only at the end)"),
    },
    "eval": {
        **{k: _POSITIVE for k in ("num_problems", "batch_size", "gen_length", "block_length")},
        "remasking": _each_in(sampler.REMASKING), "temperature": _NON_NEGATIVE,
        "sampler": _one_of(fhs.SAMPLERS), "cache": _one_of(sampler.CACHES),
        "threshold": _within(0, 1),
        "cfg_scale": _at_least(0, "must be ≥ 0 (unsupervised CFG weight w; 0 = no guidance)"),
        "head_chunk": _at_least(0, "must be ≥ 0 (0 = the whole sequence at once)"),
    },
    "rl": {   # applied for RL trainers only
        **{k: _POSITIVE for k in ("num_updates", "prompts_per_update", "top_k", "inner_iters",
                                  "micro_batch", "gen_length", "steps", "filter_pool_size",
                                  "filter_refresh_updates")},
        "group_size": _at_least(2, "group-relative advantages need ≥ 2"),
        "temperature": _above(0, "rollouts must sample (T > 0)"),
        "remasking": _one_of(sampler.REMASKING), "cache": _one_of(sampler.CACHES),
        "head_chunk": _at_least(0, "must be ≥ 0 (0 = the whole sequence at once)"),
        "clip_eps": _within(0, 1, open_high=True), "beta": _NON_NEGATIVE,
        "loss_normalisation": _one_of(mdpo.LOSS_NORMALISATIONS),
        "prompt_mask_prob": _within(0, 1), "filter": _one_of(FILTERS),
        "prompt_source": _one_of(PROMPT_SOURCES), "fresh_size": _NON_NEGATIVE,
        "reward_workers": _at_least(0, "must be ≥ 0 (0 = inline)"),
        "reward_timeout_s": _above(0),
        "cogrpo_mode": _one_of(cogrpo.MODES),
        "cogrpo_knobs": _each_in(schedule_policy.KNOBS, unique=True),
        **{k: _above(0) for k in ("cogrpo_init_std", "cogrpo_schedule_lr",
                                  "cogrpo_rank_temperature", "cogrpo_cfg_scale")},
    },
    "logging": {},
}


def _field(name: str, raw, annotation: str, rule: Rule | None):
  """One key: convert to its type, then apply its rule; errors name `name` and `raw`."""
  try:
    value = _CONVERTERS[annotation](raw)
  except ValueError as e:
    raise ValueError(f"{name}={raw!r}: {e}") from None
  problem = rule(value) if rule is not None and value is not None else None
  if problem:
    raise ValueError(f"{name}={raw!r}: {problem}")
  return value


def _section(name: str, values: Mapping[str, Any], *, rules: bool) -> _Section:
  cls, table = SECTIONS[name], _RULES[name] if rules else {}
  return cls(**{f.name: _field(f"{name}.{f.name}", values[f.name], f.type, table.get(f.name))
                for f in dataclasses.fields(cls)})

# ----------------------------------------------------------------------------------------------
# Cross-checks: keys against each other, on the typed values.
# ----------------------------------------------------------------------------------------------


def _check_model(c: RunConfig) -> None:
  """The preset belongs to `model.family`; LoRA settings; without a Hugging Face checkpoint, also
  the shapes (preset + overrides) and that the LoRA rank fits them (a checkpoint's shapes are
  known only when it is read)."""
  m = c.model
  preset = families.preset(m.family, m.preset)
  lora_cfg = m.lora()
  if m.hf_checkpoint:
    return
  try:
    shapes = dataclasses.replace(preset, **m.preset_overrides())
  except ValueError as e:
    raise ValueError(model_error(e)) from None
  if lora_cfg is not None:
    lora.check_fits(shapes, lora_cfg)


def model_error(e: ValueError) -> str:
  """A model config's error (`LLaDAConfig.d_model=...`) as the config field (`model.d_model`)."""
  text = str(e)
  for family in families.FAMILIES.values():
    text = text.replace(f"{family.config_type.__name__}.", "model.")
  return text


def _check_mesh(c: RunConfig) -> None:
  free = [k for k in ("data", "fsdp", "tensor") if c.mesh[k] == -1]
  if len(free) > 1:
    raise ValueError(f"mesh.{free[1]}=-1: at most one of mesh.data/fsdp/tensor may be -1 "
                     f"(it takes the remaining devices); got -1 for {free}")
  parallel.parse_rules(c.mesh.rules)    # its errors name mesh.rules


def _check_task(c: RunConfig) -> None:
  """The task checks its own keys when built (cheap: no problem is made); then what the run
  needs of it."""
  t = c.task
  tasks_lib.build(t, c.seed)
  if t.name in FILE_TASKS and c.trainer != "pretrain":
    for key in ("train_file", "eval_file"):
      if not t[key]:
        raise ValueError(f"task.{key}='': task.name={t.name!r} with trainer={c.trainer!r} needs "
                         "a JSONL file of records")
  if t.sft_extra_fresh and t.name not in PROCEDURAL_TASKS:
    raise ValueError(f"task.sft_extra_fresh={t.sft_extra_fresh}: fresh problems need a "
                     f"procedural task {PROCEDURAL_TASKS}, got task.name={t.name!r}")


def _check_data(c: RunConfig) -> None:
  accum = c.optim.grad_accum_steps
  if c.data.batch_size % accum:
    raise ValueError(f"optim.grad_accum_steps={accum} must be ≥ 1 and divide "
                     f"data.batch_size={c.data.batch_size}")
  if c.trainer == "pretrain" and not c.data.pretrain_files.strip():
    raise ValueError("data.pretrain_files='': trainer='pretrain' needs comma-separated JSONL / "
                     "ArrayRecord files or generated:NAME (a procedural corpus)")
  if c.trainer == "pretrain" and generated.is_generated(c.data.pretrain_files):
    generated.parse_spec(c.data.pretrain_files)   # its errors name data.pretrain_files


def _check_optim(c: RunConfig) -> None:
  steps, warmup = c.optimizer_steps, c.optim.warmup_steps
  if warmup > steps:
    source = "rl.num_updates × rl.inner_iters" if c.is_rl else "train.num_steps"
    raise ValueError(f"optim.warmup_steps={warmup}: must be in [0, num_steps={steps}] "
                     f"(the run's optimiser steps, {source})")


def _check_resume_allow(c: RunConfig) -> None:
  known = set(SECTIONS) | set(_TOP_KEYS) | set(_flat(c.to_json()))
  bad = [k for k in c.train.resume_allowed if k not in known]
  if bad:
    raise ValueError(f"train.resume_allow={c.train.resume_allow!r}: {bad[0]!r} is not "
                     "a config key or section (e.g. optim.lr, data)")


def _check_family(c: RunConfig) -> None:
  """The autoregressive baseline (`model.family="ar"`): trained from a preset by the supervised
  trainers and decoded by its own sampler; the diffusion samplers and RL are not for it (nor the
  AR decoder for a bidirectional model)."""
  m, ar = c.model, c.model.family == "ar"
  if m.hf_checkpoint and not families.get(m.family).hf_folders:
    raise ValueError(f"model.hf_checkpoint={m.hf_checkpoint}: model.family={m.family!r} has no "
                     "Hugging Face format; allowed: '' (a preset) or model.init_checkpoint")
  if ar and c.trainer not in ("pretrain", "sft"):
    raise ValueError(f"trainer={c.trainer!r}: model.family='ar' (the autoregressive baseline) "
                     "trains with one of ('pretrain', 'sft')")
  if ar != (c.eval.sampler == "ar"):
    allowed = "'ar'" if ar else f"one of {tuple(s for s in fhs.SAMPLERS if s != 'ar')}"
    raise ValueError(f"eval.sampler={c.eval.sampler!r}: with model.family={m.family!r} allowed "
                     f"{allowed} (the AR decoder is for the causal baseline only)")


def _check_eval(c: RunConfig) -> None:
  """Every (steps × remasking) setting is a valid sampler: fails in seconds, not after training."""
  ev = c.eval
  first_hitting = ev.sampler in ("fhs", "ar")   # one token per call: no steps/remasking
  cache_ok = ev.cache == "none" or (ev.sampler == "ar" and ev.cache == "prefix")
  if first_hitting and (not cache_ok or ev.threshold):
    raise ValueError(f"eval.cache={ev.cache!r}, eval.threshold={ev.threshold!r}: fast sampling "
                     "applies to eval.sampler='llada' only (use 'none' and 0 with 'fhs'; 'ar' "
                     "also takes cache='prefix')")
  if first_hitting and ev.head_chunk:
    raise ValueError(f"eval.head_chunk={ev.head_chunk}: eval.sampler={ev.sampler!r} computes "
                     "whole logits; allowed: 0 (head_chunk is for eval.sampler='llada')")
  for steps in (ev.gen_length,) if first_hitting else ev.steps:
    for remasking in ("random",) if first_hitting else ev.remasking:
      try:
        sampler.SamplerConfig(gen_length=ev.gen_length, block_length=ev.block_length,
                              steps=steps, remasking=remasking, temperature=ev.temperature,
                              cache=ev.cache, threshold=ev.threshold or None,
                              cfg_scale=ev.cfg_scale,
                              head_chunk=0 if first_hitting else ev.head_chunk)
      except ValueError as e:
        raise ValueError(str(e).replace("SamplerConfig.", "eval.")) from None


def _rl_rows_per_rollout(c: RunConfig) -> int:
  """Training rows one rollout gives: the algorithm's own count where the registry has it."""
  return int(algorithms.get(c.trainer).rows_per_rollout(c.rl))


def _check_rl(c: RunConfig) -> None:
  """RL trainers only: rollout samplers, prompt source, top-k and micro-batching."""
  if not c.is_rl:
    return
  rl = c.rl
  for block in rl.block_lengths:
    try:
      sampler.SamplerConfig(gen_length=rl.gen_length, block_length=block, steps=rl.steps)
    except ValueError as e:
      raise ValueError(f"rl.block_lengths={rl.block_lengths!r}: block length {block} with "
                       f"rl.gen_length={rl.gen_length}, rl.steps={rl.steps}: "
                       f"{str(e).replace('SamplerConfig.', '')}") from None
  if rl.prompt_source == "fresh":
    if c.task.name not in PROCEDURAL_TASKS:
      raise ValueError(f"rl.prompt_source='fresh': fresh problems need a procedural task "
                       f"{PROCEDURAL_TASKS}, got task.name={c.task.name!r}")
    if rl.fresh_size < 1:
      raise ValueError(f"rl.fresh_size={rl.fresh_size}: must be ≥ 1 with "
                       "rl.prompt_source='fresh'")
  if rl.head_chunk and rl.cache != "none":
    raise ValueError(f"rl.head_chunk={rl.head_chunk}: allowed 0 with rl.cache={rl.cache!r} "
                     "(chunking the LM head needs rl.cache='none')")
  if c.trainer == "cogrpo":
    _check_cogrpo(rl)
  if c.trainer != "mdpo" and rl.loss_normalisation != "example_mean":
    raise ValueError(f"rl.loss_normalisation={rl.loss_normalisation!r}: trainer={c.trainer!r} "
                     "allows 'example_mean' (the option is MDPO's loss reduction)")
  if c.trainer == "mdpo" and rl.top_k > rl.steps:
    raise ValueError(f"rl.top_k={rl.top_k} must be ≤ rl.steps={rl.steps}")
  n_rows = rl.prompts_per_update * rl.group_size * _rl_rows_per_rollout(c)
  if n_rows % rl.micro_batch:
    raise ValueError(f"rl.micro_batch={rl.micro_batch} must divide the {n_rows} training rows "
                     "of an update (prompts_per_update × group_size [× top_k for mdpo])")


def _check_cogrpo(rl: RLConfig) -> None:
  """Co-GRPO's rollouts: one block length (the schedule policy has a fixed step layout) and the
  settings the scheduled sampler supports."""
  if len(rl.block_lengths) != 1:
    raise ValueError(f"rl.block_lengths={rl.block_lengths!r}: trainer='cogrpo' allows one block "
                     "length (the learned schedule is per step of a fixed block layout)")
  for name, allowed in (("remasking", "low_confidence"), ("cache", "none"), ("head_chunk", 0)):
    if getattr(rl, name) != allowed:
      raise ValueError(f"rl.{name}={getattr(rl, name)!r}: trainer='cogrpo' allows {allowed!r} "
                       "(the scheduled sampler)")
  if not rl.cogrpo_knobs and rl.cogrpo_mode != "model_only":
    raise ValueError(f"rl.cogrpo_knobs=(): rl.cogrpo_mode={rl.cogrpo_mode!r} needs at least one "
                     f"knob from {schedule_policy.KNOBS} (or rl.cogrpo_mode='model_only')")


_CROSS_CHECKS = (_check_model, _check_family, _check_mesh, _check_task, _check_data, _check_optim,
                 _check_resume_allow, _check_eval,
                 _check_rl)

# ----------------------------------------------------------------------------------------------
# Keys: plain data, defaults filled in, unknown and missing keys.
# ----------------------------------------------------------------------------------------------


def _plain(raw) -> dict:
  """A ConfigDict, RunConfig or nested Mapping as nested dicts (leaves untouched)."""
  if isinstance(raw, RunConfig):
    return raw.to_json()
  if hasattr(raw, "to_dict") and hasattr(raw, "get"):     # ConfigDict / FrozenConfigDict
    raw = raw.to_dict()
  if not isinstance(raw, Mapping):
    raise ValueError(f"config must be a ConfigDict or a mapping, got {type(raw).__name__}")
  return {k: _plain(v) if isinstance(v, Mapping) or hasattr(v, "to_dict") else v
          for k, v in raw.items()}


def _fill(tree: dict, defaults: dict) -> dict:
  """`tree` with its missing keys (and sections) taken from `defaults`."""
  out = dict(tree)
  for key, default in defaults.items():
    if key not in out:
      out[key] = default
    elif isinstance(default, dict) and isinstance(out[key], dict):
      out[key] = _fill(out[key], default)
  return out


def _check_keys(tree: dict) -> None:
  """Unknown keys (typos) and missing keys are errors that name them."""
  allowed = _TOP_KEYS + tuple(SECTIONS)
  missing = [k for k in allowed if k not in tree]
  for key in tree:
    if key not in allowed:
      raise ValueError(f"unknown config key {key!r}; allowed top-level keys: {', '.join(allowed)}")
  for name, cls in SECTIONS.items():
    section = tree.get(name)
    if name not in tree:
      continue
    if not isinstance(section, dict):
      raise ValueError(f"{name}={section!r}: must be a section (a ConfigDict or mapping)")
    keys = [f.name for f in dataclasses.fields(cls)]
    for key in section:
      if key not in keys:
        raise ValueError(f"unknown config key '{name}.{key}'; allowed keys of {name}: "
                         f"{', '.join(keys)}")
    missing += [f"{name}.{k}" for k in keys if k not in section]
  if missing:
    raise ValueError(f"missing config keys: {', '.join(missing)} (configs/base.py lists every "
                     "key with its default)")

# Keys a resumed run may change: where and how long it runs, what it logs and evaluates, how
# rewards are computed in parallel. The rest change what a step computes (shapes, data, the
# objective) and must match the checkpoint's config unless `train.resume_allow` names them.
RESUME_FREE = ("mesh", "train", "eval", "logging", "model.remat", "rl.num_updates", "rl.cache",
               "rl.head_chunk", "rl.reward_workers", "rl.reward_timeout_s")


def _flat(tree: Mapping, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    out.update(_flat(value, name + ".") if isinstance(value, Mapping) else {name: value})
  return out


def resume_differences(saved_config: RunConfig, config: RunConfig) -> list[str]:
  """`key: saved → now` for every key that differs between the checkpoint's config and this
  run's, except those in RESUME_FREE and `config.train.resume_allow` (names or sections)."""
  free = RESUME_FREE + config.train.resume_allowed
  old, new = _flat(saved_config.to_json()), _flat(config.to_json())
  return [f"{k}: {old[k]!r} → {new[k]!r}" for k in sorted(new)
          if old.get(k) != new[k] and not any(k == f or k.startswith(f + ".") for f in free)]


# ----------------------------------------------------------------------------------------------
# The public entry points.
# ----------------------------------------------------------------------------------------------


def parse(raw, *, defaults=None) -> RunConfig:
  """The typed, validated config of `raw` (a ConfigDict or nested mapping). With `defaults` (same
  shape), keys missing from `raw` are taken from it (configs saved by older runs); otherwise a
  missing key is an error, like an unknown one. Raises ValueError naming the first bad field."""
  tree = _plain(raw)
  if defaults is not None:
    tree = _fill(tree, _plain(defaults))
  _check_keys(tree)
  top = {k: _field(k, tree[k], RunConfig.__dataclass_fields__[k].type, _TOP_RULES[k])
         for k in _TOP_KEYS}
  is_rl = top["trainer"] not in SUPERVISED_TRAINERS
  sections = {name: _section(name, tree[name], rules=name != "rl" or is_rl) for name in SECTIONS}
  config = RunConfig(**top, **sections)
  for check in _CROSS_CHECKS:
    check(config)
  return config


def ensure(config) -> RunConfig:
  """`config` as a RunConfig: passed through when it is one, else parsed."""
  return config if isinstance(config, RunConfig) else parse(config)


def saved(d: Mapping) -> RunConfig:
  """The config saved with a checkpoint (JSON data), keys added since then filled with today's
  defaults from configs/base.py."""
  from configs import base   # the repository's recipes; imported only to read saved runs
  return parse(d, defaults=base.get_config())
