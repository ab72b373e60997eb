"""Unsupervised classifier-free guidance (SMDM), in miniature: Countdown accuracy against w.

  python benchmarks/cfg_sweep.py --workdir /tmp/cfg_sweep

SMDM (Nie et al., 2024) pretrains a masked diffusion model on unpaired text, fine-tunes it on
paired (prompt, answer) data, and at generation guides it with itself: the unconditional model is
the same network with the prompt masked, `logits = un + (w + 1)·(cond − un)`
(`diffusion/guidance.py`). Here:

  1. pretrain  configs/countdown_tiny_pretrain.py on `generated:countdown_arithmetic` (equations,
               solution steps and boxed expressions, never a Countdown prompt with its answer);
  2. sft       configs/countdown_tiny_sft.py from that checkpoint (the paired problems);
  3. control   the same SFT from scratch (same steps, same data order): no pretraining;
  4. sweep     each model greedy (low-confidence remasking, --eval_steps denoising steps) at every
               w of --scales, on the validation split (w is chosen there: the best accuracy, ties
               to the smaller w) and on the held-out split (reported for every w, Wilson 95%
               intervals, and the paired difference from w = 0 on the same problems);
  5. diagnose  validation split only: what the answers get wrong at each w (well-formed? the
               prompt's numbers? the target's value?), and the same sampler on the unguided
               model's logits times (w + 1), i.e. guidance against an unconditional model that
               knows nothing (uniform logits). That separates what the masked-prompt model
               contributes from what merely sharpening the logits does (low-confidence remasking
               ranks positions by p(x0), so sharpening changes the order tokens are committed in
               even under argmax).

Each phase's result is cached in WORKDIR/<phase>.json (training resumes from its checkpoint), so
a re-run continues where it stopped. Writes WORKDIR/cfg_sweep.json and WORKDIR/cfg_sweep.md.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import Counter
import json
import math
import time
from pathlib import Path

import numpy as np

import jax

from configs import countdown_tiny_pretrain, countdown_tiny_sft
from mdpo_jax.data import pipeline
from mdpo_jax.data.tokenizer import decode_completions
from mdpo_jax.models import families
from mdpo_jax.sampling.sampler import generate
from mdpo_jax.tasks import countdown
from mdpo_jax.training import evaluation, paired, sft_loop

MODELS = ("sft", "control")
LABELS = {"sft": "pretrain → SFT", "control": "SFT from scratch (control)"}


def recipes(args) -> dict:
  """The three training configs: pretraining, SFT from it, SFT from scratch."""
  pre = countdown_tiny_pretrain.get_config()
  pre.train.num_steps = args.pretrain_steps
  pre.optim.warmup_steps = min(pre.optim.warmup_steps, args.pretrain_steps)
  pre.train.checkpoint_every = args.pretrain_steps
  sft = countdown_tiny_sft.get_config()
  sft.train.num_steps = sft.train.checkpoint_every = args.sft_steps
  sft.optim.warmup_steps = min(sft.optim.warmup_steps, args.sft_steps)
  sft.task.eval_size = 0        # no end-of-run evaluation: the sweep below is the measurement
  control = sft.copy_and_resolve_references()
  with sft.unlocked():
    sft.model.init_checkpoint = str(Path(args.workdir) / "pretrain" / "checkpoints")
  return {"pretrain": pre, "sft": sft, "control": control}


def _cached(out: Path, name: str, fn) -> dict:
  """`fn()` once; its JSON result is kept in out/name.json."""
  path = out / f"{name}.json"
  if path.exists():
    return json.loads(path.read_text())
  result = fn()
  path.write_text(json.dumps(result, indent=1, default=float))
  return result


def train(out: Path, name: str, config) -> dict:
  def run():
    start = time.time()
    result = sft_loop.train(config, out / name)
    return {"minutes": (time.time() - start) / 60, "step": result["step"],
            "loss": result["loss"]}
  return _cached(out, f"{name}_train", run)


def load(args, checkpoint: Path) -> evaluation.LoadedModel:
  raw = countdown_tiny_sft.get_config()
  raw.eval.trajectory_stats = False
  raw.eval.batch_size = args.eval_batch
  raw.task.val_size = max(raw.task.val_size, args.val_problems)
  raw.task.eval_size = max(raw.task.eval_size, args.problems)
  return evaluation.load_checkpoint(raw, checkpoint=str(checkpoint))


def sweep(args, checkpoint: Path) -> dict:
  """{split: [row per w]} for one checkpoint: greedy accuracy at every w of --scales."""
  model = load(args, checkpoint)
  base = evaluation.Setting(args.eval_steps, "low_confidence", 0.0)
  settings = [dataclasses.replace(base, cfg_scale=w) for w in args.scales]
  out = {}
  for split, n in (("validation", args.val_problems), ("held_out", args.problems)):
    start = time.time()
    rows = evaluation.evaluate_task(model.config, model.model_cfg, model.params,
                                    model.tokenizer, model.task, model.problems(split, n),
                                    settings, progress=False, per_problem=True)
    for row in rows:
      gain = paired.paired_gain(rows[0]["solved"], row["solved"])   # same problems, vs w = 0
      row["diff_vs_w0"] = (gain.gain, gain.low, gain.high)
    out[split] = rows
    out[f"{split}_minutes"] = (time.time() - start) / 60
  return out


def _scaled(forward_fn, factor: float):
  """`forward_fn` with its logits multiplied by `factor`."""
  def fwd(params, tokens, attention_mask=None, **kwargs):
    return factor * forward_fn(params, tokens, attention_mask=attention_mask, **kwargs)
  return fwd


def _answers(model, problems, sc, forward_fn, batch: int) -> list[str]:
  """Decoded completions of `problems`: the prompts, keys and batches `evaluation.evaluate` uses
  (so the same sampler gives the same answers as the sweep's rows)."""
  cfg = model.model_cfg
  prompts, mask = pipeline.eval_prompts([model.task.prompt(p) for p in problems],
                                        model.tokenizer, prompt_len=model.config.data.prompt_len,
                                        pad_id=cfg.pad_token_id)
  answers, n = [], len(problems)
  for start in range(0, n, batch):
    real = len(problems[start:start + batch])
    rows_B = np.minimum(np.arange(start, start + batch), start + real - 1)
    tokens = np.asarray(generate(forward_fn, model.params, prompts[rows_B], sc,
                                 jax.random.key(model.config.seed + start),
                                 prompt_mask=mask[rows_B]))[:real, prompts.shape[1]:]
    answers += decode_completions(model.tokenizer, tokens, (cfg.eos_token_id, cfg.eot_token_id))
  return answers


def breakdown(answers: list[str], problems, reward) -> dict:
  """Fractions of completions whose answer parses, uses exactly the prompt's numbers, equals
  the target, and is solved (both; the task's verifier)."""
  counts = Counter()
  for answer, problem in zip(answers, problems):
    counts["solved"] += reward(answer, problem) >= 1
    try:
      parsed = countdown.parse_expression(countdown.extract_answer(answer) or "")
    except countdown.ExpressionError:
      continue
    counts["parses"] += 1
    counts["numbers"] += Counter(parsed.numbers) == Counter(problem.numbers)
    counts["value"] += parsed.value == problem.target
  return {k: counts[k] / len(problems) for k in ("parses", "numbers", "value", "solved")}


def diagnose(args, checkpoint: Path) -> dict:
  """Validation only, per w: what guided answers get wrong (`breakdown`), and the same for the
  unguided model with its logits × (w + 1) (guidance against an unconditional model that knows
  nothing)."""
  model = load(args, checkpoint)
  ev, fwd = model.config.eval, families.forward_fn(model.model_cfg)
  problems = model.problems("validation", args.val_problems)
  sc = evaluation.Setting(args.eval_steps, "low_confidence").sampler_config(
      model.model_cfg, gen_length=ev.gen_length, block_length=ev.block_length)
  batch, start = min(args.eval_batch, len(problems)), time.time()
  rows = []
  for w in args.scales:
    guided = _answers(model, problems, sc.replace(cfg_scale=w), fwd, batch)
    sharp = _answers(model, problems, sc, _scaled(fwd, 1.0 + w), batch)
    rows.append({"cfg_scale": w, "guided": breakdown(guided, problems, model.task.reward),
                 "sharpened": breakdown(sharp, problems, model.task.reward)})
  return {"rows": rows, "minutes": (time.time() - start) / 60}


def choose(rows: list[dict]) -> float:
  """The w with the best validation accuracy (ties: the smaller w)."""
  best = max(r["accuracy"] for r in rows)
  return min(r["cfg_scale"] for r in rows if r["accuracy"] == best)


def table(results: dict) -> str:
  """One row per (model, w): validation accuracy (guided, and logits × (w + 1) only), held-out
  accuracy + interval + paired Δ from w = 0."""
  lines = ["| model | CFG w | validation acc. | validation, logits × (w+1) only | held-out acc. | "
           "95% CI | Δ vs w=0, paired 95% CI |", "|---|---|---|---|---|---|---|"]
  for name in MODELS:
    res = results[name]
    for val, diag, held in zip(res["validation"], res["diagnosis"]["rows"], res["held_out"]):
      w = held["cfg_scale"]
      mark = " (chosen)" if w == res["chosen_w"] else ""
      d, lo, hi = held["diff_vs_w0"]
      delta = "—" if w == 0 else f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
      lines.append(f"| {LABELS[name]} | {w:g}{mark} | {val['accuracy']:.3f} | "
                   f"{diag['sharpened']['solved']:.3f} | {held['accuracy']:.3f} | "
                   f"[{held['ci_low']:.3f}, {held['ci_high']:.3f}] | {delta} |")
  return "\n".join(lines)


def diagnosis_table(results: dict) -> str:
  """Validation, per (model, w): fractions of guided answers that are well-formed, use the
  prompt's numbers, equal the target, and are solved."""
  lines = ["| model | CFG w | answer parses | uses the prompt's numbers | equals the target | "
           "solved |", "|---|---|---|---|---|---|"]
  for name in MODELS:
    for d in results[name]["diagnosis"]["rows"]:
      g = d["guided"]
      lines.append(f"| {LABELS[name]} | {d['cfg_scale']:g} | {g['parses']:.3f} | "
                   f"{g['numbers']:.3f} | {g['value']:.3f} | {g['solved']:.3f} |")
  return "\n".join(lines)


def _parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--pretrain_steps", type=int, default=600)
  parser.add_argument("--sft_steps", type=int, default=600)
  parser.add_argument("--scales", default="0,0.5,1,2,3",
                      help="guidance weights w (0 = none; must include 0)")
  parser.add_argument("--problems", type=int, default=500, help="held-out problems")
  parser.add_argument("--val_problems", type=int, default=500, help="validation problems")
  parser.add_argument("--eval_steps", type=int, default=6, help="denoising steps (24 tokens)")
  parser.add_argument("--eval_batch", type=int, default=250)
  args = parser.parse_args(argv)
  args.scales = sorted({float(w) for w in args.scales.split(",")})
  if args.scales[0] != 0.0 or any(not math.isfinite(w) for w in args.scales):
    parser.error(f"--scales={args.scales}: finite weights ≥ 0, 0 included (the baseline)")
  return args


def main(argv=None):
  args = _parse_args(argv)
  out = Path(args.workdir)
  out.mkdir(parents=True, exist_ok=True)
  start = time.time()
  configs = recipes(args)
  runs = {name: train(out, name, configs[name]) for name in ("pretrain", "sft", "control")}
  results = {}
  for name in MODELS:
    res = _cached(out, f"{name}_sweep", lambda n=name: sweep(args, out / n / "checkpoints"))
    res["chosen_w"] = choose(res["validation"])
    res["diagnosis"] = _cached(out, f"{name}_diagnosis",
                               lambda n=name: diagnose(args, out / n / "checkpoints"))
    for row, d in zip(res["validation"], res["diagnosis"]["rows"]):   # two paths, same answers
      if row["accuracy"] != d["guided"]["solved"]:
        raise AssertionError(f"{name}, w={row['cfg_scale']}: the diagnosis solved "
                             f"{d['guided']['solved']}, the sweep {row['accuracy']}")
    results[name] = res
  minutes = (time.time() - start) / 60
  md = (f"Held-out {args.problems} / validation {args.val_problems} Countdown problems, greedy, "
        f"low-confidence remasking, 24 tokens in {args.eval_steps} steps; pretraining "
        f"{args.pretrain_steps} steps, SFT {args.sft_steps} steps; w chosen on validation.\n\n"
        + table(results) + "\n\nWhat the guided answers get wrong (validation):\n\n"
        + diagnosis_table(results) + "\n\n" + "phase minutes: " + ", ".join(
            f"{k} {v['minutes']:.1f}" for k, v in runs.items())
        + ", sweeps " + ", ".join(
            f"{k} {results[k]['validation_minutes'] + results[k]['held_out_minutes']:.1f}"
            for k in MODELS) + ", diagnoses " + ", ".join(
            f"{k} {results[k]['diagnosis']['minutes']:.1f}" for k in MODELS)
        + f"; this invocation {minutes:.1f}\n")
  for res in results.values():
    for split in ("validation", "held_out"):
      for row in res[split]:
        row.pop("solved", None)
  (out / "cfg_sweep.json").write_text(json.dumps(
      {"args": vars(args), "runs": runs, "results": results, "minutes": minutes}, indent=1))
  (out / "cfg_sweep.md").write_text(md)
  print(md)


if __name__ == "__main__":
  main()
