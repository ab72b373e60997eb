"""The reversal-curse miniature: masked diffusion vs autoregressive at equal size, data and steps.

  python benchmarks/reversal_curse.py --seeds 0,1 --out docs/reversal_curse.json

Trains `configs/reversal_tiny_mdm.py` (LLaDA, masked-diffusion SFT on the statements) and
`configs/reversal_tiny_ar.py` (the same network, causal, next-token loss) for `--steps` each, per
seed, then scores both queries of every held-out fact — in the order the fact was trained
("same") and the other way round ("reverse") — by exact match, with Wilson 95% intervals over
the seeds' pooled queries. The validation facts (disjoint from the held-out ones) are scored
too: they are what the training length was chosen on. Chance on a reverse query is about one in
`task.train_size` (the answer is one of the trained names or descriptions).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from configs import reversal_tiny_ar, reversal_tiny_mdm  # noqa: E402
from mdpo_jax import config as config_lib  # noqa: E402
from mdpo_jax import tasks  # noqa: E402
from mdpo_jax.training import evaluation, setup, sft_loop  # noqa: E402

MODELS = {"MDM (LLaDA, masked SFT)": reversal_tiny_mdm, "AR (causal twin)": reversal_tiny_ar}


def solved_by_query(raw, params, model_cfg, split: str) -> dict[str, np.ndarray]:
  """{"same": bool per fact, "reverse": bool per fact} on `split` (held_out | validation)."""
  config = config_lib.parse(raw)
  task = tasks.build(config.task, config.seed)
  problems = task.held_out() if split == "held_out" else task.validation()
  row, = evaluation.evaluate_task(config, model_cfg, params, setup.make_tokenizer(config), task,
                                  problems, progress=False, per_problem=True)
  solved = np.asarray(row["solved"])
  kinds = np.asarray([p.query for p in problems])
  return {q: solved[kinds == q] for q in tasks.reversal.QUERIES}


def run(seeds: list[int], steps: int, workdir: Path) -> dict:
  out = {"steps": steps, "seeds": seeds, "models": {}}
  for label, module in MODELS.items():
    pooled: dict[str, dict[str, list]] = {"held_out": {}, "validation": {}}
    minutes = []
    for seed in seeds:
      raw = module.get_config()
      raw.seed, raw.train.num_steps = seed, steps
      raw.train.checkpoint_every = steps
      start = time.time()
      result = sft_loop.train(raw, workdir / f"{module.__name__.split('.')[-1]}_seed{seed}")
      minutes.append((time.time() - start) / 60)
      for split in pooled:
        for query, solved in solved_by_query(raw, result["params"], result["model_config"],
                                             split).items():
          pooled[split].setdefault(query, []).extend(solved.tolist())
    out["models"][label] = {"train_minutes": minutes, **{
        split: {q: _summary(v) for q, v in by_query.items()} for split, by_query in pooled.items()}}
  return out


def _summary(solved: list) -> dict:
  k, n = int(np.sum(solved)), len(solved)
  lo, hi = evaluation.wilson_interval(k, n)
  return {"accuracy": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi, "n": n}


def markdown(result: dict) -> str:
  lines = ["| model | split | same order: accuracy [95% CI] | reverse: accuracy [95% CI] | "
           "train min / seed |", "|---|---|---|---|---|"]
  for label, r in result["models"].items():
    for split in ("held_out", "validation"):
      cells = [f"{r[split][q]['accuracy']:.3f} [{r[split][q]['ci_low']:.3f}, "
               f"{r[split][q]['ci_high']:.3f}] (n={r[split][q]['n']})" for q in ("same", "reverse")]
      lines.append(f"| {label} | {split} | {cells[0]} | {cells[1]} | "
                   f"{np.mean(r['train_minutes']):.1f} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", default="0", help="comma-separated seeds")
  parser.add_argument("--steps", type=int, default=reversal_tiny_mdm.get_config().train.num_steps)
  parser.add_argument("--out", default="", help="write the result JSON here")
  parser.add_argument("--workdir", default="", help="run folders (default: a temporary one)")
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(",") if s]
  start = time.time()
  with tempfile.TemporaryDirectory() as tmp:
    result = run(seeds, args.steps, Path(args.workdir or tmp))
  result["minutes"] = (time.time() - start) / 60
  table = markdown(result)
  print(table)
  print(f"total {result['minutes']:.1f} min")
  if args.out:
    Path(args.out).write_text(json.dumps({**result, "table": table}, indent=1))


if __name__ == "__main__":
  main()
