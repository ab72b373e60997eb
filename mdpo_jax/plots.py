"""Pictures of what the sampler and the trainers did (PNG, matplotlib, headless).

Three pictures, each split into a pure *data* function (numpy only: what the tests check against
an independent computation) and a *drawing* function (matplotlib, imported only when drawing, on
the Agg canvas, so no display and no global backend switch):

* the denoising trajectory (`trajectory_picture` → `trajectory_figure`): positions × steps; a
  cell's colour is the step at which the token it shows was committed, its shade the confidence
  the token had then (pale = low), a red × where a token was taken back (re-masked, as RCR does),
  the final text along the axis;
* over-denoising (`step_correctness` → `over_denoising_figure`): per step t, the fraction of
  rollouts whose intermediate prediction x̂0_t is right, split by whether the final answer is
  right, for several models on one axis (e.g. before and after MDPO);
* training curves from a run's `metrics.jsonl` (`training_curves` → `training_figure`): loss,
  rollout reward and held-out accuracy per evaluation.

Used by `python -m mdpo_jax.generate --show_steps --plot`, `python -m mdpo_jax.evaluate --plots`,
`python -m mdpo_jax.reproduce` (figures next to its table) and notebooks/quickstart.ipynb.
Matplotlib is optional for the package (`pip install matplotlib`); drawing without it is a
one-line `PlotError`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

MASKED = -1   # commit step of a cell whose position is masked after the step
_MASKED_RGB = (0.88, 0.88, 0.88)
_MIN_SHADE = 0.3   # a token committed with confidence 0 still shows its step's colour, faintly
_TEXT_CELLS_MAX = 64   # positions up to which each cell is written (the token's text)


class PlotError(ValueError):
  """A user error about a picture (missing matplotlib, an unwritable path, a missing metrics
  file): one line, shown by the CLIs as `error: ...`."""


# ----------------------------------------------------------------------------- trajectory data

@dataclasses.dataclass(frozen=True)
class TrajectoryPicture:
  """What the trajectory picture shows for one row (G generated positions, T steps). Row t is the
  state *after* step t (x_{t+1}; the final tokens after the last step).

  commit_step_TxG: the step at which the token shown was committed (its latest commit: RCR may
    take a token back and commit another later); `MASKED` (-1) where the position is masked.
  confidence_TxG: the confidence the shown token had when committed; NaN where masked.
  remasked_TxG: unmasked before step t and masked after it (RCR took the token back at step t).
  tokens_TxG: the token ids after step t.
  final_G: the final token ids; labels: their texts (the axis), when given.
  """

  commit_step_TxG: np.ndarray
  confidence_TxG: np.ndarray
  remasked_TxG: np.ndarray
  tokens_TxG: np.ndarray
  final_G: np.ndarray
  labels: tuple[str, ...] = ()

  @property
  def steps(self) -> int:
    return self.commit_step_TxG.shape[0]


def _host(x) -> np.ndarray:
  return np.asarray(x)


def trajectory_picture(traj, final_BxL, *, prompt_len: int, mask_id: int, row: int = 0,
                       labels: Sequence[str] = ()) -> TrajectoryPicture:
  """The data of the trajectory picture of `row`, from a sampler's record (`Trajectory` or
  `FHSTrajectory`: fields read by name, x, confidence and committed as [T, B, L]) and the
  final tokens [B, L] (prompt included; the first `prompt_len` positions are dropped)."""
  x_TxG = _host(traj.x)[:, row, prompt_len:]
  conf_TxG = _host(traj.confidence)[:, row, prompt_len:].astype(np.float32)
  committed_TxG = _host(traj.committed)[:, row, prompt_len:].astype(bool)
  final_G = _host(final_BxL)[row, prompt_len:]
  if x_TxG.shape[1] != final_G.shape[0]:
    raise ValueError(f"trajectory has {x_TxG.shape[1]} generated positions after prompt_len="
                     f"{prompt_len}, the final tokens {final_G.shape[0]}")
  t_steps = x_TxG.shape[0]
  after_TxG = np.concatenate([x_TxG[1:], final_G[None]], axis=0)   # state after each step
  masked_after_TxG = after_TxG == mask_id
  step_T1 = np.arange(t_steps)[:, None]
  # Latest commit at or before t; a masked position shows no commit (it was taken back).
  latest_TxG = np.maximum.accumulate(np.where(committed_TxG, step_T1, MASKED), axis=0)
  commit_TxG = np.where(masked_after_TxG, MASKED, latest_TxG)
  cols_G = np.arange(final_G.shape[0])
  conf_at_commit = conf_TxG[np.maximum(commit_TxG, 0), cols_G[None, :]]
  confidence_TxG = np.where(commit_TxG == MASKED, np.nan, conf_at_commit)
  remasked_TxG = (x_TxG != mask_id) & masked_after_TxG
  return TrajectoryPicture(commit_TxG, confidence_TxG, remasked_TxG, after_TxG, final_G,
                           tuple(labels))


def token_label(text: str) -> str:
  """A token's text as an axis label: visible whitespace, short special tokens."""
  if text.startswith("<|") and text.endswith("|>"):
    name = text[2:-2]
    return {"endoftext": "EOS", "eot_id": "EOT", "im_end": "EOT", "mdm_mask": "MASK",
            "startoftext": "BOS"}.get(
        name, name[:6])
  return text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"


def token_labels(tokenizer, ids: Sequence[int]) -> tuple[str, ...]:
  """Axis labels of `ids`, one per token (decoded one at a time, specials kept)."""
  return tuple(token_label(tokenizer.decode([int(i)], skip_special_tokens=False)) for i in ids)


# ----------------------------------------------------------------------------- over-denoising data

@dataclasses.dataclass(frozen=True)
class StepCorrectness:
  """Per step t (the last one is the final answer), the fraction of all N rollouts whose x̂0_t
  was right and whose final answer was right (`right_final_right_T`) or wrong
  (`right_final_wrong_T`: answers found, then lost — over-denoising); `over_denoised` = the
  fraction with some intermediate x̂0_t right (t < T−1) and the final answer wrong."""

  right_final_right_T: np.ndarray
  right_final_wrong_T: np.ndarray
  n: int
  accuracy: float
  over_denoised: float

  def to_json(self) -> dict:
    return {"right_final_right": [float(v) for v in self.right_final_right_T],
            "right_final_wrong": [float(v) for v in self.right_final_wrong_T],
            "n": int(self.n), "accuracy": float(self.accuracy),
            "over_denoised": float(self.over_denoised)}

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> "StepCorrectness":
    return cls(np.asarray(d["right_final_right"], float), np.asarray(d["right_final_wrong"], float),
               int(d["n"]), float(d["accuracy"]), float(d["over_denoised"]))


def step_correctness(right_NxT, final_right_N) -> StepCorrectness:
  """The over-denoising curves of N rollouts from whether each x̂0_t was right ([N, T] bool;
  include the final answer as the last step) and whether each final answer was right ([N])."""
  right_NxT = np.asarray(right_NxT, bool)
  final_N = np.asarray(final_right_N, bool)
  n = right_NxT.shape[0]
  if n == 0 or final_N.shape != (n,):
    raise ValueError(f"step_correctness: right_NxT {right_NxT.shape} and final_right_N "
                     f"{final_N.shape} must describe the same N > 0 rollouts")
  mid_right_N = right_NxT[:, :-1].any(axis=1)
  return StepCorrectness((right_NxT & final_N[:, None]).mean(0),
                         (right_NxT & ~final_N[:, None]).mean(0), n, float(final_N.mean()),
                         float((mid_right_N & ~final_N).mean()))


def pool(curves: Sequence[StepCorrectness]) -> StepCorrectness:
  """Curves of several evaluations (e.g. seeds) as one: each weighted by its rollouts."""
  n = sum(c.n for c in curves)
  w = [c.n / n for c in curves]
  mix = lambda f: sum(wi * f(c) for wi, c in zip(w, curves))  # noqa: E731
  return StepCorrectness(mix(lambda c: c.right_final_right_T),
                         mix(lambda c: c.right_final_wrong_T), n,
                         float(mix(lambda c: c.accuracy)), float(mix(lambda c: c.over_denoised)))


# ----------------------------------------------------------------------------- training-curve data

@dataclasses.dataclass(frozen=True)
class TrainingCurves:
  """(steps, values) series of a run's metrics.jsonl; null (NaN/Inf when logged) becomes NaN.
  accuracy: one series per evaluation setting (`eval/<setting>/accuracy`)."""

  loss: tuple[np.ndarray, np.ndarray]
  reward: tuple[np.ndarray, np.ndarray]
  over_denoised: tuple[np.ndarray, np.ndarray]
  accuracy: dict[str, tuple[np.ndarray, np.ndarray]]


def read_metrics(path: str | os.PathLike) -> list[dict]:
  """The records of a metrics.jsonl (a run's WORKDIR/metrics.jsonl); a missing or unreadable file
  is one-line `PlotError`."""
  path = Path(path)
  if not path.is_file():
    raise PlotError(f"metrics file {path}: no such file; allowed: a run's WORKDIR/metrics.jsonl")
  try:
    with open(path, encoding="utf-8") as f:
      return [json.loads(line) for line in f if line.strip()]
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise PlotError(f"metrics file {path}: cannot read it as JSON lines ({e})") from e


def _series(records: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
  pairs = [(r["step"], math.nan if r[key] is None else r[key]) for r in records if key in r]
  steps = np.asarray([p[0] for p in pairs], np.int64)
  return steps, np.asarray([p[1] for p in pairs], np.float64)


def training_curves(records: Sequence[Mapping]) -> TrainingCurves:
  """Loss, rollout reward (`reward/final_mean`), rollouts' over-denoising rate and accuracy per
  evaluation setting, each only from the records that hold it."""
  names = sorted({k for r in records for k in r if k.startswith("eval/") and
                  k.endswith("/accuracy")})
  return TrainingCurves(_series(records, "loss"), _series(records, "reward/final_mean"),
                        _series(records, "reward/over_denoised"),
                        {n[len("eval/"):-len("/accuracy")]: _series(records, n) for n in names})


# ----------------------------------------------------------------------------- drawing

def _matplotlib():
  try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
  except ImportError as e:
    raise PlotError("drawing pictures needs matplotlib: pip install matplotlib") from e
  return Figure, FigureCanvasAgg


def new_figure(width: float, height: float):
  """A blank matplotlib Figure of the plots' style (PlotError without matplotlib)."""
  figure_cls, canvas_cls = _matplotlib()
  fig = figure_cls(figsize=(width, height), dpi=110, layout="constrained")
  canvas_cls(fig)
  return fig


def png_path_problem(path: str) -> str | None:
  """Why a picture cannot be written at `path` (the "allowed: ..." half of a one-line error), or
  None if it can (also: matplotlib is importable)."""
  folder = os.path.dirname(os.path.abspath(path))
  if not path.lower().endswith(".png"):
    return "allowed: a file name ending in .png"
  if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
    return "cannot write it; allowed: a .png path in an existing, writable folder"
  return _matplotlib_problem()


def folder_problem(path: str) -> str | None:
  """Why pictures cannot be written into the folder `path` (made if missing), or None."""
  parent = os.path.dirname(os.path.abspath(path))
  if os.path.exists(path) and not os.path.isdir(path):
    return "is a file; allowed: a folder (made if missing)"
  target = path if os.path.isdir(path) else parent
  if not os.path.isdir(target) or not os.access(target, os.W_OK):
    return "cannot write there; allowed: a writable folder, or a new one in a writable folder"
  return _matplotlib_problem()


def _matplotlib_problem() -> str | None:
  try:
    _matplotlib()
  except PlotError as e:
    return str(e)
  return None


def check_plot_flag(values: Mapping[str, Any]) -> bool:
  """absl multi-flag validator of `python -m mdpo_jax.generate --plot` (with --show_steps): the
  picture is of the trajectory --show_steps prints; the path is checked before any model loads.
  A problem is one-line `PlotError` naming the flag."""
  path = values["plot"]
  if not path:
    return True
  if not values["show_steps"]:
    raise PlotError(f"--plot={path}: allowed only with --show_steps (it draws the trajectory "
                    "that --show_steps prints)")
  problem = png_path_problem(path)
  if problem:
    raise PlotError(f"--plot={path}: {problem}")
  return True


def save(fig, path: str | os.PathLike) -> Path:
  """Write `fig` as a PNG at `path`; returns the path."""
  fig.savefig(path, format="png")
  return Path(path)


def _step_colours(t_steps: int):
  import matplotlib as mpl
  from matplotlib import colors
  cmap = mpl.colormaps["viridis"].resampled(max(t_steps, 2)) if t_steps <= 24 \
      else mpl.colormaps["viridis"]
  return cmap, colors.Normalize(-0.5, t_steps - 0.5)


def trajectory_rgb(picture: TrajectoryPicture):
  """The picture's [T, G, 3] colours: the commit step's colour blended towards white as the
  confidence falls (never below `_MIN_SHADE` of the colour); grey where masked."""
  cmap, norm = _step_colours(picture.steps)
  rgb = np.asarray(cmap(norm(np.maximum(picture.commit_step_TxG, 0))))[..., :3]
  conf = np.nan_to_num(np.clip(picture.confidence_TxG, 0, 1))
  shade = (_MIN_SHADE + (1 - _MIN_SHADE) * conf)[..., None]
  rgb = 1 - shade * (1 - rgb)
  return np.where((picture.commit_step_TxG == MASKED)[..., None], _MASKED_RGB, rgb)


def trajectory_figure(picture: TrajectoryPicture, title: str = "", tokenizer=None):
  """Positions (x, the final text along the bottom) × steps (y, the state after each step); with
  a `tokenizer` each cell also shows its token (up to 64 positions). Long trajectories (LLaDA's
  256 tokens in 128 steps) get smaller cells, thinned axis labels and no cell text."""
  from matplotlib import cm
  t_steps, g = picture.commit_step_TxG.shape
  cell_w, cell_h = min(0.34, 16.0 / g), min(0.34, 10.0 / t_steps)
  fig = new_figure(max(5.0, cell_w * g + 2.4), max(2.4, cell_h * t_steps + 1.7))
  ax = fig.add_subplot()
  rgb = trajectory_rgb(picture)
  ax.imshow(rgb, aspect="auto", interpolation="nearest")
  ax.set_xlim(-0.5, g - 0.5)
  ax.set_ylim(t_steps - 0.5, -0.5)
  rows = range(t_steps) if t_steps <= 32 else np.linspace(0, t_steps - 1, 9).round().astype(int)
  ax.set_yticks(rows, [f"after {t}" for t in rows])
  ax.set_ylabel("denoising step")
  labels = picture.labels or tuple(str(int(i)) for i in picture.final_G)
  if g <= 96:
    ax.set_xticks(range(g), labels, fontsize=9 if g <= 40 else 6)
    for tick, label in zip(ax.get_xticklabels(), labels):
      tick.set_rotation(0 if len(label) <= 1 else 90)
  ax.set_xlabel("position (final text along the axis)" + ("; " if g >= 30 else "\n")
                + "red ×: a token taken back (re-masked)")
  if g <= _TEXT_CELLS_MAX and t_steps <= 32 and tokenizer is not None:
    for t, j in zip(*np.nonzero(picture.commit_step_TxG != MASKED)):
      text = token_labels(tokenizer, [picture.tokens_TxG[t, j]])[0]
      dark = rgb[t, j] @ np.array([0.299, 0.587, 0.114]) < 0.45   # luminance
      if len(text) <= 3:
        ax.text(j, t, text, ha="center", va="center", fontsize=7 if len(text) == 1 else 5,
                color="white" if dark else "black")
  rt, rj = np.nonzero(picture.remasked_TxG)
  ax.scatter(rj, rt, marker="x", s=350 * min(cell_w, cell_h) ** 2, c="red", linewidths=1.5)
  if g <= 96 and t_steps <= 32:   # white lines between cells
    ax.set_xticks(np.arange(-0.5, g), minor=True)
    ax.set_yticks(np.arange(-0.5, t_steps), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.6)
    ax.tick_params(which="minor", length=0)
  cmap, norm = _step_colours(t_steps)
  bar = fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.01,
                     fraction=0.05 if g > 30 else 0.08)
  bar.set_label("committed at step\n(pale = low confidence)", fontsize=8)
  if t_steps <= 24:
    bar.set_ticks(range(t_steps))
  ax.set_title(title or "denoising trajectory (grey: masked)", fontsize=10)
  return fig


def over_denoising_figure(curves: Mapping[str, StepCorrectness], title: str = ""):
  """One colour per model; solid: x̂0_t right and the final answer right; dashed: x̂0_t right
  but the final answer wrong (the answer was found, then lost)."""
  ncol = 2 if len(curves) <= 2 and max(len(k) for k in curves) <= 12 else 1   # legend fits
  fig = new_figure(7.2, 4.0 + 0.22 * 2 * len(curves) / ncol)
  ax = fig.add_subplot()
  colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
  for i, (label, c) in enumerate(curves.items()):
    colour = colours[i % len(colours)]
    steps = np.arange(1, len(c.right_final_right_T) + 1)
    size = dict(ms=max(3.0, 8.0 - 2.5 * i), lw=max(1.0, 3.0 - 0.8 * i))   # equal curves: all seen
    ax.plot(steps, c.right_final_right_T, "-o", color=colour, **size,
            label=f"{label}: right at t, final right (acc. {c.accuracy:.3f})")
    ax.plot(steps, c.right_final_wrong_T, "--s", color=colour, **size,
            label=f"{label}: right at t, final wrong (over-denoised {c.over_denoised:.3f})")
  ax.set_xlabel("denoising step t (the last one is the final answer)")
  ax.set_ylabel("fraction of problems with x̂0_t right")
  n = {c.n for c in curves.values()}
  ax.set_title(title or f"over-denoising ({'/'.join(map(str, sorted(n)))} problems)", fontsize=10)
  ax.set_ylim(bottom=0)
  ax.set_xticks(steps)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol,
            frameon=False)
  return fig


def _runs(runs: Mapping[str, Any]) -> dict[str, dict[str, TrainingCurves]]:
  return {name: (dict(v) if isinstance(v, Mapping) else {"": v}) for name, v in runs.items()}


def training_figure(runs: Mapping[str, TrainingCurves | Mapping[str, TrainingCurves]]):
  """One row per run (e.g. SFT, MDPO), one column per metric: loss, rollout reward (and the
  rollouts' over-denoising rate), accuracy per evaluation. A run given as {label: curves} (e.g.
  seeds) draws one line per label."""
  runs = _runs(runs)
  columns = ("loss", "reward", "accuracy")
  fig = new_figure(11.0, 2.5 * len(runs) + 0.4)
  axes = fig.subplots(len(runs), len(columns), squeeze=False)
  for r, (name, lines) in enumerate(runs.items()):
    for col, ax in zip(columns, axes[r]):
      drawn = 0
      for label, c in lines.items():
        prefix = f"{label} " if label else ""
        if col == "loss" and c.loss[0].size:
          ax.plot(*c.loss, _style("-", c.loss), ms=3, label=prefix + "loss")
          drawn += 1
        if col == "reward":
          for series, what, style in ((c.reward, "final reward", "-"),
                                      (c.over_denoised, "over-denoised", ":")):
            if series[0].size:
              ax.plot(*series, _style(style, series), ms=3, label=prefix + what)
              drawn += 1
        if col == "accuracy":
          for setting, (s, v) in c.accuracy.items():   # shrinking markers: equal values all seen
            ax.plot(s, v, "-o", ms=max(3.0, 8.0 - 2.5 * drawn), label=prefix + setting)
            drawn += 1
      if not drawn:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes,
                color="grey")
        ax.set_xticks([])
        ax.set_yticks([])
      else:
        ax.grid(alpha=0.3)
        if col != "loss" or len(lines) > 1:
          ax.legend(fontsize=7)
        if col == "accuracy":   # from 0, so that one evaluation is not a dot on a blown-up axis
          ax.set_ylim(0, max(0.05, 1.25 * np.nanmax([v.max(initial=0) for c in lines.values()
                                                     for _, v in c.accuracy.values()])))
      ax.set_title(f"{name}: {col}", fontsize=9)
      rl = any(c.reward[0].size for c in lines.values())
      ax.set_xlabel("update" if rl else "step", fontsize=8)
  return fig


def _style(line: str, series) -> str:
  """Markers too when a series has few points (a single point has no line to show)."""
  return line + ("o" if series[0].size <= 30 else "")


# ----------------------------------------------------------------------------- CLI helpers

def write_trajectories(path: str, traj, final_BxL, prompt_len: int, tokenizer, model_cfg, *,
                       rows: Sequence[int] | None = None,
                       titles: Sequence[str] = ()) -> list[Path]:
  """One trajectory PNG per drawn row (`rows`, default all; `titles[k]` for the k-th): `path` when
  one row is drawn, else `path` with `-<row>` before .png (what `python -m mdpo_jax.generate
  --show_steps --plot` writes). Returns the paths."""
  rows = list(range(_host(final_BxL).shape[0])) if rows is None else list(rows)
  stem = path[: -len(".png")] if path.lower().endswith(".png") else path
  written = []
  for k, row in enumerate(rows):
    final_G = _host(final_BxL)[row, prompt_len:]
    picture = trajectory_picture(traj, final_BxL, prompt_len=prompt_len,
                                 mask_id=model_cfg.mask_token_id, row=row,
                                 labels=token_labels(tokenizer, final_G))
    title = titles[k] if k < len(titles) else ""
    fig = trajectory_figure(picture, title if len(title) <= 110 else title[:107] + "...",
                            tokenizer)
    written.append(save(fig, path if len(rows) == 1 else f"{stem}-{row}.png"))
  return written


def update_curves_figure(curves, title: str = ""):
  """Held-out accuracy against optimiser updates, one line per run (`training.curves.Curve`),
  with its 95% interval as a band."""
  fig = new_figure(6.0, 3.6)
  ax = fig.subplots()
  for curve in curves:
    u = np.array([p.update for p in curve.points])
    acc = np.array([p.accuracy for p in curve.points])
    ax.plot(u, acc, "-o", ms=4, label=curve.name)
    ax.fill_between(u, [p.ci_low for p in curve.points], [p.ci_high for p in curve.points],
                    alpha=0.2)
  ax.set_xlabel("optimiser updates")
  ax.set_ylabel("accuracy")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(title, fontsize=9)
  return fig
