r"""Evaluation CLI: held-out accuracy of a run's checkpoint for any sampler settings.

  python -m mdpo_jax.evaluate --config configs/countdown_tiny_sft.py \
      --checkpoint /tmp/countdown_sft/checkpoints \
      --config.eval.steps=64,16 --config.eval.remasking=low_confidence,rcr

Prints one row per (steps, remasking) setting: accuracy with its 95% interval and, with
`eval.trajectory_stats`, how often some intermediate prediction x̂0_t was right and how often it
was right while the final answer was wrong (over-denoising). `--checkpoint` is a run's
checkpoint folder (a LoRA run's adapters are merged into its base, rebuilt from the config saved
with the checkpoint); `--hf_checkpoint` evaluates a Hugging Face folder instead.
`--split validation` scores the validation problems instead (for tuning; held-out numbers are
the results). `--cfg_scales 0,0.5,1,2` runs every setting at each unsupervised-CFG weight w (one
row per setting and w; without the flag, at `eval.cfg_scale`).

`--likelihood` scores instead of sampling: the Monte Carlo ELBO bound on each held-out problem's
SFT completion given its prompt (`--draws`, stratified mask counts), per completion and per token,
and the perplexity bound, for each unsupervised-CFG weight of `--cfg_scales`:

  python -m mdpo_jax.evaluate --config configs/countdown_tiny_sft.py \
      --checkpoint /tmp/countdown_sft/checkpoints --likelihood --draws 128 --cfg_scales 0,1

`--plots DIR` also draws (`mdpo_jax.plots`): per setting, the trajectory of problem
`--plot_problem` of the split exactly as it was scored (trajectory_<setting>.png); with
`eval.trajectory_stats`, over_denoising.png (per step, how often x̂0_t was right, split by the
final answer); and, when the checkpoint's run folder holds metrics.jsonl, training_curves.png.

Exit status 2 with one `error: ...` line for a user error (a config file or value, a missing
folder, an --output that cannot be written: all checked before anything is evaluated); a
traceback only for a bug.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
from absl import app, flags
from ml_collections import config_flags

from mdpo_jax import cli, parallel, plots
from mdpo_jax.data.tokenizer import decode_completions
from mdpo_jax.training import evaluation, likelihood

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file of the run.",
                                          lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A run's WORKDIR/checkpoints folder.")
_HF = flags.DEFINE_string("hf_checkpoint", None, "Or a Hugging Face folder of the config's "
                          "model.family (LLaDA, or Dream with --config.model.family=dream).")
_OUT = flags.DEFINE_string("output", None, "Also write the rows as JSON here.")
_LIKELIHOOD = flags.DEFINE_boolean(
    "likelihood", False, "Instead of sampling: the Monte Carlo ELBO bound on each held-out "
    "problem's SFT completion given its prompt, and the perplexity bound (training/likelihood.py).")
_DRAWS = flags.DEFINE_integer("draws", 128, "With --likelihood: Monte Carlo draws per problem "
                              "(stratified mask counts; LLaDA uses 128).")
_CFG_SCALES = flags.DEFINE_list("cfg_scales", ["0"], "Unsupervised CFG weights w, one table row "
                                "each (0 = no guidance): with --likelihood the ELBO rows; without, "
                                "every eval setting at each w (not given: eval.cfg_scale).")
_PLOTS = flags.DEFINE_string("plots", None, "Also draw PNG pictures into this folder (made if "
                             "missing): trajectories, over-denoising, training curves.")
_PLOT_PROBLEM = flags.DEFINE_integer("plot_problem", 0, "With --plots: the problem whose "
                                     "trajectory is drawn (an index in the first eval batch).")
_SPLIT = flags.DEFINE_enum("split", "held_out", ["held_out", "validation"],
                           "The problems scored: held_out (results) or validation (from the "
                           "training distribution, disjoint from both: what tuning may look at).")


def _check_paths(checkpoint: str | None, hf_checkpoint: str | None, output: str | None) -> None:
  """Flag errors found without loading anything, each one UsageError line naming the flag."""
  if bool(checkpoint) == bool(hf_checkpoint):
    raise app.UsageError("give exactly one of --checkpoint and --hf_checkpoint")
  hf_folder = "a Hugging Face LLaDA or Dream folder"
  for flag, value, allowed in (("checkpoint", checkpoint, "a run's WORKDIR/checkpoints folder"),
                               ("hf_checkpoint", hf_checkpoint, hf_folder)):
    if value and not os.path.isdir(value):
      raise app.UsageError(f"--{flag}={value}: no such folder; allowed: {allowed}")
  if output:
    folder = os.path.dirname(os.path.abspath(output))
    if os.path.isdir(output) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
      raise app.UsageError(f"--output={output}: cannot write it; allowed: a file path in an "
                           "existing, writable folder")


def _check_plots(folder: str | None, problem: int, config) -> None:
  """--plots and --plot_problem errors, before anything is loaded: one UsageError line."""
  if folder is None:
    return
  why = plots.folder_problem(folder)
  if why:
    raise app.UsageError(f"--plots={folder}: {why}")
  limit = min(config.eval.batch_size, config.eval.num_problems)
  if not 0 <= problem < limit:
    raise app.UsageError(f"--plot_problem={problem}: allowed 0 ≤ i < {limit} (the first "
                         "evaluation batch: min(eval.batch_size, eval.num_problems))")


def _draw(folder: str, rows: list[dict], model: evaluation.LoadedModel, problem: int) -> None:
  """The --plots pictures; prints each file's path."""
  out = Path(folder)
  out.mkdir(parents=True, exist_ok=True)
  problems = model.problems(_SPLIT.value)
  written = []
  for setting in evaluation.settings_from_config(model.config.eval):
    tokens, traj, p = evaluation.first_batch_trajectory(model, problems, setting)
    stops = (model.model_cfg.eos_token_id, model.model_cfg.eot_token_id)
    answer = decode_completions(model.tokenizer, tokens[problem:problem + 1, p:], stops)[0]
    right = model.task.reward(answer, problems[problem]) >= 1
    prompt = " ".join(model.task.prompt(problems[problem]).split())
    title = (f"{_split_words()} problem {problem}: {prompt} → {answer} "
             f"({'right' if right else 'wrong'}); {setting.name}")
    name = setting.name.replace("/", "_").replace("=", "")
    written += plots.write_trajectories(str(out / f"trajectory_{name}.png"), traj, tokens, p,
                                        model.tokenizer, model.model_cfg, rows=[problem],
                                        titles=[title])
  curves = {r["setting"]: plots.StepCorrectness.from_json(r["step_curves"])
            for r in rows if "step_curves" in r}
  if curves:
    written.append(plots.save(plots.over_denoising_figure(curves), out / "over_denoising.png"))
  metrics = Path(model.config.model.init_checkpoint or "/nonexistent").parent / "metrics.jsonl"
  if metrics.is_file():
    run = {metrics.parent.name: plots.training_curves(plots.read_metrics(metrics))}
    written.append(plots.save(plots.training_figure(run), out / "training_curves.png"))
  for path in written:
    print(f"picture: {path}")


def _check_likelihood(on: bool, draws: int, cfg_scales: list[str], plots_dir) -> list[float]:
  """--likelihood's flags, before anything is loaded: the CFG weights, or one UsageError line."""
  if not on:
    return []
  if draws < 1:
    raise app.UsageError(f"--draws={draws}: allowed an integer ≥ 1")
  if plots_dir:
    raise app.UsageError("--plots draws sampling pictures; it does not apply with --likelihood")
  try:
    return likelihood.parse_cfg_scales(cfg_scales)
  except ValueError as e:
    raise app.UsageError(str(e)) from e


def _sweep_scales() -> list[float] | None:
  """Sampling's --cfg_scales as numbers, or None when the flag is not given (the settings then
  run at eval.cfg_scale). A bad weight: one UsageError line, before anything is loaded."""
  if not flags.FLAGS["cfg_scales"].present:
    return None
  try:
    return likelihood.parse_cfg_scales(_CFG_SCALES.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e


def _sweep(model: evaluation.LoadedModel, scales: list[float] | None):
  """Each of the run's eval settings at each w of `scales`, w by w (None: the run's settings)."""
  if scales is None:
    return None
  return [dataclasses.replace(s, cfg_scale=w) for w in scales
          for s in evaluation.settings_from_config(model.config.eval)]


def _split_words() -> str:
  """--split as the tables' headers say it (held-out, validation)."""
  return _SPLIT.value.replace("_", "-")


def _report(header: str, table: str, rows: list[dict]) -> None:
  """Print the header and table on the first process; --output gets the rows as JSON."""
  if jax.process_index() != 0:
    return
  print(header)
  print(table)
  if _OUT.value:
    with open(_OUT.value, "w", encoding="utf-8") as f:
      json.dump(rows, f, indent=1)


def _likelihood(model: evaluation.LoadedModel, scales: list[float]) -> None:
  problems = model.problems(_SPLIT.value)
  rows = likelihood.evaluate(model, problems, num_draws=_DRAWS.value, cfg_scales=scales)
  _report(f"{len(problems)} {_split_words()} problems, seed {model.config.seed}: ELBO bound on "
          f"the SFT completion (answer + EOS padding to data.seq_len={model.config.data.seq_len})",
          likelihood.markdown_table(rows), rows)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = cli.config_value(_CONFIG)   # a config file that does not load: one line
  _check_paths(_CHECKPOINT.value, _HF.value, _OUT.value)
  _check_plots(_PLOTS.value, _PLOT_PROBLEM.value, config)
  parallel.initialize_distributed()
  scales = _check_likelihood(_LIKELIHOOD.value, _DRAWS.value, _CFG_SCALES.value, _PLOTS.value)
  sweep = None if _LIKELIHOOD.value else _sweep_scales()
  try:
    model = evaluation.load_checkpoint(config, checkpoint=_CHECKPOINT.value,
                                       hf_checkpoint=_HF.value)
    if _LIKELIHOOD.value:
      return _likelihood(model, scales)
    rows, n = evaluation.evaluate_checkpoint(config, model=model, settings=_sweep(model, sweep),
                                             split=_SPLIT.value)
  except (ValueError, FileNotFoundError) as e:   # config, file and prompt errors: one line
    raise app.UsageError(str(e)) from e
  _report(f"{n} {_split_words()} problems, seed {config.seed}, "
          f"gen_length {config.eval.gen_length}, block_length {config.eval.block_length}",
          evaluation.markdown_table(rows), rows)
  if _PLOTS.value and jax.process_index() == 0:
    _draw(_PLOTS.value, rows, model, _PLOT_PROBLEM.value)


if __name__ == "__main__":
  cli.run(main, required=["config"])
