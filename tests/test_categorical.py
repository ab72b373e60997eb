"""Tests for mdpo_jax.sampling.categorical: untruncated Gumbel noise and the categorical sampler.

Statistical tests use fixed seeds and thresholds stated next to each assertion. Critical values of
chi-square are hard-coded (no scipy dependency): ``_CHI2_999[df] = scipy.stats.chi2.ppf(0.999, df)``.

Why the decisive test is split in two. The naive float32 noise differs from exact Gumbel noise only
on events of probability ~2**-23 per draw, so any *sampling* test that rejects it needs on the
order of 1e9 noise draws (measured: 1.6e9 draws per sampler for a 6.8-sigma separation), i.e.
minutes on a 2-core CPU. So:
  * `test_noise_tail_probabilities_are_exact` (always run, < 1 s) computes the *exact* distribution
    of our noise: the word -> Gumbel map is monotone, so bisection over the 2**64 words gives the
    exact number of words with g > x. It must match 2**64 * P(G > x) to 1e-6 relative out to
    x = 40 (P ~ 4e-18) and in the lower tail; the naive noise (all 2**23 float32 uniforms
    enumerated) fails the same check by a factor of 0 (upper) or ~60 (lower).
  * `test_minor_mass_sampling` draws samples end to end through `sample_categorical` at a
    configuration cheap enough for CI (gap 10, per-token probability 4.5e-5) and checks ours.
    The full-scale sampling run where the naive sampler is rejected (1.6e9 draws, ~3 minutes) is
    `benchmarks/categorical_tail.py`; measured there: ours 73, naive 13, expected 66.6 ± 8.2.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mdpo_jax.sampling import categorical as cat
from mdpo_jax.sampling.categorical import (
    filter_logits,
    gumbel_noise,
    naive_gumbel_noise,
    sample_categorical,
)

# scipy.stats.chi2.ppf(0.999, df), df = 1..30.
_CHI2_999 = {
    1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515, 6: 22.458, 7: 24.322, 8: 26.124,
    9: 27.877, 10: 29.588, 11: 31.264, 12: 32.909, 13: 34.528, 14: 36.123, 15: 37.697,
    16: 39.252, 17: 40.79, 18: 42.312, 19: 43.82, 20: 45.315, 21: 46.797, 22: 48.268,
    23: 49.728, 24: 51.179, 25: 52.62, 26: 54.052, 27: 55.476, 28: 56.892, 29: 58.301,
    30: 59.703,
}
_TWO64 = 2**64


def _softmax64(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max())
  return e / e.sum()


def _chi_square(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
  """Pearson chi-square of `counts` against `probs` (float64); returns (statistic, df)."""
  n = counts.sum()
  expected = n * probs
  assert expected.min() >= 5.0, f"test design: expected count {expected.min():.2f} < 5"
  return float(np.sum((counts - expected) ** 2 / expected)), len(probs) - 1


def _draw(key: jax.Array, logits_V: np.ndarray, n: int, temperature: float, **kw) -> np.ndarray:
  logits_NxV = jnp.broadcast_to(jnp.asarray(logits_V, jnp.float32), (n, len(logits_V)))
  fn = jax.jit(lambda k, x: sample_categorical(k, x, temperature, **kw))
  return np.asarray(fn(key, logits_NxV))


# --------------------------------------------------------------------------------------------
# 1. Decisive: exact tail probabilities of the noise, and end-to-end minor-token mass.
# --------------------------------------------------------------------------------------------

_word_map = jax.jit(cat._gumbel_from_words)


def _gumbel_of_words(ks: list[int]) -> np.ndarray:
  """Our noise value for each 64-bit word K (hi word = K >> 32, lo word = K & 0xFFFFFFFF)."""
  hi = np.array([k >> 32 for k in ks], np.uint32)
  lo = np.array([k & 0xFFFFFFFF for k in ks], np.uint32)
  return np.asarray(_word_map(hi, lo))


def _num_words_at_or_below(xs: np.ndarray) -> list[int]:
  """For float32 thresholds x: #{K in [0, 2**64) : g(K) <= x}, by bisection (g is monotone)."""
  lo, hi = [0] * len(xs), [_TWO64] * len(xs)
  while any(a < b for a, b in zip(lo, hi)):
    mid = [(a + b) // 2 for a, b in zip(lo, hi)]
    g = _gumbel_of_words([min(m, _TWO64 - 1) for m in mid])
    for i, x in enumerate(xs):
      if lo[i] < hi[i]:
        if g[i] > x:
          hi[i] = mid[i]
        else:
          lo[i] = mid[i] + 1
  return lo


def _gumbel_tail(x: float, upper: bool) -> float:
  """Exact (float64) P(G > x) if upper else P(G <= x) for a standard Gumbel G."""
  return -math.expm1(-math.exp(-x)) if upper else math.exp(-math.exp(-x))


def _tail_within_tolerance(x: np.float32, prob: float, atom: float, upper: bool) -> bool:
  """Is `prob` = P(float32 noise > x) (upper) or P(float32 noise <= x) the Gumbel tail at x?

  Tolerance: the noise may be off by delta = 2 float32 ulps of x + 1e-7 in value (a quantile
  error; it changes sampling probabilities by a factor e^(±2 delta) at most), plus one atom of
  probability. A float32 result exceeds the float32 threshold x iff the exact value exceeds
  x + ulp(x)/2 (round to nearest), so the comparison point is x + ulp/2.
  """
  ulp = float(np.spacing(np.abs(x)))
  xc, delta = float(x) + ulp / 2, 2 * ulp + 1e-7
  lo, hi = sorted((_gumbel_tail(xc - delta, upper), _gumbel_tail(xc + delta, upper)))
  return lo - atom <= prob <= hi + atom


# Upper tail out to P ~ 4e-18 (x = 40), lower tail down to P ~ 3e-18 (x = -3.7), bulk in between.
_TAIL_XS = np.concatenate([np.linspace(-3.7, -2.5, 13), np.linspace(-2.0, 15.0, 18),
                           np.linspace(16.0, 40.0, 25)]).astype(np.float32)


def test_noise_tail_probabilities_are_exact():
  """Exact law of our noise matches the Gumbel CDF over [-3.7, 40]; the naive noise does not."""
  below = _num_words_at_or_below(_TAIL_XS)
  for x, n_below in zip(_TAIL_XS, below):
    upper = bool(x > 0)
    prob = (_TWO64 - n_below if upper else n_below) / _TWO64
    assert _tail_within_tolerance(x, prob, 2.0**-64, upper), (
        f"x={x}: P={prob:.6e} vs exact {_gumbel_tail(float(x), upper):.6e}")

  # The naive noise: jax.random.uniform(float32) lives on the grid j * 2**-23 (checked here on a
  # million draws; u=0 is replaced by `tiny`), so enumerating the grid gives its exact law.
  tiny = np.finfo(np.float32).tiny
  u = np.asarray(jax.random.uniform(jax.random.key(0), (1_000_000,), jnp.float32,
                                    minval=tiny, maxval=1.0))
  assert ((u == tiny) | (u * 2.0**23 == np.round(u * 2.0**23))).all()
  grid = np.arange(2**23, dtype=np.float32) * np.float32(2.0**-23)
  grid[0] = tiny
  g_naive = np.asarray(jax.jit(cat._naive_gumbel_from_uniform)(grid))
  assert g_naive.max() < 15.95  # the cap that truncates the tail
  naive_ok = []
  for x in _TAIL_XS:
    upper = bool(x > 0)
    prob = float(np.sum(g_naive > x) if upper else np.sum(g_naive <= x)) / 2**23
    naive_ok.append(_tail_within_tolerance(x, prob, 2.0**-64, upper))
  naive_ok = np.array(naive_ok)
  # Fails everywhere beyond 16 (probability 0) and in the lower tail (the 2**-23 atom at -4.47).
  assert not naive_ok[(_TAIL_XS >= 16.0) | (_TAIL_XS <= -2.9)].any()
  # Sanity: the check is not rigged; at its own resolution (2**-23) the naive bulk passes.
  for x in _TAIL_XS[(_TAIL_XS > -2.0) & (_TAIL_XS < 10.0)]:
    prob = float(np.sum(g_naive > x)) / 2**23
    assert _tail_within_tolerance(x, prob, 2.0**-23, True), f"naive bulk off at x={x}"


def test_noise_word_map_extremes_monotone_finite():
  """The word -> Gumbel map reaches ~45 at the top, ~-3.81 at the bottom, monotone and finite."""
  g_min, g_max = _gumbel_of_words([0, _TWO64 - 1])
  np.testing.assert_allclose(g_max, 65 * math.log(2), rtol=1e-6)  # -log(2**-65)
  np.testing.assert_allclose(g_min, -math.log(65 * math.log(2)), rtol=1e-6)
  assert g_max > 44.0 and g_min > -3.9

  rng = np.random.default_rng(0)
  ks = set(range(0, 2000)) | set(range(_TWO64 - 2000, _TWO64))
  for centre in (2**31, 2**32, 2**39, 2**49, 2**63, _TWO64 - 2**32, _TWO64 - 2**39):
    ks |= set(range(centre - 1000, centre + 1000))
  ks |= {int(k) for k in rng.integers(0, 2**63, 50_000, dtype=np.uint64)}
  ks |= {int(k) + 2**63 for k in rng.integers(0, 2**63, 50_000, dtype=np.uint64)}
  ks = sorted(ks)
  g = _gumbel_of_words(ks)
  assert np.isfinite(g).all()
  assert np.all(np.diff(g) >= 0), "map is not monotone in the 64-bit word"
  assert g.min() == g_min and g.max() == g_max
  # Reaches deep into the tail quickly: K = 2**64 - 2**32 (u = 1 - 2**-32) is already ~22.2.
  assert _gumbel_of_words([_TWO64 - 2**32])[0] > 22.0


def test_noise_ks_against_gumbel_cdf():
  """Empirical CDF of 1e6 draws vs exp(-exp(-x)); KS critical value at alpha=1e-3 is 1.949/sqrt(n)."""
  n = 1_000_000
  g = np.sort(np.asarray(gumbel_noise(jax.random.key(1), (n,)), np.float64))
  assert np.isfinite(g).all() and g.max() < 45.1 and g.min() > -3.81
  cdf = np.exp(-np.exp(-g))
  i = np.arange(1, n + 1)
  ks = max(np.max(i / n - cdf), np.max(cdf - (i - 1) / n))
  assert ks < 1.949 / math.sqrt(n), ks  # scipy.stats.kstwo.ppf(0.999, 1e6) * sqrt(n) = 1.949
  # The public function is exactly the word map whose law the exact-tail test computes. Both
  # sides run op by op: XLA's classic CPU emitters (conftest) may round a log inside a fusion 1
  # ulp away from the same log alone, which says nothing about this code.
  key = jax.random.key(2)
  words_2xN = jax.random.bits(key, (2, 4096), jnp.uint32)
  np.testing.assert_array_equal(np.asarray(gumbel_noise(key, (4096,))),
                                np.asarray(cat._gumbel_from_words(words_2xN[0], words_2xN[1])))
  # dtype argument: computed in float32, cast at the end.
  g_bf16 = gumbel_noise(jax.random.key(1), (4, 3), jnp.bfloat16)
  assert g_bf16.dtype == jnp.bfloat16 and g_bf16.shape == (4, 3)


def count_minor_wins(sampler, key: jax.Array, n_minor: int, gap: float, n_chunks: int,
                      chunk: int) -> int:
  """Samples n_chunks * chunk tokens from [0, -gap x n_minor]; counts non-major (index > 0)."""
  logits_V = jnp.concatenate(
      [jnp.zeros((1,), jnp.float32), jnp.full((n_minor,), -gap, jnp.float32)])
  logits_CxV = jnp.broadcast_to(logits_V, (chunk, n_minor + 1))

  # Logits are an argument, not a closed-over constant (XLA would constant-fold their reductions).
  one_chunk = jax.jit(lambda k, x: jnp.sum(sampler(k, x) != 0))
  return sum(int(one_chunk(jax.random.fold_in(key, i), logits_CxV)) for i in range(n_chunks))


def _ours(k, logits_CxV):
  return sample_categorical(k, logits_CxV, 1.0)


def _naive(k, logits_CxV):
  return jnp.argmax(logits_CxV + naive_gumbel_noise(k, logits_CxV.shape), axis=-1)


def test_minor_mass_sampling():
  """1 major token at logit 0 + M = 1023 minor tokens at −10 (per-token probability 4.5e-5,
  q = 0.0444), N = 4096 samples (expected 182): acceptance |count − Nq| < 4·sqrt(Nq(1−q))."""
  gap, n_minor, n_chunks, chunk = 10.0, 1023, 4, 1024
  n = n_chunks * chunk
  w = n_minor * math.exp(-gap)
  q = w / (1.0 + w)
  mean, sd = n * q, math.sqrt(n * q * (1 - q))
  ours = count_minor_wins(_ours, jax.random.key(1234), n_minor, gap, n_chunks, chunk)
  assert abs(ours - mean) < 4 * sd, f"ours: {ours} minor wins, expected {mean:.1f} ± {sd:.1f}"


# --------------------------------------------------------------------------------------------
# 2. Distribution at moderate probabilities.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_chi_square_matches_tempered_softmax(temperature: float):
  logits_V = np.random.default_rng(7).normal(size=12).clip(-2.0, 2.0).astype(np.float32)
  n = 200_000
  tokens = _draw(jax.random.key(int(temperature * 10)), logits_V, n, temperature)
  counts = np.bincount(tokens, minlength=12)
  stat, df = _chi_square(counts, _softmax64(logits_V.astype(np.float64) / temperature))
  assert stat < _CHI2_999[df], (stat, df)


def test_large_logit_offset_does_not_matter():
  """Same law for logits + 1000 (max subtracted before scaling; no exp of raw logits)."""
  logits_V = np.random.default_rng(3).normal(size=10).astype(np.float32)
  n = 100_000
  tokens = _draw(jax.random.key(5), logits_V + np.float32(1000.0), n, 0.7)
  counts = np.bincount(tokens, minlength=10)
  stat, df = _chi_square(counts, _softmax64(logits_V.astype(np.float64) / 0.7))
  assert stat < _CHI2_999[df], (stat, df)


# --------------------------------------------------------------------------------------------
# 4. Temperature 0, top-k, top-p.
# --------------------------------------------------------------------------------------------


def test_temperature_zero_is_argmax():
  logits = jax.random.normal(jax.random.key(0), (3, 5, 50))
  for x in (logits, logits.astype(jnp.bfloat16)):
    want = np.asarray(jnp.argmax(x.astype(jnp.float32), axis=-1))
    for kw in ({}, {"top_k": 3}, {"top_p": 0.5}):
      got = jax.jit(lambda k, l: sample_categorical(k, l, 0.0, **kw))(jax.random.key(9), x)
      assert got.dtype == jnp.int32
      np.testing.assert_array_equal(np.asarray(got), want)
  # Ties: first index, like argmax.
  tie = jnp.array([[1.0, 3.0, 3.0, 0.0]])
  assert int(sample_categorical(jax.random.key(0), tie, 0.0)[0]) == 1


def test_filter_logits_basics():
  x = jnp.array([[0.5, 3.0, -1.0, 3.0, 2.0, 1.0]], jnp.bfloat16)
  x32 = np.asarray(x, np.float32)
  for kw in ({}, {"top_k": None, "top_p": None}, {"top_k": 0}, {"top_p": 1.0}, {"top_k": 6},
             {"top_k": 100}):
    out = filter_logits(x, **kw)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), x32)
  # top_k=1 keeps both tied maxima; top_k=3 keeps {3, 3, 2}.
  np.testing.assert_array_equal(np.isfinite(filter_logits(x, top_k=1))[0],
                                [False, True, False, True, False, False])
  np.testing.assert_array_equal(np.isfinite(filter_logits(x, top_k=3))[0],
                                [False, True, False, True, True, False])
  # Tiny top_p keeps the top token(s) only; never empty.
  y = jnp.array([[0.0, 5.0, 1.0, -2.0]])
  np.testing.assert_array_equal(np.isfinite(filter_logits(y, top_p=1e-9))[0],
                                [False, True, False, False])
  # Nucleus: probs of [2, 1, 0, -inf...]: p = softmax -> keep until mass >= top_p.
  z = np.array([2.0, 1.0, 0.0, -1.0, -3.0], np.float32)
  p = _softmax64(z)  # [0.636, 0.234, 0.086, 0.032, 0.004]
  cases = {0.5: 1, 0.6: 1, 0.7: 2, 0.85: 2, 0.9: 3, 0.98: 4, 0.999: 5}
  for top_p, n_keep in cases.items():
    assert np.cumsum(p)[n_keep - 1] >= top_p and (n_keep == 1 or np.cumsum(p)[n_keep - 2] < top_p)
    kept = np.isfinite(np.asarray(filter_logits(jnp.asarray(z), top_p=top_p)))
    np.testing.assert_array_equal(kept, np.arange(5) < n_keep, err_msg=f"top_p={top_p}")
  # Kept values are unchanged; batch shapes and jit are fine.
  b = jax.random.normal(jax.random.key(2), (2, 3, 40))
  out = jax.jit(lambda l: filter_logits(l, top_k=7, top_p=0.9))(b)
  assert out.shape == (2, 3, 40)
  kept = np.isfinite(np.asarray(out))
  np.testing.assert_array_equal(np.asarray(out)[kept], np.asarray(b)[kept])
  assert kept.sum(-1).min() >= 1 and kept.sum(-1).max() <= 7


def _nucleus(p_sorted: np.ndarray, top_p: float) -> int:
  """Size of the smallest prefix of descending probabilities with mass >= top_p (float64)."""
  cum = np.cumsum(p_sorted)
  n_keep = int(np.argmax(cum >= top_p)) + 1
  # Test design: stay clear of the boundary so float32 cumsum cannot flip the decision.
  assert abs(cum[n_keep - 1] - top_p) > 1e-4 and (n_keep == 1 or abs(cum[n_keep - 2] - top_p) > 1e-4)
  return n_keep


@pytest.mark.parametrize("top_k,top_p,temperature", [(5, None, 1.0), (None, 0.6, 2.0),
                                                     (8, 0.7, 1.5)])
def test_top_k_top_p_support_and_law(top_k, top_p, temperature):
  """Samples stay inside the allowed set; inside it the law is the renormalised tempered softmax."""
  v = 20
  logits_V = np.random.default_rng(11).normal(size=v).astype(np.float32)
  order = np.argsort(-logits_V)
  p = _softmax64(logits_V.astype(np.float64) / temperature)[order]
  n_keep = v
  if top_k:
    n_keep = top_k
  if top_p is not None:
    n_keep = _nucleus(p[:n_keep] / p[:n_keep].sum(), top_p)
  allowed = order[:n_keep]
  n = 100_000
  tokens = _draw(jax.random.key(21), logits_V, n, temperature, top_k=top_k, top_p=top_p)
  assert np.isin(tokens, allowed).all(), "sample outside the top-k / nucleus set"
  counts = np.bincount(tokens, minlength=v)[allowed]
  stat, df = _chi_square(counts, p[:n_keep] / p[:n_keep].sum())
  assert stat < _CHI2_999[df], (stat, df)


# --------------------------------------------------------------------------------------------
# 5. Shapes, dtypes, jit, sharding, validation.
# --------------------------------------------------------------------------------------------


def test_jit_bf16_batch_shape():
  b, l, v = 2, 6, 300
  key = jax.random.key(4)
  logits_BxLxV = jax.random.normal(jax.random.key(5), (b, l, v)).astype(jnp.bfloat16)
  fn = jax.jit(lambda k, x: sample_categorical(k, x, 0.7, top_k=50))
  tokens_BxL = fn(key, logits_BxLxV)
  assert tokens_BxL.shape == (b, l) and tokens_BxL.dtype == jnp.int32
  assert (np.asarray(tokens_BxL) >= 0).all() and (np.asarray(tokens_BxL) < v).all()
  # bf16 is upcast first: identical to sampling the upcast logits with the same key.
  np.testing.assert_array_equal(
      np.asarray(tokens_BxL), np.asarray(fn(key, logits_BxLxV.astype(jnp.float32))))
  # Deterministic in the key, and the key matters.
  np.testing.assert_array_equal(np.asarray(tokens_BxL), np.asarray(fn(key, logits_BxLxV)))
  assert not np.array_equal(np.asarray(tokens_BxL),
                            np.asarray(fn(jax.random.key(6), logits_BxLxV)))
  # Rows are independent: a dominant token (+30 over the rest) in each row is always chosen.
  best_BxL = jax.random.randint(jax.random.key(7), (b, l), 0, v)
  peaked = (jax.nn.one_hot(best_BxL, v) * 30.0).astype(jnp.bfloat16)
  np.testing.assert_array_equal(np.asarray(fn(key, peaked)), np.asarray(best_BxL))
  # A legacy uint32 key works too.
  assert fn(jax.random.PRNGKey(0), logits_BxLxV).shape == (b, l)


def test_sharded_logits_same_result():
  """Sharding the batch over 8 devices changes nothing (noise is a function of key and index)."""
  devices = np.array(jax.devices()[:8])
  assert devices.size == 8, "tests/conftest.py forces 8 CPU devices"
  mesh = Mesh(devices, ("data",))
  logits_BxLxV = jax.random.normal(jax.random.key(8), (8, 4, 64))
  fn = jax.jit(lambda k, x: sample_categorical(k, x, 1.0, top_p=0.95))
  want = np.asarray(fn(jax.random.key(3), logits_BxLxV))
  sharded = jax.device_put(logits_BxLxV, NamedSharding(mesh, P("data")))
  np.testing.assert_array_equal(np.asarray(fn(jax.random.key(3), sharded)), want)


def test_validation_errors():
  x = jnp.zeros((2, 5))
  k = jax.random.key(0)
  with pytest.raises(ValueError, match=r"temperature.*>= 0.*-0\.5"):
    sample_categorical(k, x, -0.5)
  with pytest.raises(ValueError, match=r"temperature.*nan"):
    sample_categorical(k, x, float("nan"))
  with pytest.raises(ValueError, match=r"temperature.*static Python float"):
    sample_categorical(k, x, jnp.float32(1.0))
  with pytest.raises(ValueError, match=r"top_k.*>= 0.*-1"):
    sample_categorical(k, x, 1.0, top_k=-1)
  with pytest.raises(ValueError, match=r"top_k.*int.*2\.5"):
    filter_logits(x, top_k=2.5)
  with pytest.raises(ValueError, match=r"top_k.*True"):
    filter_logits(x, top_k=True)
  for bad in (0.0, 1.5, -0.1, float("nan")):
    with pytest.raises(ValueError, match=r"top_p.*\(0, 1\]"):
      sample_categorical(k, x, 1.0, top_p=bad)
  with pytest.raises(ValueError, match=r"logits.*floating.*int32"):
    sample_categorical(k, jnp.zeros((2, 5), jnp.int32), 1.0)
  with pytest.raises(ValueError, match=r"dtype.*floating.*int32"):
    gumbel_noise(k, (3,), jnp.int32)
  # Integer temperature and numpy scalars are fine.
  assert sample_categorical(k, x, 1, top_k=np.int64(2), top_p=np.float32(0.5)).shape == (2,)
