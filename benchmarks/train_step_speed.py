"""Training throughput of the tiny Countdown recipes: an SFT step, and where an MDPO update's time goes.

  python benchmarks/train_step_speed.py [--sft_batch 64 --prompts 8 --group 16 --repeats 5]

It reads configs/countdown_tiny_{sft,mdpo}.py and builds the MDPO recipe's run with the
trainers' own setup (`training/run.py`). The model is the recipes' (random weights: throughput does not depend on them, only the rewards do). Prints, from
one run, the median seconds of: one SFT optimiser step (batch × sequence of the recipe); and the
three phases of one MDPO update — the rollouts (B·G trajectories in one jitted `lax.scan`), the
host-side decoding + verification of every intermediate prediction, and the optimiser update on
the B·G·K selected steps — with each phase's share, so a change can be judged by the ratio it
moves, not by a number from another day.
"""

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import countdown_tiny_mdpo, countdown_tiny_sft
from mdpo_jax import parallel
from mdpo_jax.data import pipeline
from mdpo_jax.rl import algorithms, rollout
from mdpo_jax.rl.scoring import RewardPool
from mdpo_jax.sampling.sampler import SamplerConfig
from mdpo_jax.training import optim, rl_loop, sft_loop
from mdpo_jax.training import run as run_lib
from mdpo_jax.training import state as state_lib


def median_seconds(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # compile + warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--sft_batch", type=int, default=None, help="default: the recipe's")
  parser.add_argument("--prompts", type=int, default=None, help="default: the recipe's")
  parser.add_argument("--group", type=int, default=None, help="default: the recipe's")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  sft_cfg, rl_cfg = countdown_tiny_sft.get_config(), countdown_tiny_mdpo.get_config()
  if args.prompts:
    rl_cfg.rl.prompts_per_update = args.prompts
  if args.group:
    rl_cfg.rl.group_size = args.group
  rl = rl_cfg.rl
  rl_cfg.logging.tensorboard = False
  with tempfile.TemporaryDirectory() as workdir:   # the run's own setup, nothing kept
    run, rl_state = run_lib.setup_run(rl_cfg, workdir)
    try:
      sft_s, roll_s, score_s, update_s, n_rows = _measure(args, sft_cfg, run, rl_state)
    finally:
      run.close()
  total = roll_s + score_s + update_s
  n = rl.prompts_per_update * rl.group_size
  print(f"device: {jax.devices()[0].device_kind} ×{jax.device_count()}; model "
        f"{run.model_cfg.num_params() / 1e6:.2f}M params; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  batch_size, seq = args.sft_batch or sft_cfg.data.batch_size, sft_cfg.data.seq_len
  print(f"SFT step (batch {batch_size} × {seq} tokens): {sft_s * 1e3:.0f} ms → "
        f"{1 / sft_s:.2f} steps/s")
  print(f"MDPO update ({rl.prompts_per_update} prompts × G={rl.group_size} = {n} rollouts of "
        f"{rl.gen_length} tokens in {rl.steps} steps; {n_rows} trained steps):")
  print("| phase | seconds | share |\n|---|---|---|")
  for name, s in (("rollouts (one jitted scan)", roll_s),
                  (f"decode + verify {n * rl.steps} predictions (host)", score_s),
                  ("update (micro-batched grad + AdamW)", update_s)):
    print(f"| {name} | {s:.3f} | {s / total:.0%} |")
  print(f"| total | {total:.3f} | → {3600 / total:.0f} updates/hour |")


def _measure(args, sft_cfg, run: run_lib.Run, rl_state):
  """Median seconds of an SFT step and of the three phases of an MDPO update (`rl_loop`)."""
  rl, model_cfg, policy = run.config.rl, run.model_cfg, run.policy
  params = rl_state.params
  # SFT: one optimiser step on a batch of the recipe's shape.
  batch_size = args.sft_batch or sft_cfg.data.batch_size
  seq = sft_cfg.data.seq_len
  rng = np.random.default_rng(0)
  batch = {"tokens": rng.integers(0, model_cfg.vocab_size - 4, (batch_size, seq), np.int32),
           "prompt_mask": np.arange(seq)[None, :].repeat(batch_size, 0) < sft_cfg.data.prompt_len}
  sft_opt = optim.make_optimizer(sft_cfg.optim, 1000)
  sft_step = jax.jit(sft_loop.make_train_step(
      "sft", policy, sft_opt, optim.learning_rate_schedule(sft_cfg.optim, 1000), accum=1,
      mask_eps=sft_cfg.optim.mask_eps))
  sft_state = state_lib.create(params, sft_opt, 0)
  sft_s = median_seconds(lambda: sft_step(sft_state, batch)[1]["loss"], args.repeats)

  # MDPO: rollouts, scoring, update — the three phases of `rl_loop`'s update.
  problems = run.task.train()[: rl.prompts_per_update]
  prompts, pmask = pipeline.eval_prompts([run.task.prompt(p) for p in problems], run.tokenizer,
                                         prompt_len=run.config.data.prompt_len,
                                         pad_id=model_cfg.pad_token_id)
  sc = SamplerConfig.for_model(model_cfg, gen_length=rl.gen_length, block_length=rl.gen_length,
                               steps=rl.steps, temperature=rl.temperature)
  sample = functools.partial(rollout.sample, policy.sample_fn, params, prompts, pmask, problems,
                             sc, group_size=rl.group_size)
  roll_s = median_seconds(lambda: sample(jax.random.key(1)).tokens_NxL, args.repeats)
  batch_rl = sample(jax.random.key(1))
  rewards = []

  def score():  # a fresh pool each time: the pool caches repeated (prediction, problem) pairs
    pool = RewardPool(run.task.reward, num_workers=0, key_fn=run.task.key)
    rewards[:] = [rollout.step_rewards(batch_rl, run.tokenizer, pool, run.stop_ids)[0]]
    pool.close()
    return np.zeros(())
  score_s = median_seconds(score, args.repeats)
  # Random rewards: a real update's cost does not depend on their values.
  rewards_NxT = rng.integers(0, 2, rewards[0].shape).astype(np.float32)
  rows = rollout.mdpo_examples(batch_rl, rewards_NxT, top_k=rl.top_k,
                               mask_id=model_cfg.mask_token_id)
  rows = parallel.shard_batch(rows, run.mesh)
  update = rl_loop.make_update(algorithms.get("mdpo"), run)   # donates its state: pass copies
  update_s = median_seconds(
      lambda: update(jax.tree.map(jnp.copy, rl_state), rows, policy.base)[1]["loss"],
      args.repeats)
  return sft_s, roll_s, score_s, update_s, len(rows["adv"])


if __name__ == "__main__":
  main()
