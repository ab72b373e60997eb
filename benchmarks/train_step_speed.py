"""Training throughput of the tiny Countdown recipes: an SFT step, and where an MDPO update's time goes.

  python benchmarks/train_step_speed.py [--sft_batch 64 --prompts 8 --group 16 --repeats 5]

Run from the repository root (it reads configs/countdown_tiny_{sft,mdpo}.py). The model is the
recipes' (random weights: throughput does not depend on them, only the rewards do). Prints, from
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
import time

sys.path.insert(0, os.getcwd())  # configs/ lives at the repository root

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import countdown_tiny_mdpo, countdown_tiny_sft  # noqa: E402
from mdpo_jax import parallel  # noqa: E402
from mdpo_jax.data import pipeline  # noqa: E402
from mdpo_jax.models import llada  # noqa: E402
from mdpo_jax.rl import mdpo, rollout  # noqa: E402
from mdpo_jax.rl import trainer as rl_trainer  # noqa: E402
from mdpo_jax.rl.scoring import RewardPool  # noqa: E402
from mdpo_jax.sampling.sampler import SamplerConfig  # noqa: E402
from mdpo_jax.training import loop, optim, setup, task_data  # noqa: E402
from mdpo_jax.training import state as state_lib  # noqa: E402


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
  tokenizer = setup.make_tokenizer(sft_cfg)
  mesh = parallel.mesh_from_config(sft_cfg.mesh)
  model_cfg, params = setup.load_model(sft_cfg, tokenizer, mesh, jax.random.key(0))
  fwd = llada.forward_fn(model_cfg)

  # SFT: one optimiser step on a batch of the recipe's shape.
  batch_size = args.sft_batch or sft_cfg.data.batch_size
  seq = sft_cfg.data.seq_len
  rng = np.random.default_rng(0)
  batch = {"tokens": rng.integers(0, model_cfg.vocab_size - 4, (batch_size, seq), np.int32),
           "prompt_mask": np.arange(seq)[None, :].repeat(batch_size, 0) < sft_cfg.data.prompt_len}
  sft_opt = optim.make_optimizer(sft_cfg.optim, 1000)
  sft_step = jax.jit(loop.make_train_step("sft", model_cfg, sft_opt,
                                          optim.learning_rate_schedule(sft_cfg.optim, 1000),
                                          accum=1, mask_eps=sft_cfg.optim.mask_eps))
  sft_state = state_lib.create(params, sft_opt, 0)
  sft_s = median_seconds(lambda: sft_step(sft_state, batch)[1]["loss"], args.repeats)

  # MDPO: rollouts, scoring, update — the three phases of `rl.trainer.train`'s loop body.
  train, _ = task_data.splits(sft_cfg)
  problems = train[: rl.prompts_per_update]
  prompts, pmask = pipeline.eval_prompts([task_data.prompt_text(sft_cfg, p) for p in problems],
                                         tokenizer, prompt_len=sft_cfg.data.prompt_len,
                                         pad_id=model_cfg.pad_token_id)
  sc = SamplerConfig.for_model(model_cfg, gen_length=rl.gen_length, block_length=rl.gen_length,
                               steps=rl.steps, temperature=rl.temperature)
  sample = functools.partial(rollout.sample, fwd, params, prompts, pmask, problems, sc,
                             group_size=rl.group_size)
  roll_s = median_seconds(lambda: sample(jax.random.key(1)).tokens_NxL, args.repeats)
  batch_rl = sample(jax.random.key(1))
  stops = (model_cfg.eos_token_id, model_cfg.eot_token_id)
  rewards = []

  def score():  # a fresh pool each time: the pool caches repeated (prediction, problem) pairs
    pool = RewardPool(task_data.reward_fn(sft_cfg), num_workers=0, key_fn=task_data.problem_key)
    rewards[:] = [rollout.step_rewards(batch_rl, tokenizer, pool, stops)[0]]
    pool.close()
    return np.zeros(())
  score_s = median_seconds(score, args.repeats)
  # Random rewards: a real update's cost does not depend on their values.
  rewards_NxT = rng.integers(0, 2, rewards[0].shape).astype(np.float32)
  rows = rollout.mdpo_examples(batch_rl, rewards_NxT, top_k=rl.top_k,
                               mask_id=model_cfg.mask_token_id)
  rl_opt = optim.make_optimizer(rl_cfg.optim, 1000)

  def loss_fn(p, r, base):  # base: the frozen LoRA base (None: full fine-tune, as here)
    del base
    return mdpo.mdpo_loss(fwd, p, r, temperature=rl.temperature, gen_length=rl.gen_length,
                          clip_eps=rl.clip_eps, beta=0.0)
  update = jax.jit(rl_trainer._accumulated_update(loss_fn, rl_opt, rl.micro_batch))
  rl_state = state_lib.create(params, rl_opt, 0)
  update_s = median_seconds(lambda: update(rl_state, rows)[1]["loss"], args.repeats)

  total = roll_s + score_s + update_s
  n = rl.prompts_per_update * rl.group_size
  print(f"device: {jax.devices()[0].device_kind} ×{jax.device_count()}; model "
        f"{model_cfg.num_params() / 1e6:.2f}M params; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"SFT step (batch {batch_size} × {seq} tokens): {sft_s * 1e3:.0f} ms → "
        f"{1 / sft_s:.2f} steps/s")
  print(f"MDPO update ({rl.prompts_per_update} prompts × G={rl.group_size} = {n} rollouts of "
        f"{rl.gen_length} tokens in {rl.steps} steps; {len(rows['adv'])} trained steps):")
  print("| phase | seconds | share |\n|---|---|---|")
  for name, s in (("rollouts (one jitted scan)", roll_s),
                  (f"decode + verify {n * rl.steps} predictions (host)", score_s),
                  ("update (micro-batched grad + AdamW)", update_s)):
    print(f"| {name} | {s:.3f} | {s / total:.0%} |")
  print(f"| total | {total:.3f} | → {3600 / total:.0f} updates/hour |")


if __name__ == "__main__":
  main()
