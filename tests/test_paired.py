"""The paired gain: Newcombe's interval covers the true difference ~95% of the time, agrees with the
normal-approximation interval at large n, and McNemar's p is the exact binomial tail."""

import math

import numpy as np
import pytest

from mdpo_jax.training import paired


def _counts(before, after):
  b, a = np.asarray(before, bool), np.asarray(after, bool)
  return int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum()), int((~a & ~b).sum())


def test_interval_covers_the_true_difference_95_percent_of_the_time():
  # Joint law of (solved before, solved after): both, after only, before only, neither.
  probs = np.array([0.15, 0.08, 0.05, 0.72])
  truth = probs[1] - probs[2]
  rng = np.random.default_rng(0)
  covered = 0
  trials = 2000
  for counts in rng.multinomial(200, probs, size=trials):
    low, high = paired.difference_interval(*map(int, counts))
    covered += low <= truth <= high
  assert 0.935 <= covered / trials <= 0.965, covered / trials


def test_large_samples_agree_with_the_wald_interval_of_the_paired_difference():
  rng = np.random.default_rng(1)
  draws = rng.multinomial(1, [0.2, 0.1, 0.06, 0.64], size=200_000).argmax(1)
  before = np.isin(draws, (0, 2))
  after = np.isin(draws, (0, 1))
  g = paired.paired_gain(before, after)
  n = before.size
  d = after.astype(float) - before.astype(float)   # per-problem differences
  half = 1.96 * d.std() / math.sqrt(n)
  assert g.gain == pytest.approx(d.mean(), abs=1e-12)
  assert g.low == pytest.approx(d.mean() - half, abs=2e-4)
  assert g.high == pytest.approx(d.mean() + half, abs=2e-4)


def test_swapping_the_models_negates_the_interval():
  rng = np.random.default_rng(2)
  before, after = rng.random(300) < 0.3, rng.random(300) < 0.4
  g, r = paired.paired_gain(before, after), paired.paired_gain(after, before)
  assert (g.low, g.high) == pytest.approx((-r.high, -r.low))
  assert (g.gained, g.lost) == (r.lost, r.gained)


def test_paired_interval_is_narrower_than_the_unpaired_overlap_when_errors_correlate():
  # 1000 problems: 210 solved by both, 30 only after, none lost. Separate Wilson intervals
  # overlap; the paired interval excludes zero.
  before = np.zeros(1000, bool)
  before[:210] = True
  after = before.copy()
  after[210:240] = True
  g = paired.paired_gain(before, after)
  assert g.gain == pytest.approx(0.03)
  assert 0 < g.low < 0.03 < g.high
  from mdpo_jax.training.evaluation import wilson_interval
  assert wilson_interval(240, 1000)[0] < wilson_interval(210, 1000)[1]   # they overlap


def test_mcnemar_p_is_the_exact_two_sided_binomial_tail():
  before = np.array([1] * 10 + [0] * 5 + [1] * 3 + [0] * 82, bool)
  after = np.array([1] * 10 + [1] * 5 + [0] * 3 + [0] * 82, bool)
  g = paired.paired_gain(before, after)
  assert _counts(before, after) == (10, 5, 3, 82)
  assert (g.gained, g.lost) == (5, 3)
  tail = sum(math.comb(8, k) for k in range(0, 4)) / 2 ** 8   # P(X <= 3), X ~ Bin(8, 1/2)
  assert g.p_value == pytest.approx(min(1.0, 2 * tail))
  assert paired.paired_gain(before, before).p_value == 1.0


def test_unpaired_shapes_are_refused():
  with pytest.raises(ValueError, match="equal 1-D shapes"):
    paired.paired_gain([True, False], [True])
