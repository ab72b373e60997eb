"""Every shipped recipe passes the one validation (`mdpo_jax.config.parse`) and documents the
command that runs it."""

import importlib
from pathlib import Path

import pytest

from mdpo_jax import config as config_lib
from mdpo_jax.models import families, lora

_CONFIGS = sorted(p.stem for p in (Path(__file__).parents[1] / "configs").glob("*.py")
                  if p.stem not in ("__init__", "base"))


def test_every_recipe_is_covered():
  assert {"countdown_tiny_sft", "countdown_tiny_mdpo", "llada8b_countdown_diffu_grpo",
          "sudoku_tiny_sft", "sudoku_tiny_mdpo", "llada8b_gsm8k_mdpo",
          "llada8b_math500_mdpo", "dream7b_countdown_mdpo"} <= set(_CONFIGS)


@pytest.mark.parametrize("name", _CONFIGS)
def test_config_validates(name):
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config()
  if config.task.name in config_lib.FILE_TASKS:   # the data files are given on the command line
    assert "--config.task.train_file=" in module.__doc__
    config.task.train_file, config.task.eval_file = "train.jsonl", "eval.jsonl"
  typed = config_lib.parse(config)
  assert typed.trainer in config_lib.trainers()
  lora_cfg = typed.model.lora()
  if lora_cfg is not None:
    lora.check_fits(families.preset(typed.model.family, typed.model.preset), lora_cfg)
  assert f"configs/{name}.py" in module.__doc__   # the docstring holds the command that runs it


def test_dream_recipe_selects_the_dream_family():
  typed = config_lib.parse(importlib.import_module("configs.dream7b_countdown_mdpo").get_config())
  assert (typed.model.family, typed.model.preset, typed.trainer) == ("dream", "dream_7b", "mdpo")
  assert families.preset(typed.model.family, typed.model.preset).num_params() > 7e9
