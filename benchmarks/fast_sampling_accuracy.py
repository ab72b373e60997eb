"""Accuracy of the fast-sampling modes on a trained model: KV cache × confidence threshold.

  python benchmarks/fast_sampling_accuracy.py --config configs/countdown_tiny_sft.py \
      --checkpoint /tmp/countdown_sft/checkpoints --block_length 8 --steps 24 \
      --taus 0.7,0.8,0.9,0.95 --split validation --problems 1000

For cache none / prefix / dual, each without a threshold and with every τ of --taus, on the same
problems (the first --problems of --split, greedy, the run's gen_length): accuracy with its 95%
Wilson interval, the paired difference from cache=none without a threshold (same problems, so a
95% interval of the mean per-problem difference), the mean number of model calls per batch (NFE)
and the wall time of the whole evaluation. Choose τ on --split validation; report held_out.
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import numpy as np
from ml_collections import config_flags  # noqa: F401  (config files import ml_collections)

from mdpo_jax.data import pipeline
from mdpo_jax.data.tokenizer import decode_completions
from mdpo_jax.models import families
from mdpo_jax.sampling.sampler import SamplerConfig, generate
from mdpo_jax.training import evaluation


def load_config(path: str):
  import importlib.util
  spec = importlib.util.spec_from_file_location("run_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def solved(model, problems, sc: SamplerConfig, batch_size: int):
  """(per-problem solved [N] bool, mean NFE per batch, seconds) of greedy sampling with `sc`."""
  cfg, run_cfg = model.model_cfg, model.config
  prompts, mask = pipeline.eval_prompts([model.task.prompt(p) for p in problems],
                                        model.tokenizer, prompt_len=run_cfg.data.prompt_len,
                                        pad_id=cfg.pad_token_id)
  fwd, stops, p = families.forward_fn(cfg), (cfg.eos_token_id, cfg.eot_token_id), prompts.shape[1]
  out, calls, start = [], [], time.perf_counter()
  for lo in range(0, len(problems), batch_size):
    rows = np.minimum(np.arange(lo, lo + batch_size), len(problems) - 1)   # full batches
    tokens, nfe = generate(fwd, model.params, prompts[rows], sc, jax.random.key(lo),
                           prompt_mask=mask[rows], return_nfe=True)
    real = min(batch_size, len(problems) - lo)
    answers = decode_completions(model.tokenizer, np.asarray(tokens)[:real, p:], stops)
    out += [model.task.reward(a, prob) >= 1 for a, prob in zip(answers, problems[lo:lo + real])]
    calls.append(int(nfe))
  return np.asarray(out), float(np.mean(calls)), time.perf_counter() - start


def paired_interval(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
  """Mean of a − b (per-problem 0/1 outcomes) and its 95% normal interval."""
  d = a.astype(float) - b.astype(float)
  half = 1.96 * d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else 0.0
  return d.mean(), d.mean() - half, d.mean() + half


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

  model = evaluation.load_checkpoint(load_config(args.config), checkpoint=args.checkpoint)
  problems = model.problems(args.split, args.problems)
  gen = model.config.eval.gen_length
  base = SamplerConfig.for_model(model.model_cfg, gen_length=gen, block_length=args.block_length,
                                 steps=args.steps, remasking=args.remasking)
  print(f"{len(problems)} {args.split} problems; gen {gen}, block {args.block_length}, steps "
        f"{args.steps} (cap under a threshold), {args.remasking}, greedy; batch {args.batch_size}")
  print("| cache | τ | accuracy | 95% CI | Δ vs none (paired 95% CI) | NFE / batch | seconds |")
  print("|---|---|---|---|---|---|---|")
  reference = None
  for cache in ("none", "prefix", "dual"):
    for tau in [None] + [float(t) for t in args.taus.split(",")]:
      ok, nfe, seconds = solved(model, problems, base.replace(cache=cache, threshold=tau),
                                args.batch_size)
      reference = ok if reference is None else reference
      k, n = int(ok.sum()), len(ok)
      lo, hi = evaluation.wilson_interval(k, n)
      d, dlo, dhi = paired_interval(ok, reference)
      print(f"| {cache} | {tau or '-'} | {k / n:.3f} | [{lo:.3f}, {hi:.3f}] | "
            f"{d:+.3f} [{dlo:+.3f}, {dhi:+.3f}] | {nfe:.1f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
  main()
