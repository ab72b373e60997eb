"""Accuracy of the fast-sampling modes on a trained model: KV cache × confidence threshold.

  python benchmarks/fast_sampling_accuracy.py --config configs/countdown_tiny_sft.py \
      --checkpoint /tmp/countdown_sft/checkpoints --block_length 8 --steps 24 \
      --taus 0.7,0.8,0.9,0.95 --split validation --problems 1000

For cache none / prefix / dual, each without a threshold and with every τ of --taus, on the same
problems (the first --problems of --split, greedy, the run's gen_length): accuracy with its 95%
Wilson interval, the paired difference from cache=none without a threshold (same problems:
Newcombe's paired 95% interval, `mdpo_jax.training.paired`), the mean number of model calls per batch (NFE)
and the wall time of the whole evaluation. Choose τ on --split validation; report held_out.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np

from mdpo_jax.training import evaluation, paired


def load_config(path: str):
  """The ConfigDict of a config file (`get_config()`), as `--config` gives it to the CLIs."""
  spec = importlib.util.spec_from_file_location("run_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", required=True)
  parser.add_argument("--checkpoint", required=True)
  parser.add_argument("--split", default="validation", choices=("validation", "held_out"))
  parser.add_argument("--problems", type=int, default=1000)
  parser.add_argument("--block_length", type=int, default=8)
  parser.add_argument("--steps", type=int, default=24)
  parser.add_argument("--taus", default="0.9")
  parser.add_argument("--batch_size", type=int, default=250)
  parser.add_argument("--remasking", default="low_confidence")
  args = parser.parse_args()

  raw = load_config(args.config)
  raw.eval.block_length, raw.eval.batch_size = args.block_length, args.batch_size
  raw.eval.trajectory_stats = False
  model = evaluation.load_checkpoint(raw, checkpoint=args.checkpoint)
  problems = model.problems(args.split, args.problems)
  print(f"{len(problems)} {args.split} problems; gen {model.config.eval.gen_length}, block "
        f"{args.block_length}, steps {args.steps} (cap under a threshold), {args.remasking}, "
        f"greedy; batch {args.batch_size}")
  print("| cache | τ | accuracy | 95% CI | Δ vs none (paired 95% CI) | NFE / batch | seconds |")
  print("|---|---|---|---|---|---|---|")
  reference = None
  for cache in ("none", "prefix", "dual"):
    for tau in [0.0] + [float(t) for t in args.taus.split(",")]:
      setting = evaluation.Setting(args.steps, args.remasking, cache=cache, threshold=tau)
      start = time.perf_counter()
      row, = evaluation.evaluate_task(model.config, model.model_cfg, model.params,
                                      model.tokenizer, model.task, problems, [setting],
                                      progress=False, per_problem=True)
      seconds = time.perf_counter() - start
      ok = np.asarray(row["solved"])
      reference = ok if reference is None else reference
      gain = paired.paired_gain(reference, ok)   # same problems as cache=none, no threshold
      d, dlo, dhi = gain.gain, gain.low, gain.high
      print(f"| {cache} | {tau or '-'} | {row['accuracy']:.3f} | [{row['ci_low']:.3f}, "
            f"{row['ci_high']:.3f}] | {d:+.3f} [{dlo:+.3f}, {dhi:+.3f}] | {row['nfe']:.1f} | "
            f"{seconds:.1f} |", flush=True)


if __name__ == "__main__":
  main()
