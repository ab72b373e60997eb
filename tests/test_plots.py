"""The pictures' data (`mdpo_jax.plots`) against values worked out by hand or computed here
independently, from hand-built trajectories and metrics, plus the real sampler's record; PNG smoke
checks; the CLI flag checks."""

import json
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from mdpo_jax import generate as generate_cli   # defines --plot in this process
from mdpo_jax import plots
from mdpo_jax.data import tokenizer as tokenizer_lib
from mdpo_jax.sampling.sampler import SamplerConfig, Trajectory, generate

M = 9   # the mask id of the hand-built trajectory
N = np.nan


def _hand_trajectory():
  """Two rows, prompt length 2, five generated positions, four steps.

  Row 0 (RCR-like): step 0 commits g0 (token 5, conf .9) and g2 (6, .4); step 1 commits g1
  (7, .8) and takes g2 back; step 2 commits g2 again (8, .7) and g3 (3, .6); step 3 commits g4
  (4, .5). Row 1 (one left-padding id 0): g4, g3 at step 0, then g2, g1, g0 one per step.
  Confidences at positions not committed are filler values that must never be shown.
  """
  x = np.array([
      [[1, 2, M, M, M, M, M], [0, 2, M, M, M, M, M]],
      [[1, 2, 5, M, 6, M, M], [0, 2, M, M, M, 1, 2]],
      [[1, 2, 5, 7, M, M, M], [0, 2, M, M, 3, 1, 2]],
      [[1, 2, 5, 7, 8, 3, M], [0, 2, M, 4, 3, 1, 2]],
  ])
  final = np.array([[1, 2, 5, 7, 8, 3, 4], [0, 2, 5, 4, 3, 1, 2]])
  committed = np.zeros(x.shape, bool)
  for t, row, g in [(0, 0, 0), (0, 0, 2), (1, 0, 1), (2, 0, 2), (2, 0, 3), (3, 0, 4),
                    (0, 1, 3), (0, 1, 4), (1, 1, 2), (2, 1, 1), (3, 1, 0)]:
    committed[t, row, 2 + g] = True
  conf = np.full(x.shape, 0.01, np.float32) + np.arange(7) * 0.001   # filler
  for t, row, g, c in [(0, 0, 0, .9), (0, 0, 2, .4), (1, 0, 1, .8), (2, 0, 2, .7), (2, 0, 3, .6),
                       (3, 0, 4, .5), (0, 1, 3, .35), (0, 1, 4, .45), (1, 1, 2, .55),
                       (2, 1, 1, .65), (3, 1, 0, .75)]:
    conf[t, row, 2 + g] = c
  x0 = np.where(x == M, 0, x)   # not read by the picture
  return Trajectory(x, x0, conf, committed), final


def test_trajectory_picture_matches_hand_worked_values():
  traj, final = _hand_trajectory()
  pic = plots.trajectory_picture(traj, final, prompt_len=2, mask_id=M, row=0)
  np.testing.assert_array_equal(pic.commit_step_TxG, [[0, -1, 0, -1, -1],
                                                      [0, 1, -1, -1, -1],
                                                      [0, 1, 2, 2, -1],
                                                      [0, 1, 2, 2, 3]])
  np.testing.assert_allclose(pic.confidence_TxG, [[.9, N, .4, N, N],
                                                  [.9, .8, N, N, N],
                                                  [.9, .8, .7, .6, N],
                                                  [.9, .8, .7, .6, .5]], rtol=1e-6)
  want_remasked = np.zeros((4, 5), bool)
  want_remasked[1, 2] = True   # g2 unmasked before step 1, masked after it
  np.testing.assert_array_equal(pic.remasked_TxG, want_remasked)
  np.testing.assert_array_equal(pic.tokens_TxG[0], [5, M, 6, M, M])
  np.testing.assert_array_equal(pic.final_G, [5, 7, 8, 3, 4])

  pic1 = plots.trajectory_picture(traj, final, prompt_len=2, mask_id=M, row=1)
  np.testing.assert_array_equal(pic1.commit_step_TxG[-1], [3, 2, 1, 0, 0])
  np.testing.assert_array_equal(pic1.commit_step_TxG[0], [-1, -1, -1, 0, 0])
  assert not pic1.remasked_TxG.any()
  np.testing.assert_allclose(pic1.confidence_TxG[-1], [.75, .65, .55, .35, .45], rtol=1e-6)


def test_trajectory_colours_follow_step_and_confidence():
  traj, final = _hand_trajectory()
  rgb = plots.trajectory_rgb(plots.trajectory_picture(traj, final, prompt_len=2, mask_id=M))
  np.testing.assert_allclose(rgb[0, 1], plots._MASKED_RGB)
  # Same step (0), higher confidence → further from white; different steps → different hues.
  assert (1 - rgb[0, 0]).sum() > (1 - rgb[0, 2]).sum()
  assert not np.allclose(rgb[3, 0], rgb[3, 4])


V = 15   # the character tokenizer below: 11 characters + BOS, EOS, EOT, MASK


def _toy_forward(params, tokens_BxL, attention_mask=None):
  """A stand-in network (compiles in a fraction of a transformer's time): fixed logits per
  position, shifted by the token left of each position, so confidences differ across positions
  and steps."""
  del attention_mask
  return params["w_LxV"][None] + 2.0 * jax.nn.one_hot(jnp.roll(tokens_BxL, 1, axis=1), V)


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.build_char_tokenizer("abc+*=0123 ")


@pytest.mark.parametrize("remasking", ["rcr"])
def test_trajectory_picture_of_the_real_sampler(tok, remasking):
  """On the scan sampler's record (8 tokens in 4 steps, 2 per step, T = 1): after step t exactly
  2(t+1) positions show a token (RCR follows the schedule too), each the one predicted at the
  step that last committed it (x̂0 there), with the confidence recorded then; the re-mask marks
  are where a token shown before a step is masked after it. Checked with loops over the raw
  record, not the picture's vectorised code."""
  prompt = np.asarray([tok.encode("1+2=").ids, tok.encode("2*3=").ids], np.int32)
  params = {"w_LxV": 0.5 * jax.random.normal(jax.random.key(0), (12, V))}
  sc = SamplerConfig(gen_length=8, block_length=8, steps=4, remasking=remasking,
                     temperature=1.0, mask_id=V - 1, eos_id=V - 3, eot_id=V - 2, vocab_size=V)
  final, traj = generate(_toy_forward, params, prompt, sc, jax.random.key(0),
                         return_trajectory=True)
  final, x, x0 = np.asarray(final), np.asarray(traj.x), np.asarray(traj.x0)
  conf, committed = np.asarray(traj.confidence), np.asarray(traj.committed)
  p, mask = prompt.shape[1], V - 1
  marks = 0
  for row in range(2):
    pic = plots.trajectory_picture(traj, final, prompt_len=p, mask_id=mask, row=row)
    for t in range(4):
      after = x[t + 1, row] if t < 3 else final[row]
      assert (pic.commit_step_TxG[t] >= 0).sum() == 2 * (t + 1)
      for g in range(8):
        assert pic.remasked_TxG[t, g] == (x[t, row, p + g] != mask and after[p + g] == mask)
        marks += int(pic.remasked_TxG[t, g])
        if after[p + g] == mask:
          assert pic.commit_step_TxG[t, g] == -1 and np.isnan(pic.confidence_TxG[t, g])
          continue
        s = max(u for u in range(t + 1) if committed[u, row, p + g])
        assert pic.commit_step_TxG[t, g] == s
        assert pic.tokens_TxG[t, g] == x0[s, row, p + g] == after[p + g]
        assert pic.confidence_TxG[t, g] == conf[s, row, p + g]
  assert marks > 0   # this seed's RCR run takes tokens back, so the marks are exercised


def test_step_correctness_by_hand_and_pooled():
  # Rollouts × steps (the last step is the final answer): r0 right from step 1 on; r1 right at
  # step 0 then lost; r2 never right; r3 right at steps 0-1 then lost.
  right = np.array([[0, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0]], bool)
  c = plots.step_correctness(right, right[:, -1])
  np.testing.assert_allclose(c.right_final_right_T, [0, .25, .25])
  np.testing.assert_allclose(c.right_final_wrong_T, [.5, .25, 0])
  assert (c.n, c.accuracy, c.over_denoised) == (4, .25, .5)
  back = plots.StepCorrectness.from_json(json.loads(json.dumps(c.to_json())))
  np.testing.assert_allclose(back.right_final_wrong_T, c.right_final_wrong_T)
  # Pooled with 2 more rollouts (both right from step 0): 6 rollouts in all.
  d = plots.step_correctness(np.ones((2, 3), bool), np.ones(2, bool))
  pooled = plots.pool([c, d])
  np.testing.assert_allclose(pooled.right_final_right_T, [2 / 6, 3 / 6, 3 / 6])
  np.testing.assert_allclose(pooled.right_final_wrong_T, [2 / 6, 1 / 6, 0])
  assert pooled.n == 6 and math.isclose(pooled.accuracy, 3 / 6)
  assert math.isclose(pooled.over_denoised, 2 / 6)
  with pytest.raises(ValueError, match="same N"):
    plots.step_correctness(right, np.ones(3, bool))


def _write_metrics(path):
  lines = [{"step": 5, "time": 0, "loss": 4.0, "lr": 1e-3},
           {"step": 10, "time": 0, "loss": None, "lr": 1e-3},   # a NaN loss, logged as null
           {"step": 10, "time": 0, "eval/rcr/steps=6/T=0/accuracy": 0.25},
           {"step": 15, "time": 0, "loss": 2.0, "reward/final_mean": 0.5,
            "reward/over_denoised": 0.1},
           {"step": 20, "time": 0, "filter/kept": 3},
           {"step": 20, "time": 0, "eval/rcr/steps=6/T=0/accuracy": 0.5,
            "eval/low_confidence/steps=6/T=0/accuracy": 0.4}]
  path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")


def test_training_curves_from_metrics_jsonl(tmp_path):
  _write_metrics(tmp_path / "metrics.jsonl")
  c = plots.training_curves(plots.read_metrics(tmp_path / "metrics.jsonl"))
  np.testing.assert_array_equal(c.loss[0], [5, 10, 15])
  np.testing.assert_array_equal(c.loss[1], [4.0, np.nan, 2.0])
  np.testing.assert_array_equal(c.reward[0], [15])
  np.testing.assert_array_equal(c.over_denoised[1], [0.1])
  assert sorted(c.accuracy) == ["low_confidence/steps=6/T=0", "rcr/steps=6/T=0"]
  np.testing.assert_array_equal(c.accuracy["rcr/steps=6/T=0"][0], [10, 20])
  np.testing.assert_array_equal(c.accuracy["rcr/steps=6/T=0"][1], [0.25, 0.5])
  with pytest.raises(plots.PlotError, match=r"^metrics file .*nope.jsonl: no such file"):
    plots.read_metrics(tmp_path / "nope.jsonl")
  (tmp_path / "bad.jsonl").write_text("{not json\n")
  with pytest.raises(plots.PlotError, match="cannot read it as JSON lines"):
    plots.read_metrics(tmp_path / "bad.jsonl")


def _png_size(path):
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_pictures_are_written_as_png(tmp_path, tok):
  traj, final = _hand_trajectory()   # its mask id 9 is a character here: use the real one
  traj = traj._replace(x=np.where(traj.x == M, V - 1, traj.x))
  model_cfg = types.SimpleNamespace(mask_token_id=V - 1)
  paths = plots.write_trajectories(str(tmp_path / "t.png"), traj, final, 2, tok, model_cfg,
                                   titles=["row 0", "row 1"])
  assert [p.name for p in paths] == ["t-0.png", "t-1.png"]
  right = np.array([[0, 1, 1], [1, 0, 0]], bool)
  curves = {"before": plots.step_correctness(right, right[:, -1]),
            "after": plots.step_correctness(~right, ~right[:, -1])}
  paths.append(plots.save(plots.over_denoising_figure(curves), tmp_path / "o.png"))
  _write_metrics(tmp_path / "metrics.jsonl")
  c = plots.training_curves(plots.read_metrics(tmp_path / "metrics.jsonl"))
  paths.append(plots.save(plots.training_figure({"SFT": c, "MDPO": {"seed 0": c, "seed 1": c}}),
                          tmp_path / "c.png"))
  for path in paths:
    width, height = _png_size(path)
    assert width > 300 and height > 200


def test_plot_flag_errors_are_one_line(tmp_path):
  ok = str(tmp_path / "out.png")
  assert plots.check_plot_flag({"plot": None, "show_steps": False})
  assert plots.check_plot_flag({"plot": ok, "show_steps": True})
  for values, message in [
      ({"plot": ok, "show_steps": False}, "allowed only with --show_steps"),
      ({"plot": str(tmp_path / "out.jpg"), "show_steps": True}, "ending in .png"),
      ({"plot": str(tmp_path / "no" / "out.png"), "show_steps": True}, "cannot write it")]:
    with pytest.raises(plots.PlotError, match=f"^--plot={values['plot']}: .*{message}"):
      plots.check_plot_flag(values)
  # The generate CLI runs the check while parsing its flags, before any model is loaded.
  flags.FLAGS.unparse_flags()
  try:
    with pytest.raises(ValueError, match="^--plot=.*allowed only with --show_steps"):
      flags.FLAGS(["generate", "--checkpoint=/x", "--prompt=a", f"--plot={ok}"])
  finally:
    flags.FLAGS.unparse_flags()
  assert generate_cli._PLOT.name == "plot"
  (tmp_path / "file").write_text("")
  assert "is a file" in plots.folder_problem(str(tmp_path / "file"))
  assert "cannot write there" in plots.folder_problem(str(tmp_path / "no" / "deeper"))
  assert plots.folder_problem(str(tmp_path / "new")) is None

