"""Update-efficiency curves: the arithmetic of "updates to reach another run's best", and the
evaluation of a chosen checkpoint step (what `reproduce --curve_every` evaluates)."""
import jax
import numpy as np
import pytest

from configs import countdown_tiny_mdpo
from mdpo_jax.training import checkpoint, curves, evaluation, sft_loop
from run_helpers import tiny_run


def _curve(name, pairs):
  return curves.Curve(name, tuple(curves.Point(u, a, a - 0.01, a + 0.01) for u, a in pairs))


def test_updates_to_reach_and_the_ratio():
  mdpo = _curve("MDPO", [(0, 0.20), (20, 0.22), (40, 0.25), (60, 0.24)])
  grpo = _curve("diffu-GRPO", [(0, 0.20), (20, 0.21), (40, 0.23), (60, 0.23), (80, 0.22)])
  # diffu-GRPO's best 0.23, first at update 40; MDPO first ≥ 0.23 at update 40 → ratio 1.
  assert curves.efficiency(mdpo, grpo) == {"target": 0.23, "slow_updates": 40,
                                           "fast_updates": 40, "ratio": 1.0}
  faster = _curve("MDPO", [(0, 0.20), (10, 0.235), (40, 0.25)])
  assert curves.efficiency(faster, grpo)["ratio"] == 4.0
  never = _curve("MDPO", [(0, 0.20), (40, 0.22)])
  assert curves.efficiency(never, grpo)["fast_updates"] is None
  assert curves.efficiency(never, grpo)["ratio"] is None
  assert curves.updates_to_reach(mdpo, 0.0) == 0
  assert curves.efficiency(grpo, _curve("x", [(0, 0.1), (5, 0.2)]))["ratio"] == float("inf")
  assert curves.Curve.from_json(mdpo.to_json()) == mdpo
  table = curves.curve_lines([mdpo, grpo]).splitlines()
  assert table[0] == "| updates | MDPO | diffu-GRPO |" and len(table) == 2 + 5
  assert table[-1].startswith("| 80 | — | 0.220 [0.210, 0.230]")
  with pytest.raises(ValueError, match="ascending"):
    _curve("bad", [(20, 0.1), (0, 0.2)])


def test_pooled_curves_count_every_seeds_problems():
  a = _curve("MDPO", [(0, 0.20), (20, 0.25), (40, 0.30)])
  b = _curve("MDPO", [(0, 0.10), (20, 0.15)])       # a shorter run: only the common updates
  pooled = curves.pool([a, b], problems_each=200)
  assert [p.update for p in pooled.points] == [0, 20]
  # update 20: 50 + 30 of 400 problems.
  assert pooled.points[1].accuracy == 80 / 400
  assert (pooled.points[1].ci_low, pooled.points[1].ci_high) == evaluation.wilson_interval(80, 400)
  assert pooled.name == "MDPO"


def test_a_chosen_checkpoint_step_is_the_one_evaluated(tmp_path):
  c = tiny_run(countdown_tiny_mdpo.get_config())
  c.trainer = "sft"
  c.train.num_steps, c.train.checkpoint_every, c.train.keep_checkpoints = 4, 2, 3
  c.task.eval_size = 0   # no end-of-run evaluation: this is about which checkpoint is read
  sft_loop.train(c, tmp_path)
  ckpts = tmp_path / "checkpoints"
  assert checkpoint.saved_steps(ckpts) == [2, 4]
  at = {s: evaluation.load_checkpoint(c, checkpoint=str(ckpts), step=s).params for s in (2, 4)}
  latest = evaluation.load_checkpoint(c, checkpoint=str(ckpts)).params
  jax.tree.map(np.testing.assert_array_equal, latest, at[4])
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(at[2]),
                                                      jax.tree.leaves(at[4])))


def test_the_figure_draws_each_curve_through_its_points():
  from mdpo_jax import plots
  a = _curve("MDPO", [(0, 0.2), (20, 0.25)])
  b = _curve("diffu-GRPO", [(0, 0.2), (20, 0.21), (40, 0.22)])
  ax = plots.update_curves_figure([a, b]).axes[0]
  for line, curve in zip(ax.get_lines(), (a, b)):
    assert line.get_label() == curve.name
    np.testing.assert_array_equal(line.get_xydata(),
                                  [(p.update, p.accuracy) for p in curve.points])
