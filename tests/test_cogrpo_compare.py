"""The Co-GRPO comparison (mdpo_jax/cogrpo_compare.py, training/cogrpo_eval.py): a learned
schedule's evaluation against the plain sampler's (independent path), the efficiency summary,
and one-line errors for bad flags."""

import dataclasses

import jax
import numpy as np
import pytest

from configs import countdown_tiny_cogrpo
from mdpo_jax import cogrpo_compare, tasks
from mdpo_jax import config as config_lib
from mdpo_jax.models import llada
from mdpo_jax.rl import schedule_policy as sp
from mdpo_jax.training import cogrpo_eval, evaluation, setup
from run_helpers import digit_share, tiny_run


@pytest.fixture(scope="module")
def tiny():
  """A tiny random model (peaked predictions: no near-ties) on Countdown's tokenizer, 12 held-out
  problems, 12 tokens in one block, batches of 8 (so one batch is padded)."""
  c = tiny_run(countdown_tiny_cogrpo.get_config())
  c.eval.gen_length, c.eval.block_length, c.eval.batch_size = 12, 12, 8
  c.task.eval_size = 12
  config = config_lib.parse(c)
  tokenizer = setup.make_tokenizer(config)
  model_cfg = dataclasses.replace(setup.model_config(config, tokenizer), init_std=0.3)
  params = llada.init_params(model_cfg, jax.random.key(3))
  task = tasks.build(config.task, config.seed)
  return config, model_cfg, params, tokenizer, task, task.held_out()[:12]


def test_hand_phi_argmax_matches_the_plain_greedy_evaluation(tiny):
  """φ = the hand schedule (`from_hand_schedule`), argmax decoding: the same completions, in the
  same order, hence the same accuracy and mean reward as `evaluation.evaluate_task` at T = 0."""
  config, model_cfg, params, tokenizer, task, problems = tiny
  seen_plain, seen_learned, steps = [], [], 3

  def recorder(seen):
    def reward(completion, problem):
      seen.append(completion)
      return digit_share(completion, problem)
    return reward
  spec = sp.ScheduleSpec(12, 12, steps, temperature=0.5)
  phi = sp.from_hand_schedule(spec, 0.3)
  task.reward = recorder(seen_plain)
  plain = evaluation.evaluate_task(config, model_cfg, params, tokenizer, task, problems,
                                   [evaluation.Setting(steps, "low_confidence", 0.0)],
                                   progress=False)[0]
  task.reward = recorder(seen_learned)
  row = cogrpo_eval.evaluate_schedule(config, model_cfg, params, tokenizer, task, problems, spec,
                                      phi, "argmax", progress=False)
  assert len(seen_plain) == len(problems) and seen_learned == seen_plain
  assert len(set(seen_plain)) > 1                      # the completions differ between prompts
  for key in ("n", "accuracy", "ci_low", "ci_high", "mean_reward", "steps", "tokens_per_step"):
    assert row[key] == plain[key], key
  assert row["schedule"]["counts"] == spec.hand_counts().tolist()
  assert row["schedule"]["rank_temperature"] is None   # argmax: the plain confidence ranking


def test_a_learned_schedule_is_what_the_row_reports(tiny):
  """A φ moved off the hand schedule commits its own counts (one decoding that changes the
  completions), and `as_learned` reports φ's mode knob by knob."""
  config, model_cfg, params, tokenizer, task, problems = tiny
  spec = sp.ScheduleSpec(12, 12, 3, temperature=0.5)
  phi = sp.from_hand_schedule(spec, 0.3)
  phi["mean_SxK"] = phi["mean_SxK"].at[0, 0].set(-3.0)   # commit share sigmoid(-3): 1 of 12
  task.reward = digit_share
  row = cogrpo_eval.evaluate_schedule(config, model_cfg, params, tokenizer, task, problems, spec,
                                      phi, "as_learned", progress=False)
  counts = row["schedule"]["counts"]
  assert counts[0] == 1 and sum(counts) == 12
  assert row["schedule"]["temperature"] == pytest.approx([0.5] * 3, abs=1e-6)
  assert row["schedule"]["rank_temperature"] == pytest.approx([0.05] * 3, abs=1e-6)


def test_hand_steps_matching_and_best_row():
  sweep = [{"steps": s, "accuracy": a} for s, a in ((3, 0.2), (6, 0.4), (12, 0.5), (24, 0.6))]
  assert cogrpo_compare.hand_steps_matching(sweep, 0.4) == 6
  assert cogrpo_compare.hand_steps_matching(sweep, 0.45) == 12
  assert cogrpo_compare.hand_steps_matching(sweep, 0.7) is None
  runs = {"joint": {"rows": [{"accuracy": 0.3, "decoding": "as_learned"},
                             {"accuracy": 0.3, "decoding": "argmax"}]},
          "model_only": {"rows": [{"accuracy": 0.25, "decoding": "argmax"}]}}
  mode, row = cogrpo_compare.best_learned({"runs": runs})
  assert (mode, row["decoding"]) == ("joint", "argmax")


@pytest.mark.parametrize("task,ckpt,modes,steps,want", [
    ("chess", "DIR", ["joint"], ["3"], "--task=chess: allowed one of"),
    ("countdown", "/nonexistent/ckpt", ["joint"], ["3"], "--sft_checkpoint=/nonexistent/ckpt"),
    ("countdown", None, ["joint"], ["3"], "--sft_checkpoint=None"),
    ("countdown", "DIR", ["both"], ["3"], "--modes=both: allowed"),
    ("sudoku", "DIR", ["joint"], ["5"], "--hand_steps=5: allowed"),
    ("countdown", "DIR", ["joint"], ["x"], "--hand_steps=x: allowed")])
def test_bad_flags_are_one_line_errors(tmp_path, task, ckpt, modes, steps, want):
  ckpt = str(tmp_path) if ckpt == "DIR" else ckpt
  with pytest.raises((ValueError, FileNotFoundError)) as e:
    cogrpo_compare.check_inputs(task, ckpt, modes, steps, "held_out", 8)
  assert "\n" not in str(e.value) and str(e.value).startswith(want), str(e.value)


def test_good_flags_pass(tmp_path):
  assert cogrpo_compare.check_inputs("countdown", str(tmp_path), ["joint", "schedule_only"],
                                     ["3", "24"], "validation", 8) == [3, 24]


def test_a_folder_without_a_checkpoint_is_a_one_line_error(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    cogrpo_compare.check_sft_run("countdown", str(tmp_path), None)
  assert "\n" not in str(e.value) and str(e.value).startswith(f"--sft_checkpoint={tmp_path}: ")
