"""Paired comparison of two models scored on the same problems: how large is the gain, and is it
real?

Two models evaluated on the same problems make correlated errors, so their separate Wilson
intervals overlap long after the difference between them is settled (a model that solves 30 more
of 1000 problems and loses none is better beyond doubt, yet 0.21 [0.19, 0.24] vs 0.24 [0.21, 0.27]
overlap). What answers the question is the interval of the *difference* from the paired outcomes
— Newcombe's hybrid score interval (Newcombe 1998, Stat. Med. 17:2635, method 10: the two
Wilson intervals combined with the phi correlation of the 2×2 table) — and McNemar's exact test,
which looks only at the problems one model solves and the other does not.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import stats

from mdpo_jax.training.evaluation import wilson_interval


@dataclasses.dataclass(frozen=True)
class PairedGain:
  """`after` − `before` accuracy on the same `n` problems with its 95% interval; `gained`:
  problems only `after` solves, `lost`: only `before`; `p_value`: McNemar's exact two-sided."""
  n: int
  gain: float
  low: float
  high: float
  gained: int
  lost: int
  p_value: float

  def cell(self) -> str:
    """Points, e.g. `+3.1 [+1.2, +5.0] (+52/−21, p=0.0004)`."""
    return (f"{100 * self.gain:+.1f} [{100 * self.low:+.1f}, {100 * self.high:+.1f}] "
            f"(+{self.gained}/−{self.lost}, p={self.p_value:.2g})")


def difference_interval(both: int, only_after: int, only_before: int, neither: int,
                        z: float = 1.96) -> tuple[float, float]:
  """Newcombe's method-10 interval for p_after − p_before from the paired 2×2 counts."""
  n = both + only_after + only_before + neither
  if n == 0:
    return (-1.0, 1.0)
  p1, p2 = (both + only_after) / n, (both + only_before) / n
  l1, u1 = wilson_interval(both + only_after, n, z)
  l2, u2 = wilson_interval(both + only_before, n, z)
  margins = (both + only_after) * (only_before + neither) * (both + only_before) * (
      only_after + neither)
  phi = 0.0 if margins == 0 else (both * neither - only_after * only_before) / math.sqrt(margins)
  phi = min(max(phi, -1.0), 1.0)
  low = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
  high = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
  return (p1 - p2 - low, p1 - p2 + high)


def paired_gain(before: Sequence[bool], after: Sequence[bool]) -> PairedGain:
  """The gain of `after` over `before`, both one bool per problem in the same order."""
  b, a = np.asarray(before, bool), np.asarray(after, bool)
  if b.shape != a.shape or b.ndim != 1:
    raise ValueError(f"paired outcomes need equal 1-D shapes, got {b.shape} and {a.shape}")
  both, gained = int((a & b).sum()), int((a & ~b).sum())
  lost, neither = int((~a & b).sum()), int((~a & ~b).sum())
  n = a.size
  low, high = difference_interval(both, gained, lost, neither)
  p_value = (1.0 if gained + lost == 0
             else float(stats.binomtest(gained, gained + lost, 0.5).pvalue))
  return PairedGain(n, (gained - lost) / n if n else 0.0, low, high, gained, lost, p_value)
