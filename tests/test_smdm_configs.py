"""SMDM's pretraining recipes: the size ladder (configs/smdm_pretrain.py:SIZE) has SMDM's shapes
and non-embedding parameter counts and its optimiser; the CPU recipe
(configs/countdown_tiny_pretrain.py) keeps SMDM's optimiser settings at the SFT model's shape."""

from pathlib import Path

import pytest
from absl import flags
from ml_collections import config_flags

from configs import countdown_tiny_pretrain, countdown_tiny_sft, smdm_pretrain
from mdpo_jax import cli
from mdpo_jax import config as config_lib
from mdpo_jax.training import optim, setup

CONFIG = Path(__file__).parents[1] / "configs" / "smdm_pretrain.py"
# ML-GSAI/SMDM pretrain/train_mdm.py `model_para_config`: each size's non-embedding parameters in
# millions, as SMDM counted them (the reference; our count comes from LLaDAConfig.num_params).
SMDM_MILLIONS = {
    "6": 6.294784, "19": 18.880896, "34": 33.563136, "48": 47.786688, "66": 65.54944,
    "85": 85.21408, "75": 75.38752, "113": 113.265408, "142": 141.581568, "170": 169.897728,
    "180": 179.856768, "206": 205.550464, "231": 231.24416, "268": 268.469248, "302": 302.027776,
    "336": 335.586304, "472": 471.90656, "551": 550.55744, "571": 571.001728, "629": 629.20832,
    "666": 666.168448, "717": 717.285888, "761": 761.335168, "831": 830.541312, "944": 943.796736,
    "1028": 1027.677952, "1233": 1233.213184, "1476": 1476.487168, "1678": 1677.826048,
    "2121": 2121.39328,
}


def test_the_ladder_is_smdms():
  assert sorted(smdm_pretrain.SIZES) == sorted(f"{s}M" for s in SMDM_MILLIONS)


@pytest.mark.parametrize("size", sorted(SMDM_MILLIONS, key=int))
def test_every_size_parses_and_counts_its_name(size):
  typed = config_lib.parse(smdm_pretrain.get_config(f"{size}M"))
  model_cfg = setup.model_config(typed, setup.make_tokenizer(typed))
  embeddings = 2 * model_cfg.vocab_size * model_cfg.d_model   # input table + untied head
  assert not model_cfg.tie_embeddings
  non_embedding = model_cfg.num_params() - embeddings
  assert non_embedding == round(SMDM_MILLIONS[size] * 1e6)
  assert round(non_embedding / 1e6) == int(size)          # SMDM names sizes by the rounded count
  assert model_cfg.n_kv_heads == model_cfg.n_heads and model_cfg.head_dim % 2 == 0
  assert (typed.data.seq_len, typed.data.batch_size, model_cfg.max_sequence_length) == \
      (2048, 256, 2048)
  assert typed.data.batch_size % typed.optim.grad_accum_steps == 0


def test_smdm_optimiser_and_step_budget():
  """README example `--model 170 --flops 10`: steps = FLOPs / (6·N·256·2048), warm-up
  max(steps/100, 100), lr 2e-4 → 2e-5 cosine, betas (0.9, 0.95), wd 0.1, clip 1.0."""
  typed = config_lib.parse(smdm_pretrain.get_config("170M,10"))
  n = SMDM_MILLIONS["170"] * 1e6
  assert typed.train.num_steps == int(10e18 / (6 * n * 256 * 2048)) == 18710
  assert typed.optim.warmup_steps == 187
  o = typed.optim
  assert (o.lr, o.b1, o.b2, o.weight_decay, o.clip_norm, o.eps) == (2e-4, 0.9, 0.95, 0.1, 1.0,
                                                                    1e-8)
  schedule = optim.learning_rate_schedule(o, typed.train.num_steps)
  assert float(schedule(0)) == 0.0
  assert float(schedule(187)) == pytest.approx(2e-4, rel=1e-6)
  assert float(schedule(18710)) == pytest.approx(2e-5, rel=1e-4)
  # SMDM's micro-batch rule for 8 GPUs: 8 rows per device from 50M to 1B → 32 / 8 = 4 steps
  assert typed.optim.grad_accum_steps == 4
  assert (config_lib.parse(smdm_pretrain.get_config("6M")).optim.grad_accum_steps,
          config_lib.parse(smdm_pretrain.get_config("1028M")).optim.grad_accum_steps) == (1, 8)


@pytest.mark.parametrize("arg, message", [
    ("999M", "size '999M' is not SMDM's; allowed 6M, 19M"),
    ("170M,lots", "FLOPS 'lots' must be a number > 0"),
    ("6M,0.001", "1e+15 FLOPs give 50 steps of 256×2048 tokens, fewer than SMDM's 100 warm-up"),
])
def test_a_bad_argument_is_one_line_from_the_cli(arg, message):
  """`--config=configs/smdm_pretrain.py:ARG` through the CLIs' flag parsing: one line."""
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
  argv = ["train", f"--config={CONFIG}:{arg}"]
  with pytest.raises(flags.Error) as e:
    values(argv)
  line = cli._flag_error(e.value, argv)
  assert line.startswith(f"--config=configs/smdm_pretrain.py:{arg}: ") and message in line
  assert "\n" not in line


def test_the_cpu_recipe_keeps_smdms_optimiser_at_the_sft_shape():
  pre = config_lib.parse(countdown_tiny_pretrain.get_config())
  sft = config_lib.parse(countdown_tiny_sft.get_config())
  o = pre.optim
  assert (pre.trainer, pre.data.pretrain_files) == ("pretrain", "generated:countdown_arithmetic")
  assert (o.b1, o.b2, o.weight_decay, o.clip_norm, o.eps, o.schedule, o.end_lr_ratio) == \
      (0.9, 0.95, 0.1, 1.0, 1e-8, "cosine", 0.1)
  assert o.warmup_steps == max(pre.train.num_steps // 100, 100)
  # SFT starts from this checkpoint: same tokenizer and model shape
  assert pre.model == sft.model and pre.data.tokenizer == sft.data.tokenizer
