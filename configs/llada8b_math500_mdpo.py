"""MDPO on LLaDA-8B-Instruct with the reference hyper-parameters (SPEC §4) — for TPU/GPU.

  python -m mdpo_jax.train --config configs/llada8b_math500_mdpo.py --workdir gs://BUCKET/mdpo \
      --config.model.hf_checkpoint=/path/to/LLaDA-8B-Instruct

Not run in CI. Reference: full fine-tune in bf16; rollouts gen 512, 128 steps, block 512 or 128
drawn per batch, low-confidence remasking, T = 0.4, G = 8; the K = 8 steps with the largest |Â_t|
per rollout; AdamW (0.9, 0.999), wd 0, clip 1.0, constant lr 7e-7; 16 prompts × 8 rollouts × 8
steps per update; β = 0.02 with a frozen reference.
Slice: policy + reference bf16 (32 GB) + float32 Adam moments (64 GB) + activations of
micro-batches of 640-token rows → a v5p-32 / v4-64 slice or 2 nodes of 8×H100 80 GB, FSDP.
MATH: `--config.task.train_file=math_train.jsonl --config.task.eval_file=math500.jsonl` (local
JSONL exports with "problem" and "answer" or a boxed "solution"); rewards by math-verify.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.trainer = "mdpo"
  c.model.preset = "llada_8b"
  c.model.remat = "full"
  # bfloat16 compute on float32 master weights: a bfloat16 weight cannot take a step of lr 7e-7
  # (below half its ulp for almost every weight: 0.5% of them changed per step, measured); the
  # reference copy is kept in bfloat16 (`policy.frozen_copy`: the same forward).
  c.model.dtype, c.model.param_dtype = "bfloat16", "float32"
  c.data.tokenizer = ""
  c.data.prompt_len = 256
  c.task.name = "math"
  c.task.train_size = 7500
  c.task.eval_size = 500
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
  c.optim.lr = 7e-7
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 0
  c.optim.b1, c.optim.b2 = 0.9, 0.999
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 1.0
  c.rl.num_updates = 100
  c.rl.prompts_per_update = 16
  c.rl.group_size = 8
  c.rl.top_k = 8
  c.rl.inner_iters = 1
  c.rl.micro_batch = 8
  c.rl.temperature = 0.4
  c.rl.gen_length = 512
  c.rl.steps = 128
  c.rl.block_lengths = (128, 512)
  c.rl.beta = 0.02
  c.rl.filter = "over_denoising"
  c.rl.reward_workers = 16
  c.rl.head_chunk = 32   # LM head over 32 positions at a time: no [128, 768, 126k] logits
  c.eval.gen_length, c.eval.block_length, c.eval.steps = 512, 512, (256,)
  c.eval.batch_size = 32
  c.eval.head_chunk = 32
  return c
