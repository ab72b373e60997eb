"""SFT of LLaDA-8B (Hugging Face weights) on Countdown with the full prompt — for TPU/GPU.

  python -m mdpo_jax.train --config configs/llada8b_sft.py --workdir gs://BUCKET/llada8b_sft \
      --config.model.hf_checkpoint=/path/to/LLaDA-8B-Instruct

Not run in CI. Memory: float32 master params (32 GB; bfloat16 compute) + float32 AdamW moments
(64 GB) + gradients, fully sharded over `fsdp` (`python -m mdpo_jax.plan` prints the figures per
slice; README "Memory plan"), with remat; run the same command on every worker of a pod slice
(see launch/). The tokenizer comes from the checkpoint folder.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.trainer = "sft"
  c.model.preset = "llada_8b"
  c.model.hf_checkpoint = ""           # set on the command line
  c.model.remat = "full"
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"   # master weights: bfloat16 ones lose most steps (README)
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
  c.data.tokenizer = ""                # "" → the tokenizer.json of model.hf_checkpoint
  c.data.seq_len = 512
  c.data.prompt_len = 192
  c.data.batch_size = 128
  c.task.prompt_style = "full"
  c.task.answer_style = "steps"
  c.task.num_numbers = (3, 4)
  c.task.number_max = 100
  c.task.target_max = 1000
  c.task.train_size = 200_000
  c.optim.lr = 2.5e-5
  c.optim.warmup_steps = 50
  c.optim.schedule = "linear"
  c.optim.weight_decay = 0.1
  c.optim.b2 = 0.95
  c.optim.grad_accum_steps = 4
  c.train.num_steps = 2000
  c.train.checkpoint_every = 200
  c.eval.num_problems = 1000
  c.eval.batch_size = 64
  c.eval.gen_length = 256
  c.eval.block_length = 32
  c.eval.steps = (256, 64)
  c.eval.head_chunk = 32       # the sampler's LM head over 32 positions at a time
  return c
