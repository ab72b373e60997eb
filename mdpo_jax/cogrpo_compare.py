r"""Co-GRPO in miniature: a learned few-step schedule against the hand one, one command.

  python -m mdpo_jax.cogrpo_compare --workdir /tmp/cogrpo_compare --task countdown \
      --sft_checkpoint /tmp/countdown_sft/checkpoints

At the recipe's small step budget (Countdown: 24 tokens in 3 steps,
configs/countdown_tiny_cogrpo.py; Sudoku: 24 tokens in 4 steps, configs/sudoku_tiny_cogrpo.py),
from the SFT checkpoint:
1. trains the three Co-GRPO modes (`--modes`): schedule_only (φ, θ frozen), model_only (θ with
   the hand schedule) and joint (both), one run each in WORKDIR/<mode>_seed<seed>; a finished run is
   reused (the trainer resumes from its final checkpoint and stops at once);
2. evaluates on the same held-out (or `--eval_split=validation`) problems, 95% Wilson intervals:
   the hand schedule (the SFT checkpoint, the plain scan sampler at the recipe's steps, greedy
   and at the rollout temperature) and every run's learned deterministic schedule (φ's mode, with
   that run's θ; for model_only φ is the hand one), decoded two ways (training/cogrpo_eval.py):
   "argmax" = the learned tokens per step with argmax tokens and plain confidence ranking (the
   greedy analogue), "as learned" = φ's own mode (its temperature and ranking temperature);
3. the efficiency claim in miniature: the hand schedule's greedy accuracy at `--hand_steps`
   (default 3, 4, 6, 8, 12, 24), and the fewest hand steps that match the best learned schedule;
4. writes WORKDIR/table.md, WORKDIR/results.json and WORKDIR/schedule.png (tokens per step,
   temperature and ranking temperature per step of the learned schedules against the hand one;
   skipped with a note without matplotlib), and prints the table.

Accuracy is the share of problems with full reward (Countdown: solved; Sudoku: every empty cell
right), mean reward the task's own score, as `training/evaluation.py` scores them. Evaluations
are cached in WORKDIR/eval_<name>_<split><n>.json and redone when what they depend on changed (a
run's updates, the checkpoint, the swept steps, the seed). `--seed` defaults to the SFT run's
(saved with its checkpoint): the task's splits follow it.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import types
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from absl import flags

from configs import countdown_tiny_cogrpo, sudoku_tiny_cogrpo
from mdpo_jax import cli, plots, tasks
from mdpo_jax import config as config_lib
from mdpo_jax.rl import cogrpo
from mdpo_jax.training import checkpoint, cogrpo_eval, evaluation, rl_loop, setup

RECIPES = {"countdown": countdown_tiny_cogrpo, "sudoku": sudoku_tiny_cogrpo}
HAND_STEPS = ("3", "4", "6", "8", "12", "24")


def define_flags() -> types.SimpleNamespace:
  """The command's flags, defined only when it runs as a command: importing this module (tests,
  notebooks) defines none, so it never clashes with another command's flags in one process."""
  d = flags   # noqa: the namespace's lines stay short
  return types.SimpleNamespace(
      workdir=d.DEFINE_string("workdir", None, "Where the runs, the tables and the plot go."),
      task=d.DEFINE_string("task", "countdown", "countdown or sudoku (its tiny Co-GRPO recipe)."),
      sft=d.DEFINE_string("sft_checkpoint", None, "The SFT run's WORKDIR/checkpoints folder."),
      modes=d.DEFINE_list("modes", list(cogrpo.MODES), "Co-GRPO modes to train and evaluate."),
      updates=d.DEFINE_integer("rl_updates", None, "Updates per run (default: the recipe's)."),
      seed=d.DEFINE_integer("seed", None, "Seed of the runs and the task splits (default: the "
                            "SFT run's, as saved with its checkpoint)."),
      eval=d.DEFINE_integer("eval_problems", 500, "Problems evaluated."),
      eval_split=d.DEFINE_string("eval_split", "held_out", "held_out (the result) or "
                                 "validation (for tuning)."),
      hand_steps=d.DEFINE_list("hand_steps", list(HAND_STEPS), "Steps of the hand-schedule "
                               "sweep (greedy; each must divide the generation length)."))


def check_inputs(task: str, sft_checkpoint: str | None, modes, hand_steps, eval_split: str,
                 eval_problems: int) -> list[int]:
  """The flags validated (one-line ValueError / FileNotFoundError); returns the sweep steps."""
  if task not in RECIPES:
    raise ValueError(f"--task={task}: allowed one of {tuple(RECIPES)}")
  bad = [m for m in modes if m not in cogrpo.MODES]
  if bad or not modes:
    raise ValueError(f"--modes={','.join(modes)}: allowed any of {cogrpo.MODES}")
  if eval_split not in ("held_out", "validation"):
    raise ValueError(f"--eval_split={eval_split}: allowed held_out or validation")
  if eval_problems < 1:
    raise ValueError(f"--eval_problems={eval_problems}: allowed an integer ≥ 1")
  if not sft_checkpoint or not Path(sft_checkpoint).is_dir():
    raise FileNotFoundError(f"--sft_checkpoint={sft_checkpoint}: not a folder; allowed: an SFT "
                            "run's WORKDIR/checkpoints (python -m mdpo_jax.train --config "
                            f"configs/{task}_tiny_sft.py --workdir W, then W/checkpoints)")
  gen = RECIPES[task].get_config().rl.gen_length
  try:
    steps = [int(s) for s in hand_steps]
  except ValueError:
    steps = []
  if not steps or any(s < 1 or gen % s for s in steps):
    raise ValueError(f"--hand_steps={','.join(hand_steps)}: allowed positive integers that "
                     f"divide the generation length {gen}")
  return steps


def check_sft_run(task: str, sft_checkpoint: str, seed: int | None) -> int:
  """The SFT checkpoint's saved config checked against `task` (one-line errors); returns the seed
  to use: `seed`, or the SFT run's when None (its task splits: the held-out problems stay
  disjoint from what it trained on)."""
  try:
    saved, _ = checkpoint.saved_config(sft_checkpoint)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"--sft_checkpoint={sft_checkpoint}: {e}; allowed: an SFT run's "
                            "WORKDIR/checkpoints") from None
  want = RECIPES[task].get_config()
  saved_task = saved.get("task", {}).get("name")
  if saved_task not in (None, want.task.name):
    raise ValueError(f"--sft_checkpoint={sft_checkpoint}: a {saved_task} run; --task={task} "
                     f"needs a {want.task.name} SFT run")
  if seed is None:
    return int(saved.get("seed", 0))
  if "seed" in saved and int(saved["seed"]) != seed:
    logging.warning("--seed=%d differs from the SFT run's seed %d: its held-out problems may "
                    "not be those the SFT run held out", seed, saved["seed"])
  return seed


def recipe(task: str, mode: str, *, sft_checkpoint: str, seed: int, rl_updates: int | None,
           eval_problems: int, eval_split: str):
  """The task's Co-GRPO recipe in `mode` from the SFT checkpoint. Its evaluation section is the
  table's (the learned schedule's lengths; the run's own end-of-run check: 50 problems)."""
  c = RECIPES[task].get_config()
  c.seed = seed
  c.model.init_checkpoint = str(sft_checkpoint)
  c.rl.cogrpo_mode = mode
  if rl_updates:
    c.rl.num_updates = rl_updates
  if eval_split == "validation":
    c.task.val_size = max(c.task.val_size, eval_problems)
  else:
    c.task.eval_size = max(c.task.eval_size, eval_problems)
  c.eval.gen_length, c.eval.block_length = c.rl.gen_length, c.rl.block_lengths[0]
  c.eval.steps, c.eval.remasking = (c.rl.steps,), ("low_confidence",)
  c.eval.num_problems = min(50, c.task.eval_size)
  c.eval.trajectory_stats = False
  return c


def _cached(path: Path, key: dict, fn):
  """`fn()`'s JSON result, computed once per `key` (what it depends on; cached at `path`)."""
  if path.exists():
    cached = json.loads(path.read_text())
    if cached.get("key") == key:
      return cached["value"]
  value = fn()
  path.write_text(json.dumps({"key": key, "value": value}, indent=1, default=float))
  return value


def train(raw, workdir: Path) -> dict:
  """Train (or resume to the end) one mode; its θ, φ, model config and training minutes (summed
  over the sessions of this driver that trained it: its workdir's train_info.json)."""
  start = time.time()
  result = rl_loop.train(raw, workdir)
  info_path = workdir / "train_info.json"
  info = (json.loads(info_path.read_text()) if info_path.exists()
          else {"minutes": 0.0, "updates": 0})
  if info["updates"] != int(result["update"]):   # this session trained: add its time
    info = {"minutes": info["minutes"] + (time.time() - start) / 60,
            "updates": int(result["update"])}
    info_path.write_text(json.dumps(info))
  if result.get("stopped") is not None or result["update"] < raw.rl.num_updates:
    raise SystemExit(f"{workdir}: stopped after update {result['update']} of "
                     f"{raw.rl.num_updates} ({result.get('stopped')}); re-run to resume")
  report = json.loads((workdir / "cogrpo_schedule.json").read_text())
  phi = {k: jnp.asarray(v, jnp.float32) for k, v in report["phi"].items()}
  return {"params": result["params"], "model_cfg": result["model_config"], "phi": phi,
          "report": report, **info}


def evaluate_run(root: Path, name: str, run: dict, raw, problems, suffix: str) -> list[dict]:
  """The learned schedule of one trained run, argmax and as learned (cached)."""
  config = config_lib.parse(raw)
  spec = cogrpo.spec_for(config.rl, config.rl.block_lengths[0])
  task = tasks.build(config.task, config.seed)
  tokenizer = setup.make_tokenizer(config)

  def rows():
    return [cogrpo_eval.evaluate_schedule(config, run["model_cfg"], run["params"], tokenizer,
                                          task, problems, spec, run["phi"], decoding)
            for decoding in cogrpo_eval.DECODINGS]
  key = {"updates": run["updates"], "problems": suffix, "seed": config.seed}
  return _cached(root / f"eval_{name}_{suffix}.json", key, rows)


def evaluate_hand(root: Path, raw, sft_checkpoint: str, hand_steps: list[int], *, split: str,
                  n: int, suffix: str) -> dict:
  """The SFT checkpoint with the plain sampler: the recipe's steps greedy and at the rollout
  temperature, and the greedy sweep over `hand_steps` (cached)."""
  steps, temp = int(raw.rl.steps), float(raw.rl.temperature)

  def rows():
    settings = [evaluation.Setting(steps, "low_confidence", 0.0),
                evaluation.Setting(steps, "low_confidence", temp)]
    settings += [evaluation.Setting(s, "low_confidence", 0.0) for s in hand_steps if s != steps]
    out, _ = evaluation.evaluate_checkpoint(raw, checkpoint=sft_checkpoint, split=split,
                                            num_problems=n, settings=settings)
    sweep = {r["steps"]: r for r in out if r["temperature"] == 0.0}
    return {"hand": out[:2], "sweep": [sweep[s] for s in sorted(set(hand_steps) | {steps})
                                       if s in sweep]}
  key = {"checkpoint": str(sft_checkpoint), "hand_steps": sorted(hand_steps), "steps": steps,
         "temperature": temp, "problems": suffix, "seed": int(raw.seed)}
  return _cached(root / f"eval_sft_seed{int(raw.seed)}_{suffix}.json", key, rows)


def hand_steps_matching(sweep: list[dict], accuracy: float) -> int | None:
  """The fewest hand steps whose greedy accuracy is at least `accuracy` (None if none is)."""
  ok = [r["steps"] for r in sweep if r["accuracy"] >= accuracy]
  return min(ok) if ok else None


def _cell(r: dict) -> str:
  return f"{r['accuracy']:.3f} [{max(r['ci_low'], 0.0):.3f}, {min(r['ci_high'], 1.0):.3f}]"


def _counts_text(counts) -> str:
  return "+".join(str(int(c)) for c in counts)


def _decoding_text(r: dict) -> str:
  if r.get("sampler") != "scheduled":
    return "greedy" if r["temperature"] == 0 else f"T={r['temperature']:g}"
  if r["decoding"] == "argmax":
    return "argmax"
  knobs = r["schedule"]
  text = "as learned (T " + "/".join(f"{t:.2f}" for t in knobs["temperature"])
  if knobs.get("rank_temperature"):
    text += ", τ " + "/".join(f"{t:.2f}" for t in knobs["rank_temperature"])
  return text + ")"


def best_learned(results: dict) -> tuple[str, dict] | None:
  """(mode, row) of the most accurate learned-schedule row over the runs (argmax rows first on
  ties), or None without runs."""
  rows = [(mode, r) for mode, res in results["runs"].items() for r in res["rows"]]
  if not rows:
    return None
  return max(rows, key=lambda mr: (mr[1]["accuracy"], mr[1]["decoding"] == "argmax"))


def table(results: dict) -> str:
  """The markdown tables: every method at the recipe's steps, then the hand-schedule sweep."""
  hand = _counts_text(results["hand_counts"])
  lines = [f"Co-GRPO, {results['task']}: {results['n']} {results['split'].replace('_', '-')} "
           f"problems, {results['gen_length']} tokens in {results['steps']} steps (one block), "
           f"from the SFT checkpoint {results['sft_checkpoint']}; seed {results['seed']}; "
           f"updates per run: {results['updates']}; 95% Wilson intervals. argmax: the learned "
           "tokens per step with argmax tokens and confidence ranking (the greedy analogue); "
           "as learned: φ's mode, its temperature T and ranking temperature τ (sampled).", "",
           "| method | decoding | steps | tokens per step | accuracy [95% CI] | mean reward | "
           "train min |", "|---|---|---|---|---|---|---|"]
  for r in results["hand"]:
    lines.append(f"| SFT, hand schedule | {_decoding_text(r)} | {r['steps']} | {hand} | "
                 f"{_cell(r)} | {r['mean_reward']:.3f} | — |")
  for mode, res in results["runs"].items():
    for r in res["rows"]:
      lines.append(f"| Co-GRPO {mode} | {_decoding_text(r)} | {r['steps']} | "
                   f"{_counts_text(r['schedule']['counts'])} | {_cell(r)} | "
                   f"{r['mean_reward']:.3f} | {res['minutes']:.1f} |")
  lines += ["", "The hand schedule (SFT checkpoint, plain sampler, greedy) at more steps:", "",
            "| steps | tokens per step | accuracy [95% CI] | mean reward |", "|---|---|---|---|"]
  lines += [f"| {r['steps']} | {r['tokens_per_step']:g} | {_cell(r)} | {r['mean_reward']:.3f} |"
            for r in results["sweep"]]
  best = best_learned(results)
  if best is not None:
    mode, r = best
    match = hand_steps_matching(results["sweep"], r["accuracy"])
    where = (f"the fewest hand steps reaching it: {match}" if match is not None else
             "no swept hand step count reaches it")
    lines += ["", f"Best learned {r['steps']}-step schedule: Co-GRPO {mode}, "
              f"{_decoding_text(r)}, accuracy {r['accuracy']:.3f}; {where} (greedy)."]
  return "\n".join(lines)


def schedule_series(results: dict) -> dict[str, dict[str, list[float]]]:
  """Per schedule drawn (hand, then joint and schedule_only when run): tokens per step,
  temperature and ranking temperature (0 = the plain confidence ranking) per step."""
  steps = results["steps"]
  out = {"hand": {"counts": list(results["hand_counts"]),
                  "temperature": [results["rl_temperature"]] * steps,
                  "rank_temperature": [0.0] * steps}}
  for mode in ("joint", "schedule_only"):
    if mode in results["runs"]:
      rep = results["runs"][mode]["schedule"]
      out[mode] = {"counts": rep["counts"], "temperature": rep["temperature"],
                   "rank_temperature": rep.get("rank_temperature") or [0.0] * steps}
  return out


def schedule_figure(series: dict, title: str = ""):
  """Three panels (tokens per step, temperature, ranking temperature) against the step."""
  fig = plots.new_figure(10.0, 3.2)   # PlotError without matplotlib
  axes = fig.subplots(1, 3)
  labels = {"counts": "tokens committed", "temperature": "sampling temperature T",
            "rank_temperature": "ranking temperature τ"}
  for ax, (key, label) in zip(axes, labels.items()):
    for name, s in sorted(series.items(), key=lambda kv: kv[0] == "hand"):   # hand on top
      x = np.arange(1, len(s[key]) + 1)
      hand = name == "hand"
      ax.plot(x, s[key], marker="x" if hand else "o", linestyle="--" if hand else "-",
              color="black" if hand else None, label=name)
    ax.set_xlabel("denoising step")
    ax.set_title(label, fontsize=9)
    ax.set_xticks(np.arange(1, len(series["hand"][key]) + 1))
  axes[0].legend(fontsize=8)
  if title:
    fig.suptitle(title, fontsize=9)
  return fig


def run(root: Path, task: str, sft_checkpoint: str, modes, hand_steps: list[int], *, seed: int,
        rl_updates: int | None, eval_problems: int, eval_split: str) -> dict:
  """Train and evaluate every mode, evaluate the hand schedule; write results.json, table.md."""
  root.mkdir(parents=True, exist_ok=True)
  kw = dict(sft_checkpoint=sft_checkpoint, seed=seed, rl_updates=rl_updates,
            eval_problems=eval_problems, eval_split=eval_split)
  base = recipe(task, modes[0], **kw)
  config = config_lib.parse(base)
  split_task = tasks.build(config.task, config.seed)
  problems = (split_task.validation() if eval_split == "validation"
              else split_task.held_out())[:eval_problems]
  n = len(problems)
  suffix = f"{eval_split}{n}"
  spec = cogrpo.spec_for(config.rl, config.rl.block_lengths[0])
  results = {"task": task, "split": eval_split, "n": n, "seed": seed, "steps": spec.steps,
             "gen_length": spec.gen_length, "hand_counts": spec.hand_counts().tolist(),
             "rl_temperature": float(config.rl.temperature), "updates": config.rl.num_updates,
             "sft_checkpoint": str(sft_checkpoint), "runs": {}}
  start = time.time()
  results.update(evaluate_hand(root, base, sft_checkpoint, hand_steps, split=eval_split, n=n,
                               suffix=suffix))
  print(f"hand schedule: evaluated in {(time.time() - start) / 60:.1f} min", flush=True)
  for mode in modes:
    raw = recipe(task, mode, **kw)
    trained = train(raw, root / f"{mode}_seed{seed}")
    start = time.time()
    rows = evaluate_run(root, f"{mode}_seed{seed}", trained, raw, problems, suffix)
    results["runs"][mode] = {"minutes": trained["minutes"], "updates": trained["updates"],
                             "schedule": {k: v for k, v in trained["report"].items()
                                          if k != "phi"}, "rows": rows}
    print(f"{mode}: trained {trained['minutes']:.1f} min, evaluated "
          f"{(time.time() - start) / 60:.1f} min", flush=True)
  text = table(results)
  (root / "table.md").write_text(text + "\n")
  (root / "results.json").write_text(json.dumps(results, indent=1, default=float))
  results["table"] = text
  return results


def write_plot(root: Path, results: dict) -> Path | None:
  """WORKDIR/schedule.png, or None (logged) without matplotlib."""
  title = (f"Co-GRPO {results['task']}: {results['gen_length']} tokens in {results['steps']} "
           "steps, learned deterministic schedules vs the hand one")
  try:
    return plots.save(schedule_figure(schedule_series(results), title), root / "schedule.png")
  except plots.PlotError as e:
    logging.warning("schedule.png not drawn: %s", e)
    print(f"schedule.png not drawn: {e}")
    return None


def main(f: types.SimpleNamespace, argv):
  del argv
  hand_steps = check_inputs(f.task.value, f.sft.value, f.modes.value, f.hand_steps.value,
                            f.eval_split.value, f.eval.value)
  seed = check_sft_run(f.task.value, f.sft.value, f.seed.value)
  start = time.time()
  root = Path(f.workdir.value)
  results = run(root, f.task.value, f.sft.value, f.modes.value, hand_steps, seed=seed,
                rl_updates=f.updates.value, eval_problems=f.eval.value,
                eval_split=f.eval_split.value)
  print(results["table"])
  path = write_plot(root, results)
  if path is not None:
    print(f"figure: {path}")
  print(f"\nwall time {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
  cli.run(functools.partial(main, define_flags()), required=["workdir", "sft_checkpoint"])
