"""Every shipped config passes the validation its trainer runs at start-up (typos, bad combos)."""

import importlib
from pathlib import Path

import pytest

from mdpo_jax.models import llada, lora
from mdpo_jax.rl import trainer as rl_trainer
from mdpo_jax.training import evaluation, loop

_CONFIGS = sorted(p.stem for p in (Path(__file__).parents[1] / "configs").glob("*.py")
                  if p.stem not in ("__init__", "base"))


def test_every_recipe_is_covered():
  assert {"countdown_tiny_sft", "countdown_tiny_mdpo", "llada8b_countdown_diffu_grpo"} <= set(
      _CONFIGS)


@pytest.mark.parametrize("name", _CONFIGS)
def test_config_validates(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  assert config.trainer in ("pretrain", "sft", "mdpo", "diffu_grpo")
  if config.trainer in ("mdpo", "diffu_grpo"):
    rl_trainer.validate(config)
  else:
    loop.validate(config)
    evaluation.validate_config(config)
  model = llada.PRESETS[config.model.preset]()
  lora_cfg = lora.from_config(config.model)
  if lora_cfg is not None:
    lora.check_fits(model, lora_cfg)
  # The docstring holds the command that runs it.
  module = importlib.import_module(f"configs.{name}")
  assert f"configs/{name}.py" in module.__doc__
