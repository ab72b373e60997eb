"""Categorical sampling from softmax(logits / T) without float32 Gumbel-tail truncation.

Why this module exists
----------------------
The Gumbel-max trick samples ``argmax(logits / T + g)`` with ``g = -log(-log(u))`` and
``u ~ U(0, 1)``. With a float32 ``u`` (23 random mantissa bits in ``jax.random.uniform``) the
largest ``u`` below 1 is ``1 - 2**-23``, so ``g`` can never exceed ``-log(2**-23) ≈ 15.9``; the
smallest ``g`` is about ``-2.8`` (``-4.5`` on the single atom ``u = tiny``). A token whose scaled
logit trails the leader by more than ~18 therefore (almost) never wins, although its exact
probability ``≈ e^-gap`` is not negligible once summed over a 126k vocabulary. Each such token
loses its *whole* mass, which silently sharpens the distribution -- a lower effective temperature
(FHS paper: Zheng et al., 2024). LLaDA avoids it with float64 noise; TPUs have no float64, so this
module gets the same accuracy with float32 arithmetic only.

The precise Gumbel noise
------------------------
Each draw uses two 32-bit random words, i.e. a 64-bit integer ``K``, and represents the uniform
``u = (K + 1/2) / 2**64`` -- the midpoint rule on 2**64 atoms, so both tails are truncated only at
probability ~2**-64. ``u`` itself is never formed in float32 (near 1 it would round to 1). Instead
the top bit of ``K`` picks the half and ``v ∈ [2**-65, 1/2]`` is the distance to the nearer end:

* lower half (``u < 1/2``): ``v = u`` and ``E = -log(v)``;
* upper half (``u ≥ 1/2``): ``v = 1 - u``, read off the complemented bits exactly, and
  ``E = -log1p(-v)``;

so ``E = -log(u) ~ Exponential(1)`` and ``g = -log(E)``. ``v`` is built from the remaining 63 bits
as a sum of three exactly representable float32 pieces (24 + 24 + 15 bits, scaled by powers of
two), so it carries a relative error ≤ 2**-23 (two roundings; the map stays monotone) however close
``u`` is to 0 or 1. ``E`` is then formed with one ``log1p`` of an exact argument (lower half:
``v = m 2**e`` and ``E = -log1p(m - 1) - e ln 2``, a sum of non-negative terms), so it keeps that
relative precision, and ``g = -log(E)`` has an absolute error of ~1e-7 plus the rounding of ``g``
itself (half an ulp: ≤ 2e-6 only near the top, g ≈ 45, reached with probability ~1e-19). The range
is ``g ∈ [-log(65 ln 2), 65 ln 2] ≈ [-3.81, 45.05]``; the mass cut off beyond either end is
``≈ e^-44.4 ≈ 5e-20``, against ~1e-7 for the float32 sampler. Checked exactly in
``tests/test_categorical.py``: the map is monotone, so bisection over all 2**64 words gives its
exact law, which matches the Gumbel CDF to within two float32 ulps (in value) and one 2**-64 atom
(in probability) everywhere in ``[-3.7, 40]``.

Why that is enough
------------------
Sampling uses ``z = (logits - max(logits)) / T`` (so the leader sits at 0 and only ``z ≥ -49``
can ever win) and returns ``argmax(z + g)``. If every noise value (and every rounded sum ``z + g``)
is within ``δ`` of its exact value, token ``i`` can only win where it would have won with its
logit raised by ``2δ``, so its probability changes at most by a factor ``e^{±2δ}``: a *relative*
error of ~1e-7..1e-6 of ``p_i`` (the winning sums are O(1), where float32 ulps are ~1e-7), never
the absolute loss of whole tokens' mass that truncation causes. Subtracting the max *before*
dividing by ``T`` keeps the rounding of ``z`` proportional to each token's gap rather than to the
raw logit magnitude (for logits ~30 at T = 0.4 the latter would give comparison errors ~4e-6 for
every token). The leftover bias per token is therefore far below 1e-7, and the truncated tail mass
is ~1e-19 per token (~1e-14 over a 126k vocabulary).

Everything is float32 / uint32, so the same code is exact-enough on CPU, GPU and TPU.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "gumbel_noise",
    "naive_gumbel_noise",
    "filter_logits",
    "sample_categorical",
]

# Scales of the three exact pieces of the 63-bit magnitude (see `_half_uniform_from_words`).
_SCALE_HI = np.float32(2.0**-25)   # K bits 62..39 (24 bits)
_SCALE_MID = np.float32(2.0**-49)  # K bits 38..15 (24 bits)
_SCALE_LO = np.float32(2.0**-64)   # K bits 14..0 (15 bits) + the midpoint 1/2


def _half_uniform_from_words(hi_u32: jax.Array, lo_u32: jax.Array) -> jax.Array:
  """Maps the 63-bit integer ``m = (hi & 0x7FFFFFFF) << 32 | lo`` to ``v ≈ (m + 1/2) / 2**64``.

  Result in ``[2**-65, 1/2]`` as float32 with relative error ≤ 2**-23 and non-decreasing in ``m``.
  The value is split into three pieces that are each exact in float32 (≤ 24 significant bits,
  power-of-two scale); only the two additions round, and because the small piece is below half
  the spacing of the partial sum whenever that sum was itself rounded, monotonicity survives.
  Why not ``float(hi) * 2**-32 + float(lo) * 2**-64``: converting a 31-bit ``hi`` already rounds,
  which can make the map non-monotone by an ulp across ``lo`` wrap-arounds.
  """
  hi_u32 = hi_u32 & jnp.uint32(0x7FFFFFFF)
  top24 = hi_u32 >> 7
  mid24 = ((hi_u32 & jnp.uint32(0x7F)) << 17) | (lo_u32 >> 15)
  low15 = lo_u32 & jnp.uint32(0x7FFF)
  p_hi = top24.astype(jnp.float32) * _SCALE_HI
  p_mid = mid24.astype(jnp.float32) * _SCALE_MID
  p_lo = (low15.astype(jnp.float32) + jnp.float32(0.5)) * _SCALE_LO
  return (p_hi + p_mid) + p_lo


def _gumbel_from_words(hi_u32: jax.Array, lo_u32: jax.Array) -> jax.Array:
  """Standard Gumbel value of the uniform ``u = (K + 1/2) / 2**64`` with ``K = hi << 32 | lo``.

  Non-decreasing in ``K`` (up to the last-ulp monotonicity of ``log``/``log1p``), finite
  everywhere: ``K = 0`` gives ``-log(65 ln 2) ≈ -3.808`` and ``K = 2**64 - 1`` gives
  ``≈ 65 ln 2 ≈ 45.05``. See the module docstring for the precision argument.

  ``E = -log(u)`` is computed with a single ``log1p``: in the upper half ``E = -log1p(-v)``; in
  the lower half ``v = m * 2**e`` (``m ∈ [1/2, 1)``, read from the float bits) and
  ``E = -log1p(m - 1) - e ln 2``, where ``m - 1`` is exact and both terms are ≥ 0, so the sum
  keeps full relative precision. Then ``g = -log(E)``: two transcendentals per value.
  """
  upper = (hi_u32 >> 31) == jnp.uint32(1)  # u >= 1/2
  # In the upper half 1 - u = (2**63 - 1 - m + 1/2) / 2**64: the complemented low 63 bits.
  v = _half_uniform_from_words(
      jnp.where(upper, ~hi_u32, hi_u32), jnp.where(upper, ~lo_u32, lo_u32))
  # v is a normal float32 in [2**-65, 1/2]: split it as m * 2**e with m in [1/2, 1), e <= 0.
  v_bits = jax.lax.bitcast_convert_type(v, jnp.uint32)
  e = (v_bits >> 23).astype(jnp.int32) - 126
  m = jax.lax.bitcast_convert_type(
      (v_bits & jnp.uint32(0x007FFFFF)) | jnp.uint32(126 << 23), jnp.float32)
  t = jnp.where(upper, -v, m - jnp.float32(1.0))  # exact in both branches
  k = jnp.where(upper, 0, e).astype(jnp.float32)
  neg_log_u = -jnp.log1p(t) - k * jnp.float32(math.log(2.0))  # Exponential(1), accurate both ends
  return -jnp.log(neg_log_u)


def _check_float_dtype(dtype: Any, name: str) -> jnp.dtype:
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"{name}: dtype must be a floating dtype, got {dtype}.")
  return dtype


def gumbel_noise(rng: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
  """High-precision standard Gumbel noise of the given shape.

  Two 32-bit random words per value (``jax.random.bits``) give a 64-bit uniform whose both tails
  reach probability ~2**-64, mapped to Gumbel in float32 without ever rounding ``u`` near 0 or 1
  (module docstring). Values lie in ``[-3.81, 45.05]``. Computed in float32 on every backend and
  cast to ``dtype`` at the end (a narrower dtype rounds the values but does not truncate the tail).
  Costs two random words and two transcendentals (``log1p``, ``log``) per value; the naive noise
  needs one word and two ``log``s.
  """
  dtype = _check_float_dtype(dtype, "gumbel_noise")
  shape = tuple(int(d) for d in shape)
  words_2xS = jax.random.bits(rng, (2, *shape), jnp.uint32)
  return _gumbel_from_words(words_2xS[0], words_2xS[1]).astype(dtype)


def _naive_gumbel_from_uniform(u: jax.Array) -> jax.Array:
  """The textbook float32 map ``-log(-log(u))`` (exposed separately so tests can enumerate it)."""
  return -jnp.log(-jnp.log(u))


def naive_gumbel_noise(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Float32 Gumbel noise ``-log(-log(u))`` with ``u = jax.random.uniform`` -- the BASELINE ONLY.

  Kept to demonstrate the truncation in tests and benchmarks; do not sample with it. ``u`` takes
  the 2**23 values ``j * 2**-23`` (``tiny`` instead of 0), so ``g ≤ -log(2**-23) ≈ 15.94`` and,
  apart from one atom of probability 2**-23 at ``g ≈ -4.47``, ``g ≥ -log(23 ln 2) ≈ -2.77``: a
  token trailing the leader by more than ~18.7 in scaled logit essentially never wins, and one
  trailing by 17 wins only ~17% as often as it should.
  """
  shape = tuple(int(d) for d in shape)
  u = jax.random.uniform(
      rng, shape, jnp.float32, minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
  return _naive_gumbel_from_uniform(u)


def _check_top_k(top_k: int | None) -> int | None:
  if top_k is None:
    return None
  if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)):
    raise ValueError(
        f"top_k must be None or a non-negative Python int (0 = off), got {top_k!r} "
        f"of type {type(top_k).__name__}.")
  if top_k < 0:
    raise ValueError(f"top_k must be None or an int >= 0 (0 = off), got {top_k}.")
  return int(top_k)


def _check_top_p(top_p: float | None) -> float | None:
  if top_p is None:
    return None
  if isinstance(top_p, bool) or not isinstance(top_p, (int, float, np.integer, np.floating)):
    raise ValueError(
        f"top_p must be None or a Python float in (0, 1] (1.0 = off), got {top_p!r} "
        f"of type {type(top_p).__name__}.")
  top_p = float(top_p)
  if not 0.0 < top_p <= 1.0:  # also rejects NaN
    raise ValueError(f"top_p must be None or a float in (0, 1] (1.0 = off), got {top_p}.")
  return top_p


def _check_temperature(temperature: float) -> float:
  if isinstance(temperature, bool) or not isinstance(
      temperature, (int, float, np.integer, np.floating)):
    raise ValueError(
        f"temperature must be a static Python float >= 0 (0 = argmax), got {temperature!r} "
        f"of type {type(temperature).__name__}.")
  temperature = float(temperature)
  if not (temperature >= 0.0 and math.isfinite(temperature)):
    raise ValueError(
        f"temperature must be a finite float >= 0 (0 = argmax), got {temperature}.")
  return temperature


def filter_logits(
    logits_xV: jax.Array, *, top_k: int | None = None, top_p: float | None = None
) -> jax.Array:
  """Sets logits outside the top-k and/or nucleus (top-p) set to -inf; returns float32 logits.

  Args:
    logits_xV: ``[..., V]`` logits (any float dtype; upcast to float32 first).
    top_k: keep the ``top_k`` largest logits (plus any tied with the k-th). ``None``/0, or
      ``top_k >= V``, means off.
    top_p: keep the smallest set of highest-probability tokens whose total probability under
      ``softmax(logits)`` is ``>= top_p`` (always at least the top token; tokens tied with the
      last kept one are kept too). ``None``/1.0 means off. Applied after top-k, i.e. on the
      top-k-renormalised distribution (the Hugging Face order).

  Static shapes throughout (a full sort for top-p), so it works under ``jit``. Pass tempered logits
  (``logits / T``) if the nucleus should be taken on the distribution actually sampled.
  """
  top_k = _check_top_k(top_k)
  top_p = _check_top_p(top_p)
  logits_xV = jnp.asarray(logits_xV).astype(jnp.float32)
  vocab = logits_xV.shape[-1]
  neg_inf = jnp.float32(-jnp.inf)

  if top_k is not None and 0 < top_k < vocab:
    kth_x1 = jax.lax.top_k(logits_xV, top_k)[0][..., top_k - 1:top_k]
    logits_xV = jnp.where(logits_xV >= kth_x1, logits_xV, neg_inf)

  if top_p is not None and top_p < 1.0:
    sorted_xV = jnp.flip(jnp.sort(logits_xV, axis=-1), axis=-1)  # descending
    probs_xV = jax.nn.softmax(sorted_xV, axis=-1)
    cum_xV = jnp.cumsum(probs_xV, axis=-1)
    # Mass strictly before each sorted position; keep while it is still < top_p. Position 0 has
    # 0 < top_p, so at least one token survives.
    before_xV = jnp.concatenate([jnp.zeros_like(cum_xV[..., :1]), cum_xV[..., :-1]], axis=-1)
    n_keep_x1 = jnp.sum(before_xV < top_p, axis=-1, keepdims=True)
    n_keep_x1 = jnp.maximum(n_keep_x1, 1)
    threshold_x1 = jnp.take_along_axis(sorted_xV, n_keep_x1 - 1, axis=-1)
    logits_xV = jnp.where(logits_xV >= threshold_x1, logits_xV, neg_inf)

  return logits_xV


def sample_categorical(
    rng: jax.Array,
    logits_xV: jax.Array,
    temperature: float,
    *,
    top_k: int | None = None,
    top_p: float | None = None,
) -> jax.Array:
  """Samples ``tokens[...] ~ softmax(logits[..., :] / temperature)`` (after top-k/top-p); int32.

  ``temperature`` is a static Python float. ``T == 0`` returns ``argmax(logits)`` (first index on
  ties; deterministic, ``rng`` unused). ``T > 0`` returns ``argmax(z + gumbel_noise)`` with
  ``z = filter_logits((logits - max) / T)`` in float32: the log-domain Gumbel-max trick, never
  exponentiating logits, with the untruncated noise of `gumbel_noise` (precision argument in the
  module docstring). top-k/top-p therefore act on the tempered distribution ``softmax(logits/T)``,
  as in Hugging Face ``generate`` and vLLM. Any leading batch shape; bf16 logits are upcast to
  float32 first; works under ``jit``.
  """
  temperature = _check_temperature(temperature)
  top_k = _check_top_k(top_k)
  top_p = _check_top_p(top_p)
  logits_xV = jnp.asarray(logits_xV)
  if not jnp.issubdtype(logits_xV.dtype, jnp.floating):
    raise ValueError(f"logits must have a floating dtype, got {logits_xV.dtype}.")
  logits_xV = logits_xV.astype(jnp.float32)

  if temperature == 0.0:
    return jnp.argmax(logits_xV, axis=-1).astype(jnp.int32)
  return gumbel_max(rng, logits_xV, jnp.float32(temperature), top_k=top_k, top_p=top_p)


def gumbel_max(rng: jax.Array, logits_xV: jax.Array, temperature_x1, *, top_k=None,
               top_p=None) -> jax.Array:
  """`sample_categorical`'s T > 0 draw with a *traced* temperature: a float32 scalar or an array
  broadcastable to `logits_xV` (e.g. [B, 1, 1]: one T per row), every entry > 0 (unchecked:
  the caller's). The same arithmetic and noise as `sample_categorical` at equal T."""
  logits_xV = jnp.asarray(logits_xV).astype(jnp.float32)
  # Leader at 0 before scaling: rounding of z is relative to each token's gap, not to |logits|.
  max_x1 = jnp.max(logits_xV, axis=-1, keepdims=True)
  max_x1 = jnp.where(jnp.isfinite(max_x1), max_x1, jnp.zeros_like(max_x1))
  z_xV = (logits_xV - max_x1) / temperature_x1
  z_xV = filter_logits(z_xV, top_k=top_k, top_p=top_p)
  g_xV = gumbel_noise(rng, z_xV.shape)
  return jnp.argmax(z_xV + g_xV, axis=-1).astype(jnp.int32)
