"""The reproduction table pools seeds correctly (counts, Wilson intervals, over-denoising)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from configs import countdown_tiny_sft
from mdpo_jax import reproduce


def _row(remasking, temperature, acc, n, over=0.0):
  return {"remasking": remasking, "temperature": temperature, "tokens_per_step": 4.0,
          "accuracy": acc, "n": n, "over_denoised": over}


def test_table_pools_seeds_with_wilson_intervals():
  results = {
      0: {"rows": {"SFT start": [_row("low_confidence", 0.0, 0.25, 100, 0.10),
                                 _row("rcr", 0.0, 0.30, 100)]}},
      1: {"rows": {"SFT start": [_row("low_confidence", 0.0, 0.35, 100, 0.20),
                                 _row("rcr", 0.0, 0.40, 100)]}},
  }
  text = reproduce.table(results, [0, 1])
  line = [l for l in text.splitlines() if l.startswith("| SFT start")][0]
  cells = [c.strip() for c in line.strip("|").split("|")]
  # Pooled: 60/200 and 70/200; Wilson 95% interval computed here independently.
  for cell, k in zip(cells[1:3], (60, 70)):
    p, n, z = k / 200, 200, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert cell == f"{p:.3f} [{centre - half:.3f}, {centre + half:.3f}]"
  assert cells[3] == "0.150"  # mean over-denoising rate of the greedy low-confidence rows


def test_phases_are_validated():
  assert reproduce.check_phases(["mdpo"]) == ["mdpo"]
  with pytest.raises(ValueError, match="unknown.*'grpo'"):
    reproduce.check_phases(["mdpo", "grpo"])
  with pytest.raises(ValueError, match="control.*needs mdpo"):
    reproduce.check_phases(["control"])
  with pytest.raises(ValueError, match="control.*needs mdpo"):
    reproduce.check_phases(["diffu_grpo", "control_fresh"])
  assert reproduce.check_phases(["mdpo", "control_fresh"]) == ["mdpo", "control_fresh"]


def test_recipe_overrides_and_validation_split_reach_every_run():
  # config_flags defines its override flags from sys.argv when the module is imported, as on
  # the command line, so the flags are parsed in a fresh interpreter.
  argv = ["reproduce", "--workdir=/tmp/x", "--mdpo_config.optim.lr=0.0003",
          "--mdpo_config.rl.prompt_source=fresh", "--sft_config.optim.lr=0.001",
          "--eval_split=validation", "--eval_problems=700", "--rl_updates=40",
          "--curve_every=20"]
  script = (
      "import json, sys\n"
      f"sys.argv = {argv!r}\n"
      "from absl import flags\n"
      "from mdpo_jax import reproduce\n"
      "flags.FLAGS(sys.argv)\n"
      "sft, mdpo, grpo = reproduce._configs(3)\n"
      "mdpo.optim.lr = -1.0\n"  # edits of one run's copy must not reach the next call's
      "again = reproduce._configs(3)[1]\n"
      "print(json.dumps([c.to_dict() for c in (sft, again, grpo)], default=str))\n")
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       cwd=Path(__file__).parents[1], check=True).stdout
  sft, mdpo, grpo = json.loads(out.strip().splitlines()[-1])
  assert (sft["seed"], mdpo["seed"], grpo["seed"]) == (3, 3, 3)
  assert mdpo["optim"]["lr"] == 3e-4 and mdpo["rl"]["prompt_source"] == "fresh"
  assert sft["optim"]["lr"] == 1e-3
  assert mdpo["rl"]["num_updates"] == 40
  assert grpo["rl"]["num_updates"] == 40 // grpo["rl"]["inner_iters"]
  # --curve_every: every 20th update's checkpoint is kept (40 / 20 + 2 ≥ the 2 saved + final)
  for c in (mdpo, grpo):
    assert c["train"]["checkpoint_every"] == 20
    assert c["train"]["keep_checkpoints"] == c["rl"]["num_updates"] // 20 + 2
  assert sft["train"]["checkpoint_every"] == countdown_tiny_sft.get_config().train.checkpoint_every
  # The validation split grows to the evaluated size in every run, so RL's fresh prompts
  # (generated after it) never include a problem the table is measured on.
  assert sft["task"]["val_size"] == mdpo["task"]["val_size"] == grpo["task"]["val_size"] == 700
  bad = subprocess.run([sys.executable, "-m", "mdpo_jax.reproduce", "--workdir=/tmp/x",
                        "--eval_split=test"], capture_output=True, text=True,
                       cwd=Path(__file__).parents[1])
  assert bad.returncode != 0 and "eval_split" in bad.stderr and "validation" in bad.stderr


def test_runs_from_any_working_directory(tmp_path):
  """The recipes are an installed package (`configs`), so reproduce starts anywhere: from an
  empty folder it gets as far as flag validation (a bad --eval_split), not an ImportError."""
  res = subprocess.run([sys.executable, "-m", "mdpo_jax.reproduce", f"--workdir={tmp_path}",
                        "--eval_split=test"], capture_output=True, text=True, cwd=tmp_path)
  assert res.returncode != 0 and "ModuleNotFoundError" not in res.stderr, res.stderr[-2000:]
  assert "eval_split" in res.stderr
