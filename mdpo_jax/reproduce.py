r"""The miniature reproduction: SFT → MDPO → diffu-GRPO (+ continued-SFT controls) → table.

  python -m mdpo_jax.reproduce --workdir /tmp/repro --seeds 0,1

For every seed: SFT a tiny model from scratch on Countdown (configs/countdown_tiny_sft.py);
from that checkpoint run MDPO (configs/countdown_tiny_mdpo.py), diffu-GRPO with the same number
of optimiser updates (configs/countdown_tiny_diffu_grpo.py), and two controls — the SFT model
trained further with the SFT loss for the same wall time as the MDPO run, on its training
problems, and on those plus MDPO's fresh prompts with solver answers. Every checkpoint is
evaluated on the same held-out problems (never used for any choice) with low-confidence
remasking and RCR, greedy and sampling at the rollout temperature; the table pools the seeds
and gives 95% Wilson intervals. Phases already finished in WORKDIR are reused (re-running the
command resumes). Next to the table (WORKDIR/table.md) go its figures (`mdpo_jax.plots`):
over_denoising.png (per step, how often x̂0_t was right, split by the final answer, for every
model, greedy low-confidence) and training_curves.png (every run's metrics.jsonl).

Sudoku (d1's 4×4) is the same pipeline on the Sudoku recipes (all three configs name one task):

  python -m mdpo_jax.reproduce --workdir /tmp/repro_sudoku --seeds 0 \
      --sft_config=configs/sudoku_tiny_sft.py --mdpo_config=configs/sudoku_tiny_mdpo.py \
      --grpo_config=configs/sudoku_tiny_diffu_grpo.py

Next to every pooled cell, table.md gives each model's gain over its SFT start on the same
problems: the paired 95% interval of the difference and McNemar's exact p
(`mdpo_jax.training.paired`), which resolve gains the separate intervals cannot.

Tuning looks only at the validation split (`--eval_split=validation`: problems of the training
distribution, disjoint from training, held-out and fresh prompts), with any recipe key
overridden on the command line, e.g.

  python -m mdpo_jax.reproduce --workdir /tmp/tune_lr --seeds 0 --phases mdpo \
      --eval_split validation --eval_problems 500 --mdpo_config.optim.lr=3e-4
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from absl import flags
from ml_collections import config_flags

from configs import countdown_tiny_diffu_grpo, countdown_tiny_mdpo, countdown_tiny_sft
from mdpo_jax import cli, plots
from mdpo_jax.training import checkpoint, curves, evaluation, paired, rl_loop, sft_loop

_SFT_CONFIG = config_flags.DEFINE_config_file(
    "sft_config", countdown_tiny_sft.__file__, "SFT recipe; override keys as "
    "--sft_config.optim.lr=1e-3 (also the control's recipe).")
_MDPO_CONFIG = config_flags.DEFINE_config_file(
    "mdpo_config", countdown_tiny_mdpo.__file__, "MDPO recipe (--mdpo_config.rl.group_size=32 ...).")
_GRPO_CONFIG = config_flags.DEFINE_config_file(
    "grpo_config", countdown_tiny_diffu_grpo.__file__, "diffu-GRPO recipe.")
_EVAL_SPLIT = flags.DEFINE_enum(
    "eval_split", "held_out", ["held_out", "validation"], "Problems the table is measured on: "
    "held_out (the result) or validation (from the training distribution, disjoint from both: "
    "what tuning may look at).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where runs, rows and the table go.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1"], "Seeds (each: SFT and the --phases runs).")
_SFT_STEPS = flags.DEFINE_integer("sft_steps", None, "Override the SFT recipe's steps.")
_RL_UPDATES = flags.DEFINE_integer("rl_updates", None, "Override MDPO's optimiser updates.")
_EVAL = flags.DEFINE_integer("eval_problems", 1000, "Held-out problems per evaluation.")
_CONTROL_LR = flags.DEFINE_float("control_lr", 3e-4, "Constant lr of the continued-SFT controls "
                                  "(3e-4 beat 1e-3 on the validation split; README).")
_STEPS = flags.DEFINE_list("eval_steps", None, "Denoising steps of the evaluated settings "
                           "(default: the MDPO recipe's rollout steps).")
_PHASES = flags.DEFINE_list(
    "phases", ["mdpo", "diffu_grpo", "control", "control_fresh"], "Runs after SFT, each evaluated beside the SFT "
    "start: any of mdpo, diffu_grpo, control, control_fresh (the controls need mdpo: they get "
    "MDPO's wall time; control_fresh also trains on MDPO's fresh prompts with solver answers).")
_CURVE_EVERY = flags.DEFINE_integer(
    "curve_every", 0, "> 0: the RL runs keep a checkpoint every N updates and each is evaluated "
    "(greedy low-confidence, the table's problems): curves.json/.png, accuracy against "
    "optimiser updates, and the updates MDPO needs to reach diffu-GRPO's best.")
_PARALLEL = flags.DEFINE_boolean(
    "parallel", False, "Run the seeds as concurrent processes, one XLA thread each. On this "
    "project's 2-core CPU two such processes each ran a training step at 0.56x the speed of one "
    "alone (1.27 vs 2.26 steps/s), so this buys only ~12% throughput.")


def _configs(seed: int):
  sft, mdpo, grpo = (copy.deepcopy(f.value) for f in (_SFT_CONFIG, _MDPO_CONFIG, _GRPO_CONFIG))
  for c in (sft, mdpo, grpo):
    c.seed = seed
    if _EVAL_SPLIT.value == "validation":
      c.task.val_size = max(c.task.val_size, _EVAL.value)
    else:
      c.task.eval_size = max(c.task.eval_size, _EVAL.value)
    # The runs' own end-of-run evaluation is a quick sanity check; the table's is `_evaluate`.
    c.eval.num_problems, c.eval.steps, c.eval.remasking = 50, (12,), ("low_confidence",)
    c.eval.trajectory_stats = False
  if _SFT_STEPS.value:
    sft.train.num_steps = _SFT_STEPS.value
  if _RL_UPDATES.value:
    mdpo.rl.num_updates = _RL_UPDATES.value
    grpo.rl.num_updates = max(_RL_UPDATES.value // grpo.rl.inner_iters, 1)
  if _CURVE_EVERY.value > 0:   # keep every N-th update's checkpoint for the curves
    for c in (mdpo, grpo):
      c.train.checkpoint_every = _CURVE_EVERY.value
      c.train.keep_checkpoints = c.rl.num_updates // _CURVE_EVERY.value + 2
  return sft, mdpo, grpo


def _evaluate(seed: int, checkpoint_dir: Path, rl_temperature: float) -> list[dict]:
  """Accuracy of a checkpoint on the seed's held-out (or validation) problems, through the
  evaluation path of `python -m mdpo_jax.evaluate`."""
  config = _configs(seed)[0]
  with config.unlocked():
    config.eval.trajectory_stats = True   # the table's over-denoising column
  steps = _STEPS.value or [_configs(seed)[1].rl.steps]
  settings = [evaluation.Setting(int(s), r, t) for s in steps
              for t in (0.0, rl_temperature) for r in ("low_confidence", "rcr")]
  rows, _ = evaluation.evaluate_checkpoint(config, checkpoint=str(checkpoint_dir),
                                           split=_EVAL_SPLIT.value, num_problems=_EVAL.value,
                                           settings=settings, per_problem=True)
  return rows


def _phase(out: Path, name: str, fn):
  """Run `fn` once; its JSON result is cached in out/name.json."""
  path = out / f"{name}.json"
  if path.exists():
    return json.loads(path.read_text())
  result = fn()
  path.write_text(json.dumps(result, indent=1, default=float))
  return result


def run_seed(root: Path, seed: int) -> dict:
  out = root / f"seed{seed}"
  out.mkdir(parents=True, exist_ok=True)
  sft, mdpo, grpo = _configs(seed)
  sft_ckpt = out / "sft" / "checkpoints"

  def train_sft():
    start = time.time()
    loop_result = sft_loop.train(sft, out / "sft")
    return {"minutes": (time.time() - start) / 60, "step": loop_result["step"]}

  info = {"sft": _phase(out, "sft_train", train_sft)}
  for c in (mdpo, grpo):
    c.model.init_checkpoint = str(sft_ckpt)

  def train_rl(config, name):
    def run():
      start = time.time()
      r = rl_loop.train(config, out / name)
      hist = r["history"]
      return {"minutes": (time.time() - start) / 60, "updates": r["update"],
              "reward_first": float(np.mean([h["reward/final_mean"] for h in hist[:10]])),
              "reward_last": float(np.mean([h["reward/final_mean"] for h in hist[-10:]]))}
    return run

  phases = check_phases(_PHASES.value)
  if "mdpo" in phases:
    info["mdpo"] = _phase(out, "mdpo_train", train_rl(mdpo, "mdpo"))
  if "diffu_grpo" in phases:
    info["diffu_grpo"] = _phase(out, "grpo_train", train_rl(grpo, "diffu_grpo"))
  # (table row, cache name of its evaluation, checkpoint directory)
  runs = [("SFT start", "eval_sft", sft_ckpt)]
  if "mdpo" in phases:
    runs.append(("MDPO", "eval_mdpo", out / "mdpo" / "checkpoints"))
  if "diffu_grpo" in phases:
    runs.append(("diffu-GRPO", "eval_diffu-grpo", out / "diffu_grpo" / "checkpoints"))
  if "control" in phases:
    info["control"] = _phase(out, "control_train", _train_control(seed, out, info["mdpo"]["minutes"]))
    runs.append(("continued SFT (control)", "eval_continued", out / "control" / "checkpoints"))
  if "control_fresh" in phases:
    info["control_fresh"] = _phase(out, "control_fresh_train", _train_control(
        seed, out, info["mdpo"]["minutes"], extra_fresh=mdpo.rl.fresh_size))
    runs.append(("continued SFT + fresh prompts (control)", "eval_control_fresh",
                 out / "control_fresh" / "checkpoints"))
  temp = mdpo.rl.temperature
  rows = {}
  for name, cache, ckpt in runs:
    rows[name] = _phase(out, cache, lambda ckpt=ckpt: _evaluate(seed, ckpt, temp))
  result = {"info": info, "rows": rows}
  if _CURVE_EVERY.value > 0:
    start = next(r for r in rows["SFT start"]
                 if r["remasking"] == "low_confidence" and r["temperature"] == 0)
    result["curves"] = {name: _phase(out, f"curve_{folder}", lambda folder=folder, name=name:
                                     _curve(seed, out / folder / "checkpoints", name, start))
                        for name, folder in (("MDPO", "mdpo"), ("diffu-GRPO", "diffu_grpo"))
                        if (out / folder / "checkpoints").is_dir()}
  return result


def _curve(seed: int, checkpoints: Path, name: str, start: dict) -> dict:
  """Greedy low-confidence accuracy of every checkpoint a run kept (the SFT start at update 0),
  on the table's problems: a `curves.Curve` as JSON."""
  config = _configs(seed)[0]
  steps = _STEPS.value or [_configs(seed)[1].rl.steps]
  setting = evaluation.Setting(int(steps[0]), "low_confidence", 0.0)
  points = [curves.Point(0, start["accuracy"], start["ci_low"], start["ci_high"])]
  for step in checkpoint.saved_steps(checkpoints):
    row = evaluation.evaluate_checkpoint(config, checkpoint=str(checkpoints), step=step,
                                         split=_EVAL_SPLIT.value, num_problems=_EVAL.value,
                                         settings=[setting])[0][0]
    points.append(curves.Point(step, row["accuracy"], row["ci_low"], row["ci_high"]))
  return curves.Curve(name, tuple(points)).to_json()


def curves_report(root: Path, results: dict[int, dict], seeds: list[int], problems: str,
                  problems_each: int) -> str:
  """Per seed, and pooled over the seeds: the accuracy-vs-updates table and MDPO's updates to
  reach diffu-GRPO's best (`problems` names what each seed evaluated, e.g. "1000 held-out
  problems", `problems_each` how many); writes curves.json and curves.png (the pooled curves
  when every seed has both, else those of the first seed that has curves; one line per run)."""
  lines = []
  for s in seeds:
    found = {k: curves.Curve.from_json(v) for k, v in results[s].get("curves", {}).items()}
    if len(found) < 1:
      continue
    lines += [f"Seed {s}: greedy low-confidence accuracy against optimiser updates "
              f"({problems}).", "", curves.curve_lines(list(found.values())), ""]
    if {"MDPO", "diffu-GRPO"} <= set(found):
      lines += [_efficiency_line(curves.efficiency(found["MDPO"], found["diffu-GRPO"])), ""]
  per_seed = [results[s].get("curves", {}) for s in seeds]
  first = next((s for s, c in zip(seeds, per_seed) if c), seeds[0])   # first seed with curves
  drawn = [curves.Curve.from_json(v) for v in results[first].get("curves", {}).values()]
  title = f"seed {first}: greedy accuracy vs updates"
  if len(seeds) > 1 and all({"MDPO", "diffu-GRPO"} <= set(c) for c in per_seed):
    drawn = [curves.pool([curves.Curve.from_json(c[name]) for c in per_seed], problems_each)
             for name in ("MDPO", "diffu-GRPO")]
    title = f"seeds {','.join(map(str, seeds))} pooled: greedy accuracy vs updates"
    lines += [f"Pooled over seeds {seeds} ({problems_each * len(seeds)} problems):", "",
              curves.curve_lines(drawn), "", _efficiency_line(curves.efficiency(*drawn)), ""]
  if lines:
    (root / "curves.json").write_text(json.dumps(
        {s: results[s].get("curves", {}) for s in seeds}, indent=1))
    try:
      plots.save(plots.update_curves_figure(drawn, title), root / "curves.png")
    except plots.PlotError as e:
      lines.append(f"(no curves.png: {e})")
  return "\n".join(lines)


def _efficiency_line(e: dict) -> str:
  best = f"diffu-GRPO's best {e['target']:.3f}"
  if e["slow_updates"] == 0:
    return f"{best} is its SFT start (update 0): it never improved, so there is no ratio."
  if e["fast_updates"] is None:
    return f"{best} at update {e['slow_updates']}; MDPO never reaches it."
  return (f"{best} at update {e['slow_updates']}; MDPO first reaches it at update "
          f"{e['fast_updates']} (ratio {e['ratio']:.1f}).")


PHASES = ("mdpo", "diffu_grpo", "control", "control_fresh")


def check_phases(phases: list[str]) -> list[str]:
  """The --phases list, validated (unknown names, or control without mdpo, are errors)."""
  phases = list(phases)
  unknown = sorted(set(phases) - set(PHASES))
  if unknown:
    raise ValueError(f"--phases={','.join(phases)}: unknown {unknown}; allowed {PHASES}")
  if {"control", "control_fresh"} & set(phases) and "mdpo" not in phases:
    raise ValueError(f"--phases={','.join(phases)}: a control runs for MDPO's wall time, so it "
                     "needs mdpo")
  return phases


def _train_control(seed: int, out: Path, minutes: float, extra_fresh: int = 0):
  """The continued-SFT control: the SFT recipe from its checkpoint, for `minutes` of training;
  with `extra_fresh`, on the training problems plus the first `extra_fresh` of RL's fresh ones."""
  sft_ckpt = out / "sft" / "checkpoints"
  control = _configs(seed)[0]
  control.task.sft_extra_fresh = extra_fresh
  control.model.init_checkpoint = str(sft_ckpt)
  control.optim.lr = _CONTROL_LR.value
  control.optim.schedule, control.optim.warmup_steps = "constant", 0
  control.train.num_steps = 1_000_000
  control.train.max_minutes = minutes

  def train_control():
    start = time.time()
    r = sft_loop.train(control, out / ("control_fresh" if extra_fresh else "control"))
    return {"minutes": (time.time() - start) / 60, "step": r["step"]}
  return train_control


def _column(row: dict) -> str:
  return f"{row['remasking']} T={row['temperature']:g} ({row['tokens_per_step']:g} tok/step)"


def _dense(results: dict[int, dict], seeds: list[int]) -> bool:
  """Whether the task's reward is partial credit (Sudoku), so mean reward ≠ accuracy."""
  return any(abs(r.get("mean_reward", r["accuracy"]) - r["accuracy"]) > 1e-9
             for s in seeds for rows in results[s]["rows"].values() for r in rows)


def table(results: dict[int, dict], seeds: list[int]) -> str:
  """Accuracy per model and setting, pooled over the seeds, with 95% Wilson intervals (and the
  pooled mean reward where the reward gives partial credit)."""
  names = list(next(iter(results.values()))["rows"])
  first = results[seeds[0]]["rows"][names[0]]
  dense = _dense(results, seeds)
  head = ("| model | " + " | ".join(_column(r) for r in first)
          + " | over-denoised (greedy LC) |")
  lines = [head, "|---|" + "---|" * (len(first) + 1)]
  greedy_lc = next(j for j, r in enumerate(first)
                   if r["remasking"] == "low_confidence" and r["temperature"] == 0)
  for name in names:
    cells = []
    for j in range(len(first)):
      cell_rows = [results[s]["rows"][name][j] for s in seeds]
      k = sum(round(r["accuracy"] * r["n"]) for r in cell_rows)
      n = sum(r["n"] for r in cell_rows)
      lo, hi = evaluation.wilson_interval(k, n)
      cells.append(f"{k / n:.3f} [{lo:.3f}, {hi:.3f}]")
      if dense:
        cells[-1] += f" r={sum(r['mean_reward'] * r['n'] for r in cell_rows) / n:.3f}"
    over = np.mean([results[s]["rows"][name][greedy_lc].get("over_denoised", np.nan)
                    for s in seeds])
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {over:.3f} |")
  return "\n".join(lines)


def gains_table(results: dict[int, dict], seeds: list[int]) -> str:
  """Each model's accuracy gain over the SFT start on the same problems, pooled over the seeds:
  points with the paired 95% interval, problems gained/lost and McNemar's exact p. Empty when
  some row has no per-problem outcomes (an evaluation cached before they were kept)."""
  names = list(results[seeds[0]]["rows"])
  first = results[seeds[0]]["rows"][names[0]]
  if not all("solved" in r for s in seeds for name in names for r in results[s]["rows"][name]):
    return ""
  lines = ["| gain over the SFT start, points | " + " | ".join(_column(r) for r in first) + " |",
           "|---|" + "---|" * len(first)]
  for name in names[1:]:
    cells = [paired.paired_gain(
        np.concatenate([results[s]["rows"][names[0]][j]["solved"] for s in seeds]),
        np.concatenate([results[s]["rows"][name][j]["solved"] for s in seeds])).cell()
        for j in range(len(first))]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _settings_line(mdpo, grpo, phases: list[str]) -> str:
  parts = [f"MDPO: {mdpo.rl.num_updates} updates, {mdpo.rl.prompts_per_update} prompts × G="
           f"{mdpo.rl.group_size}, rollouts of {mdpo.rl.gen_length} tokens in {mdpo.rl.steps} steps "
           f"({mdpo.rl.remasking}), top-{mdpo.rl.top_k} steps, T={mdpo.rl.temperature}, lr "
           f"{mdpo.optim.lr}, prompts from {mdpo.rl.prompt_source}"]
  if "diffu_grpo" in phases:
    parts.append(f"diffu-GRPO: {grpo.rl.num_updates} rollout batches × {grpo.rl.inner_iters} "
                 "inner updates")
  if "control" in phases:
    parts.append(f"control: continued SFT at lr {_CONTROL_LR.value} for MDPO's wall time")
  if "control_fresh" in phases:
    parts.append(f"control + fresh prompts: the same, on the SFT problems plus MDPO's "
                 f"{mdpo.rl.fresh_size} fresh prompts with solver answers")
  return "; ".join(parts) + "."


def _runs_table(results: dict[int, dict], seeds: list[int]) -> str:
  """Per seed: minutes of each run, RL reward first → last 10 updates, control steps."""
  def cell(info, key, fmt):
    return fmt(info[key]) if key in info else "—"
  lines = ["| seed | SFT min | MDPO min | MDPO reward first→last 10 | GRPO reward first→last 10 |"
           " control steps | control + fresh steps |", "|---|---|---|---|---|---|---|"]
  reward = lambda r: f"{r['reward_first']:.3f}→{r['reward_last']:.3f}"  # noqa: E731
  for s in seeds:
    i = results[s]["info"]
    sft_min = i["sft"].get("minutes")   # None: an SFT run copied in from elsewhere
    lines.append(f"| {s} | {'—' if sft_min is None else format(sft_min, '.1f')} | "
                 f"{cell(i, 'mdpo', lambda r: format(r['minutes'], '.1f'))} | "
                 f"{cell(i, 'mdpo', reward)} | {cell(i, 'diffu_grpo', reward)} | "
                 f"{cell(i, 'control', lambda r: str(r['step']))} | "
                 f"{cell(i, 'control_fresh', lambda r: str(r['step']))} |")
  return "\n".join(lines)


# (table row, run folder under seed<s>/) of every run whose training curves are drawn
_RUN_FOLDERS = (("SFT", "sft"), ("MDPO", "mdpo"), ("diffu-GRPO", "diffu_grpo"),
                ("continued SFT (control)", "control"),
                ("continued SFT + fresh prompts (control)", "control_fresh"))


def write_figures(root: Path, results: dict[int, dict], seeds: list[int]) -> list[Path]:
  """The figures next to table.md: over_denoising.png (the table's greedy low-confidence
  setting, each model's curves pooled over the seeds) and training_curves.png (every run's
  metrics.jsonl, one line per seed). Returns the files written."""
  written = []
  names = list(results[seeds[0]]["rows"])
  curves = {}
  for name in names:
    per_seed = [next(r for r in results[s]["rows"][name]
                     if r["remasking"] == "low_confidence" and r["temperature"] == 0)
                for s in seeds]
    if all("step_curves" in r for r in per_seed):
      curves[name] = plots.pool([plots.StepCorrectness.from_json(r["step_curves"])
                                 for r in per_seed])
  if curves:
    first = results[seeds[0]]["rows"][names[0]][0]
    seed_text = f"seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}"
    split = _EVAL_SPLIT.value.replace("_", "-")
    title = (f"over-denoising on {next(iter(curves.values())).n} {split} problems "
             f"({seed_text}): greedy low-confidence, {first['tokens_per_step']:g} tokens/step")
    written.append(plots.save(plots.over_denoising_figure(curves, title),
                              root / "over_denoising.png"))
  runs = {}
  for name, folder in _RUN_FOLDERS:
    files = {f"seed {s}": root / f"seed{s}" / folder / "metrics.jsonl" for s in seeds}
    if all(f.is_file() for f in files.values()):
      runs[name] = {k: plots.training_curves(plots.read_metrics(f)) for k, f in files.items()}
  if runs:
    written.append(plots.save(plots.training_figure(runs), root / "training_curves.png"))
  return written


def check_task(sft, mdpo, grpo, phases: list[str]) -> None:
  """The recipes a run uses must pose the same task (one-line error otherwise): SFT's and
  MDPO's always (MDPO's sets the evaluated sampler), diffu-GRPO's only if that phase runs."""
  names = [c.task.name for c in (sft, mdpo, grpo)]
  if len(set(names if "diffu_grpo" in phases else names[:2])) > 1:
    raise ValueError(f"--sft_config/--mdpo_config/--grpo_config pose different tasks {names}; "
                     "give the three recipes of one task (e.g. configs/sudoku_tiny_*.py)")


def task_line(config) -> str:
  """What the problems are, for the table's heading."""
  t = config.task
  if t.name == "sudoku":
    return (f"4×4 Sudoku, {t.empty_min}–{t.empty_max} empty cells (unique solutions); accuracy "
            "= solved outright, r = mean reward (d1's fraction of empty cells right)")
  if t.name == "countdown":
    return (f"Countdown, 3 numbers in {t.number_min}–{t.number_max}, targets ≤ {t.target_max} "
            f"(task.target_sampling={t.target_sampling}); answer style {t.answer_style}")
  return f"task {t.name}"


def main(argv):
  del argv
  root = Path(_WORKDIR.value)
  try:
    seeds = [int(s) for s in _SEEDS.value]
  except ValueError:
    raise ValueError(f"--seeds={','.join(_SEEDS.value)}: allowed comma-separated integers, "
                     "e.g. 0,1") from None
  check_task(*_configs(seeds[0]), check_phases(_PHASES.value))
  if _PARALLEL.value and len(seeds) > 1:
    env = dict(os.environ, XLA_FLAGS="--xla_cpu_multi_thread_eigen=false "
               "intra_op_parallelism_threads=1")
    passthrough = [a for a in sys.argv[1:] if not a.startswith(("--seeds", "--parallel",
                                                                "--noparallel"))]
    procs = [subprocess.Popen([sys.executable, "-m", "mdpo_jax.reproduce", *passthrough,
                               f"--seeds={s}", "--noparallel"], env=env) for s in seeds]
    if any(p.wait() for p in procs):
      raise SystemExit("a seed's run failed; see its output above (re-run to resume)")
  results = {s: run_seed(root, s) for s in seeds}  # cached phases: only reads results
  sft, mdpo, grpo = _configs(seeds[0])
  problems = f"{_EVAL.value} {_EVAL_SPLIT.value.replace('_', '-')} problems"
  gains = gains_table(results, seeds)
  lines = [
      f"Seeds {seeds}; {problems} per seed (pooled: {_EVAL.value * len(seeds)}); "
      f"{task_line(sft)}; gen_length {sft.eval.gen_length}, one block; 95% Wilson intervals.",
      _settings_line(mdpo, grpo, check_phases(_PHASES.value)), "",
      table(results, seeds), ""]
  if gains:
    lines += ["Gains over the SFT start on the same problems (pooled over the seeds): "
              "points, paired 95% interval (Newcombe), problems gained/lost, McNemar's exact p.",
              "", gains, ""]
  lines += [_runs_table(results, seeds), "", curves_report(root, results, seeds, problems,
                                                              _EVAL.value)]
  text = "\n".join(lines)
  (root / "table.md").write_text(text + "\n")
  print(text)
  try:
    for path in write_figures(root, results, seeds):
      print(f"figure: {path}")
  except plots.PlotError as e:   # e.g. no matplotlib: the table stands without its figures
    print(f"figures not drawn: {e}")


if __name__ == "__main__":
  cli.run(main, required=["workdir"])
