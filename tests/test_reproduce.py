"""The reproduction table pools seeds correctly (counts, Wilson intervals, over-denoising)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from configs import countdown_tiny_sft
from mdpo_jax import reproduce
from mdpo_jax.training import curves, paired


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


def test_runs_from_any_working_directory_and_rejects_a_bad_split(tmp_path):
  """The recipes are an installed package (`configs`), so reproduce starts anywhere: from an
  empty folder it gets as far as flag validation, not an ImportError; a bad --eval_split fails
  there, naming the flag and what is allowed. (One child for both: each costs an interpreter
  and the package's imports, and the flag check does not depend on the folder.)"""
  res = subprocess.run([sys.executable, "-m", "mdpo_jax.reproduce", f"--workdir={tmp_path}",
                        "--eval_split=test"], capture_output=True, text=True, cwd=tmp_path)
  assert res.returncode != 0 and "ModuleNotFoundError" not in res.stderr, res.stderr[-2000:]
  assert "eval_split" in res.stderr and "validation" in res.stderr


def _solved_row(remasking, solved, reward=None):
  solved = list(map(bool, solved))
  acc = sum(solved) / len(solved)
  return {"remasking": remasking, "temperature": 0.0, "tokens_per_step": 8.0, "accuracy": acc,
          "n": len(solved), "mean_reward": acc if reward is None else reward, "solved": solved}


def test_gains_pair_each_seeds_problems_and_pool_the_counts():
  # Seed 0: after gains problems 0-2 and loses 3; seed 1: gains 0, loses nothing.
  before0, after0 = [0, 0, 0, 1, 1, 0, 0, 0], [1, 1, 1, 0, 1, 0, 0, 0]
  before1, after1 = [0, 1, 0, 0], [1, 1, 0, 0]
  results = {0: {"rows": {"SFT start": [_solved_row("low_confidence", before0)],
                          "MDPO": [_solved_row("low_confidence", after0)]}},
             1: {"rows": {"SFT start": [_solved_row("low_confidence", before1)],
                          "MDPO": [_solved_row("low_confidence", after1)]}}}
  text = reproduce.gains_table(results, [0, 1])
  line = [l for l in text.splitlines() if l.startswith("| MDPO")][0]
  # Pooled 2x2 over the 12 problems: both 2, gained 4, lost 1, neither 5.
  low, high = paired.difference_interval(2, 4, 1, 5)
  assert f"{100 * 3 / 12:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]" in line
  assert "(+4/−1, p=0.38)" in line   # 2·P(Bin(5, 1/2) ≤ 1) = 2·6/32
  # Rows cached without per-problem outcomes: no gains table rather than a wrong one.
  del results[1]["rows"]["MDPO"][0]["solved"]
  assert reproduce.gains_table(results, [0, 1]) == ""


def test_partial_credit_tasks_show_the_pooled_mean_reward():
  results = {0: {"rows": {"SFT start": [_solved_row("low_confidence", [1, 0], reward=0.75)]}},
             1: {"rows": {"SFT start": [_solved_row("low_confidence", [1, 1, 0, 0],
                                                    reward=0.6)]}}}
  line = [l for l in reproduce.table(results, [0, 1]).splitlines() if l.startswith("| SFT")][0]
  assert f"r={(0.75 * 2 + 0.6 * 4) / 6:.3f}" in line
  binary = {0: {"rows": {"SFT start": [_solved_row("low_confidence", [1, 0])]}}}
  assert "r=" not in reproduce.table(binary, [0])


def test_curves_report_gives_the_updates_ratio_and_writes_the_curves(tmp_path):
  def curve(name, accs):
    return curves.Curve(name, tuple(curves.Point(u, a, a - 0.02, a + 0.02) for u, a in
                                    zip((0, 20, 40, 60), accs))).to_json()
  results = {0: {"curves": {"MDPO": curve("MDPO", (0.20, 0.25, 0.24, 0.26)),
                            "diffu-GRPO": curve("diffu-GRPO", (0.20, 0.21, 0.24, 0.22))}},
             1: {}}
  text = reproduce.curves_report(tmp_path, results, [0, 1], "50 held-out problems", 50)
  assert "Seed 0" in text and "Seed 1" not in text and "50 held-out problems" in text
  # diffu-GRPO's best (0.24) first comes at update 40; MDPO passes it at 20.
  assert "diffu-GRPO's best 0.240 at update 40; MDPO first reaches it at update 20 (ratio 2.0)" \
      in text
  saved = json.loads((tmp_path / "curves.json").read_text())
  assert saved["0"]["MDPO"] == results[0]["curves"]["MDPO"] and saved["1"] == {}
  assert reproduce.curves_report(tmp_path, {0: {}}, [0], "x", 50) == ""
  # Only a later seed has curves: its curves are the ones reported (and drawn).
  later = reproduce.curves_report(tmp_path, {0: {}, 1: results[0]}, [0, 1], "x", 50)
  assert "Seed 1" in later and "Seed 0" not in later and "ratio 2.0" in later
  assert "Pooled" not in text   # seed 1 has no curves
  # Two seeds with curves: also pooled (100 problems), with its own ratio.
  results[1] = {"curves": {"MDPO": curve("MDPO", (0.20, 0.22, 0.26, 0.24)),
                           "diffu-GRPO": curve("diffu-GRPO", (0.20, 0.20, 0.22, 0.30))}}
  text = reproduce.curves_report(tmp_path, results, [0, 1], "50 held-out problems", 50)
  pooled = text.split("Pooled over seeds [0, 1] (100 problems):")[1]
  # Pooled accuracies: MDPO 0.20, 0.235, 0.25, 0.25; diffu-GRPO 0.20, 0.205, 0.23, 0.26.
  assert "| 60 | 0.250 [" in pooled and "0.260 [" in pooled
  assert "diffu-GRPO's best 0.260 at update 60; MDPO never reaches it." in pooled
  flat = {0: {"curves": {"MDPO": curve("MDPO", (0.20, 0.19, 0.18, 0.17)),
                         "diffu-GRPO": curve("diffu-GRPO", (0.20, 0.19, 0.20, 0.18))}}}
  assert "never improved, so there is no ratio" in reproduce.curves_report(tmp_path, flat, [0],
                                                                             "x", 50)
  flat[0]["curves"]["diffu-GRPO"] = curve("diffu-GRPO", (0.20, 0.21, 0.20, 0.18))
  assert "at update 20; MDPO never reaches it." in reproduce.curves_report(tmp_path, flat, [0],
                                                                            "x", 50)


def test_the_three_recipes_must_pose_one_task():
  from configs import (countdown_tiny_diffu_grpo, countdown_tiny_mdpo, sudoku_tiny_diffu_grpo,
                       sudoku_tiny_mdpo, sudoku_tiny_sft)
  sudoku = (sudoku_tiny_sft.get_config(), sudoku_tiny_mdpo.get_config(),
            sudoku_tiny_diffu_grpo.get_config())
  reproduce.check_task(*sudoku, ["mdpo", "diffu_grpo"])
  assert "Sudoku, 6–10 empty cells" in reproduce.task_line(sudoku[0])
  assert "Countdown, 3 numbers in 1–20" in reproduce.task_line(countdown_tiny_sft.get_config())
  with pytest.raises(ValueError, match=r"different tasks \['sudoku', 'countdown', 'sudoku'\]"):
    reproduce.check_task(sudoku[0], countdown_tiny_mdpo.get_config(), sudoku[2], ["mdpo"])
  # diffu-GRPO's recipe is checked only when that phase runs.
  countdown_grpo = countdown_tiny_diffu_grpo.get_config()
  reproduce.check_task(sudoku[0], sudoku[1], countdown_grpo, ["mdpo", "control"])
  with pytest.raises(ValueError, match=r"different tasks \['sudoku', 'sudoku', 'countdown'\]"):
    reproduce.check_task(sudoku[0], sudoku[1], countdown_grpo, ["mdpo", "diffu_grpo"])
  # The Sudoku baseline is its MDPO recipe with only the trainer's own keys changed.
  mdpo, grpo = sudoku[1].to_dict(), sudoku[2].to_dict()
  assert grpo["trainer"] == "diffu_grpo" and grpo["rl"]["inner_iters"] == 1
  assert grpo["rl"]["beta"] == 0.04 and mdpo["rl"]["beta"] == 0.0
  for key in ("rl", "optim", "task", "model", "data"):
    diff = {k for k in mdpo[key] if mdpo[key][k] != grpo[key][k]}
    assert diff <= {"clip_eps", "inner_iters", "beta"}, (key, diff)


def test_the_settings_line_names_the_rollout_sampler():
  """A table from MDPO trained with another sampler must say so (e.g. RCR at 2 tokens/step)."""
  from configs import countdown_tiny_diffu_grpo, countdown_tiny_mdpo
  mdpo = countdown_tiny_mdpo.get_config()
  mdpo.rl.steps, mdpo.rl.remasking, mdpo.rl.gen_length = 12, "rcr", 24
  line = reproduce._settings_line(mdpo, countdown_tiny_diffu_grpo.get_config(), ["mdpo"])
  assert "rollouts of 24 tokens in 12 steps (rcr)" in line and "diffu-GRPO" not in line
