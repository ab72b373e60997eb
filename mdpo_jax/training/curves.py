"""Accuracy against optimiser updates, and how many updates a run needs to reach another's best.

The MDPO paper's headline is update efficiency (it matches the previous best "with 60× fewer
gradient updates"). In miniature: each RL run's checkpoints are evaluated on the same problems
(`python -m mdpo_jax.reproduce --curve_every N`), giving one `Curve` per run, and
`updates_to_reach` answers "after how many updates did run A first reach run B's best accuracy".
Pure functions of the measured points; the evaluation itself is `evaluation.evaluate_checkpoint`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from mdpo_jax.training.evaluation import wilson_interval


@dataclasses.dataclass(frozen=True)
class Point:
  update: int           # optimiser updates taken (0 = the SFT start)
  accuracy: float
  ci_low: float
  ci_high: float


@dataclasses.dataclass(frozen=True)
class Curve:
  name: str
  points: tuple[Point, ...]   # ascending updates

  def __post_init__(self):
    updates = [p.update for p in self.points]
    if not updates or updates != sorted(set(updates)):
      raise ValueError(f"curve {self.name!r}: updates must be non-empty, distinct and ascending, "
                       f"got {updates}")

  def best(self) -> Point:
    """The highest accuracy (the earliest of equals)."""
    return max(self.points, key=lambda p: (p.accuracy, -p.update))

  def to_json(self) -> dict:
    return {"name": self.name, "points": [dataclasses.asdict(p) for p in self.points]}

  @classmethod
  def from_json(cls, data: dict) -> "Curve":
    return cls(data["name"], tuple(Point(**p) for p in data["points"]))


def pool(curves: Sequence[Curve], problems_each: int) -> Curve:
  """The curves of one run on several seeds (each measured on `problems_each` problems) as one:
  at every update all of them measured, the pooled accuracy with its Wilson interval over
  `problems_each × len(curves)` problems."""
  common = set.intersection(*({p.update for p in c.points} for c in curves))
  n = problems_each * len(curves)
  points = []
  for u in sorted(common):
    solved = sum(round(p.accuracy * problems_each) for c in curves for p in c.points
                 if p.update == u)
    points.append(Point(u, solved / n, *wilson_interval(solved, n)))
  return Curve(curves[0].name, tuple(points))


def updates_to_reach(curve: Curve, target: float) -> int | None:
  """The first measured update at which `curve` is at or above `target` (None: never)."""
  return next((p.update for p in curve.points if p.accuracy >= target), None)


def efficiency(fast: Curve, slow: Curve) -> dict:
  """How many updates `fast` needs to reach `slow`'s best, against the updates `slow` took to
  get there: {"target", "slow_updates", "fast_updates", "ratio"} (ratio slow/fast; None when
  `fast` never reaches it, inf when it already starts there)."""
  best = slow.best()
  reached = updates_to_reach(fast, best.accuracy)
  ratio = None if reached is None else (float("inf") if reached == 0 else best.update / reached)
  return {"target": best.accuracy, "slow_updates": best.update, "fast_updates": reached,
          "ratio": ratio}


def curve_lines(curves: Sequence[Curve]) -> str:
  """A Markdown table: one row per measured update, one column per curve."""
  updates = sorted({p.update for c in curves for p in c.points})
  at = [{p.update: p for p in c.points} for c in curves]
  lines = ["| updates | " + " | ".join(c.name for c in curves) + " |",
           "|---|" + "---|" * len(curves)]
  for u in updates:
    cells = [f"{m[u].accuracy:.3f} [{m[u].ci_low:.3f}, {m[u].ci_high:.3f}]" if u in m else "—"
             for m in at]
    lines.append(f"| {u} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
