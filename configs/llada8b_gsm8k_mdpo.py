"""MDPO on LLaDA-8B-Instruct for GSM8K, with the MATH recipe's settings (SPEC §4) — for TPU/GPU.

  python -m mdpo_jax.train --config configs/llada8b_gsm8k_mdpo.py --workdir gs://BUCKET/gsm8k \
      --config.model.hf_checkpoint=/path/to/LLaDA-8B-Instruct \
      --config.task.train_file=gsm8k_train.jsonl --config.task.eval_file=gsm8k_test.jsonl

Not run in CI. GSM8K JSONL records ("question", and "answer" ending in `#### <number>`, the
dataset's own format) from local files; the reward is an exact rational match of the final
number (`mdpo_jax.tasks.gsm8k`). Generation 256 tokens (d1's GSM8K length), blocks of 32 or 256.
"""

from configs import llada8b_math500_mdpo


def get_config():
  c = llada8b_math500_mdpo.get_config()
  c.task.name = "gsm8k"
  c.task.train_size = 7473
  c.task.eval_size = 1319
  c.rl.gen_length = 256
  c.rl.steps = 128
  c.rl.block_lengths = (32, 256)
  c.eval.gen_length, c.eval.block_length, c.eval.steps = 256, 32, (128,)
  return c
