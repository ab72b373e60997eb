"""mdpo_jax.config: every recipe parses into typed values that round-trip to the same JSON, list
keys read the same from tuples and from command-line text, and each bad value fails with one
line naming the field and the value."""

import copy
import dataclasses
import importlib
import json
import math
from pathlib import Path

import pytest

from configs import base
from mdpo_jax import config as config_lib
from mdpo_jax.models import lora

_RECIPES = sorted(p.stem for p in (Path(__file__).parents[1] / "configs").glob("*.py")
                  if p.stem not in ("__init__", "base"))
# Keys a recipe's docstring says to give on the command line, which validation requires.
_COMMAND_LINE = {"task.train_file": "train.jsonl", "task.eval_file": "eval.jsonl"}


def _recipe(name: str):
  """The recipe's ConfigDict, with the documented command-line files for JSONL tasks."""
  cfg = importlib.import_module(f"configs.{name}").get_config()
  if cfg.task.name in config_lib.FILE_TASKS:
    for key, value in _COMMAND_LINE.items():
      section, field = key.split(".")
      cfg[section][field] = value
  return cfg


def _raw() -> dict:
  """configs/base.py as plain nested dicts (any value can be set: no ConfigDict type lock, as for
  JSON saved by a run)."""
  return copy.deepcopy(base.get_config().to_dict())


def _set(tree: dict, dotted: str, value) -> dict:
  node = tree
  *path, key = dotted.split(".")
  for part in path:
    node = node[part]
  node[key] = value
  return tree


def _with(overrides: dict) -> dict:
  tree = _raw()
  for dotted, value in overrides.items():
    _set(tree, dotted, value)
  return tree


def test_every_recipe_is_covered():
  assert {"countdown_tiny_sft", "countdown_tiny_mdpo", "countdown_tiny_diffu_grpo",
          "llada8b_math500_mdpo"} <= set(_RECIPES)


@pytest.mark.parametrize("name", _RECIPES)
def test_recipe_parses_and_round_trips_to_its_json(name):
  cfg_dict = _recipe(name)
  cfg = config_lib.parse(cfg_dict)
  assert cfg.to_json() == json.loads(cfg_dict.to_json_best_effort())
  assert config_lib.parse(cfg.to_json()) == cfg
  assert config_lib.saved(cfg.to_json()) == cfg
  for value, kind in ((cfg.eval.steps, int), (cfg.rl.block_lengths, int),
                      (cfg.task.num_numbers, int), (cfg.eval.remasking, str),
                      (cfg.model.lora_targets, str)):
    assert isinstance(value, tuple) and value and all(type(v) is kind for v in value)
  assert type(cfg.optim.lr) is float and type(cfg.train.num_steps) is int
  assert type(cfg.logging.wandb) is bool and type(cfg.mesh.rules) is str
  assert cfg.is_rl == (cfg.trainer in config_lib.rl_trainers())
  hash(cfg)   # hashable: usable as a static jit argument


def test_jsonl_recipe_needs_its_files():
  cfg = importlib.import_module("configs.llada8b_math500_mdpo").get_config()
  with pytest.raises(ValueError, match=r"task\.train_file=''"):
    config_lib.parse(cfg)


def test_base_parses_with_its_defaults():
  cfg = config_lib.parse(base.get_config())
  assert cfg.trainer == "sft" and not cfg.is_rl
  assert cfg.optimizer_steps == cfg.train.num_steps == 3000
  assert cfg.task.empty_min == 6 and cfg.task.empty_max == 10 and cfg.mesh.rules == ""
  assert cfg.eval.steps == (48, 12) and cfg.eval.remasking == ("low_confidence", "rcr")
  assert cfg.model.lora() is None


def test_fields_are_exactly_the_keys_of_base_without_defaults():
  raw = base.get_config()
  top = [f.name for f in dataclasses.fields(config_lib.RunConfig)]
  assert set(top) == set(raw.keys())
  for name, cls in config_lib.SECTIONS.items():
    fields = dataclasses.fields(cls)
    assert {f.name for f in fields} == set(raw[name].keys()), name
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               for f in fields), name


@pytest.mark.parametrize("key, text, value", [
    ("eval.steps", "48,12", (48, 12)),
    ("eval.steps", " 48 , 12 ", (48, 12)),
    ("eval.remasking", "low_confidence,rcr", ("low_confidence", "rcr")),
    ("rl.block_lengths", "24", (24,)),
    ("task.num_numbers", "3,4", (3, 4)),
    ("model.lora_targets", "q_proj,v_proj", ("q_proj", "v_proj")),
])
def test_list_keys_read_the_same_from_text_and_tuples(key, text, value):
  section, field = key.split(".")
  extra = {"eval.gen_length": 48, "eval.block_length": 48} if section == "eval" else {}
  from_text = config_lib.parse(_with({key: text, **extra}))
  from_tuple = config_lib.parse(_with({key: value, **extra}))
  from_list = config_lib.parse(_with({key: list(value), **extra}))
  assert from_text[section][field] == from_tuple[section][field] == value
  assert from_list == from_tuple == from_text


def test_numbers_are_typed():
  cfg = config_lib.parse(_with({"optim.lr": 1, "data.batch_size": 64.0, "eval.steps": ("48", 12)}))
  assert type(cfg.optim.lr) is float and cfg.optim.lr == 1.0
  assert type(cfg.data.batch_size) is int and cfg.data.batch_size == 64
  assert cfg.eval.steps == (48, 12)


_MDPO = {"trainer": "mdpo"}
_MATH = {"task.name": "math", "task.train_file": "t.jsonl", "task.eval_file": "e.jsonl"}
# (field, bad value, other overrides): each must fail naming `field=value`.
_BAD = [
    ("trainer", "dpo", {}),
    ("seed", -1, {}),
    ("model.preset", "gpt2", {}),
    ("model.family", "gpt", {}),
    ("model.preset", "llada_8b", {"model.family": "dream"}),   # a preset of another family
    ("model.n_kv_heads", 3, {"model.family": "dream"}),        # must divide n_heads = 4
    ("model.d_model", 130, {}),          # not divisible by n_heads = 4
    ("model.d_model", 12.5, {}),
    ("model.n_layers", True, {}),
    ("model.dtype", "float8", {}),
    ("model.remat", "some", {}),
    ("model.lora_rank", -1, {}),
    ("model.lora_targets", "q_proj,qkv", {}),
    ("model.lora_rank", 4096, {}),       # exceeds the tiny model's fan-in/fan-out
    ("mesh.tensor", 0, {}),
    ("mesh.fsdp", -1, {"mesh.data": -1}),
    ("mesh.rules", "embed=gpu", {}),
    ("task.name", "chess", {}),
    ("task.num_numbers", (3, 9), {}),
    ("task.answer_style", "prose", {}),
    ("task.target_sampling", "uniform", {}),
    ("task.number_max", 0, {}),          # < task.number_min = 1
    ("task.empty_max", 13, {"task.name": "sudoku"}),
    ("task.empty_max", 5, {"task.name": "sudoku"}),   # < task.empty_min = 6
    ("task.prompt_style", "verbose", {"task.name": "sudoku"}),
    ("task.train_size", 0, {}),
    ("task.train_file", "", {"task.name": "gsm8k", "task.eval_file": "e.jsonl"}),
    ("task.sft_extra_fresh", 10, _MATH),
    ("data.seq_len", 0, {}),
    ("data.pretrain_files", "", {"trainer": "pretrain"}),
    ("optim.lr", math.nan, {}),
    ("optim.lr", math.inf, {}),
    ("optim.lr", 0.0, {}),
    ("optim.schedule", "step", {}),
    ("optim.end_lr_ratio", -1, {}),
    ("optim.eps", -1e-8, {}),
    ("optim.b2", 1.0, {}),
    ("optim.weight_decay", -0.1, {}),
    ("optim.clip_norm", -1.0, {}),
    ("optim.mask_eps", 1.0, {}),
    ("optim.grad_accum_steps", 3, {}),   # does not divide data.batch_size = 64
    ("optim.warmup_steps", 5000, {}),    # > train.num_steps = 3000
    ("optim.warmup_steps", 300, _MDPO),  # > rl.num_updates × rl.inner_iters = 200
    ("train.num_steps", 0, {}),
    ("train.max_minutes", -1, {}),
    ("train.keep_checkpoints", 0, {}),
    ("train.async_checkpoint", "yes", {}),
    ("eval.steps", (48, 0), {}),
    ("eval.steps", "48,x", {}),
    ("eval.remasking", "low_confidence,best", {}),
    ("eval.block_length", 7, {}),
    ("eval.num_problems", 0, {}),
    ("eval.temperature", -0.5, {}),
    ("rl.group_size", 1, _MDPO),
    ("rl.top_k", 13, _MDPO),             # > rl.steps = 12
    ("rl.micro_batch", 48, _MDPO),       # does not divide 8 × 16 × 4 rows
    ("rl.micro_batch", 48, {"trainer": "diffu_grpo", "rl.prompts_per_update": 5}),
    ("rl.temperature", 0.0, _MDPO),
    ("rl.block_lengths", (7,), _MDPO),
    ("rl.prompt_source", "fresh", {**_MDPO, **_MATH}),
    ("rl.fresh_size", 0, {**_MDPO, "rl.prompt_source": "fresh"}),
    ("rl.clip_eps", 1.0, _MDPO),
    ("rl.prompt_mask_prob", 1.5, _MDPO),
    ("rl.filter", "best", _MDPO),
    ("rl.reward_timeout_s", 0.0, _MDPO),
    ("rl.top_k", "4", {}),               # types are checked for every trainer
    ("logging.wandb", "yes", {}),
]


@pytest.mark.parametrize("field, value, others", _BAD,
                         ids=[f"{f}={v!r}" for f, v, _ in _BAD])
def test_bad_value_names_field_and_value(field, value, others):
  tree = _with({**others, field: value})
  with pytest.raises(ValueError) as info:
    config_lib.parse(tree)
  message = str(info.value)
  assert f"{field}={value!r}" in message, message
  assert "\n" not in message


def test_the_table_covers_every_section():
  assert {f.split(".")[0] for f, _, _ in _BAD} >= {"trainer", "seed", *config_lib.SECTIONS}


@pytest.mark.parametrize("section, key", [("optim", "learning_rate"), ("rl", "topk")])
def test_unknown_key_is_named_with_the_allowed_ones(section, key):
  tree = _raw()
  tree[section][key] = 1
  with pytest.raises(ValueError, match=rf"unknown config key '{section}\.{key}'; allowed keys of "
                                       rf"{section}: .*\b{next(iter(tree[section]))}\b"):
    config_lib.parse(tree)


def test_unknown_top_level_key():
  with pytest.raises(ValueError, match="unknown config key 'optimizer'"):
    config_lib.parse({**_raw(), "optimizer": {}})


def test_missing_key_is_an_error_unless_defaults_fill_it():
  tree = _raw()
  del tree["task"]["empty_min"], tree["mesh"]["rules"]
  with pytest.raises(ValueError, match=r"missing config keys: .*mesh\.rules.*task\.empty_min"):
    config_lib.parse(tree)
  old_run = json.loads(json.dumps(tree))    # as saved by a run before those keys existed
  cfg = config_lib.saved(old_run)
  assert cfg.task.empty_min == 6 and cfg.mesh.rules == ""
  assert config_lib.parse(tree, defaults=base.get_config()) == cfg
  del tree["logging"]
  assert config_lib.saved(tree).logging.wandb_project == "mdpo_jax"


def test_saved_still_checks_values():
  with pytest.raises(ValueError, match=r"optim\.lr=-1\.0"):
    config_lib.saved(_with({"optim.lr": -1.0}))


def test_frozen():
  cfg = config_lib.parse(base.get_config())
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.optim.lr = 1.0
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.trainer = "mdpo"


def test_rl_cross_checks_only_for_rl_trainers():
  loose = {"rl.top_k": 100, "rl.group_size": 1, "rl.micro_batch": 7, "rl.block_lengths": (7,),
           "rl.temperature": 0.0, "rl.prompt_source": "fresh", **_MATH}
  cfg = config_lib.parse(_with(loose))                  # trainer = sft: the rl section is unused
  assert cfg.rl.top_k == 100 and cfg.rl.block_lengths == (7,)
  with pytest.raises(ValueError, match=r"^rl\."):
    config_lib.parse(_with({**loose, "trainer": "mdpo"}))


def test_optimizer_steps_and_is_rl():
  grpo = config_lib.parse(_recipe("countdown_tiny_diffu_grpo"))
  assert grpo.is_rl and grpo.optimizer_steps == grpo.rl.num_updates * grpo.rl.inner_iters == 100
  sft = config_lib.parse(_recipe("countdown_tiny_sft"))
  assert not sft.is_rl and sft.optimizer_steps == sft.train.num_steps == 2000


def test_lora_and_ensure():
  cfg = config_lib.parse(_recipe("llada8b_countdown_diffu_grpo"))
  lora_cfg = cfg.model.lora()
  assert isinstance(lora_cfg, lora.LoraConfig) and lora_cfg.rank == 128 and lora_cfg.alpha == 64.0
  assert config_lib.ensure(cfg) is cfg
  assert config_lib.ensure(_recipe("llada8b_countdown_diffu_grpo")) == cfg
  assert cfg.model["lora_rank"] == cfg.model.get("lora_rank") == 128   # ConfigDict-style reads


def test_names_agree_with_the_registries():
  tasks = importlib.import_module("mdpo_jax.tasks")
  registry = getattr(tasks, "TASKS", None)
  if isinstance(registry, dict):
    assert set(registry) == set(config_lib.TASKS)
    assert {n for n, cls in registry.items() if getattr(cls, "procedural", False)} == set(
        config_lib.PROCEDURAL_TASKS)
  assert {"mdpo", "diffu_grpo"} <= set(config_lib.rl_trainers())


def test_attention_impl_reaches_the_model_and_bad_values_are_one_line():
  from mdpo_jax.models import llada
  from mdpo_jax.training import setup
  cfg = config_lib.parse(_with({"model.attention_impl": "dot_product_attention"}))
  assert setup.model_config(cfg, setup.make_tokenizer(cfg)).attention_impl == "dot_product_attention"
  with pytest.raises(ValueError) as e:
    config_lib.parse(_with({"model.attention_impl": "flash"}))
  assert str(e.value).startswith("model.attention_impl='flash': allowed ")
  assert all(impl in str(e.value) for impl in llada._ATTENTION_IMPLS) and "\n" not in str(e.value)
