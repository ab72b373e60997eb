"""The diffu-GRPO (d1) baseline on LLaDA-8B-Instruct for Countdown, with LoRA — for TPU/GPU.

  python -m mdpo_jax.train --config configs/llada8b_countdown_diffu_grpo.py \
      --workdir gs://BUCKET/grpo_countdown --config.model.hf_checkpoint=/path/to/LLaDA-8B-Instruct

Not run in CI. Hyper-parameters of d1 (SPEC §4, diffu-GRPO; the d1 code's train.yaml): LoRA rank
128, alpha 64 on every projection (d1 also uses LoRA dropout 0.05, which we do not have), AdamW
(0.9, 0.99), weight decay 0.1, grad clip 0.2, lr 3e-6 constant; G = 6 rollouts of 256 tokens in
blocks of 32, 128 steps, low-confidence remasking, T = 0.9 (d1's config default); one-step log-probs with prompt tokens masked with
p = 0.15; clip ε = 0.5, k3 KL β = 0.04 against the base (with LoRA the reference is the base
itself: no second copy of the weights); 12 inner updates per rollout batch; 16 prompts per batch.
Slice: bf16 base (16 GB) frozen, adapters and their Adam moments ~1.3 GB → one 8×H100 80 GB node
or a v5p-8 / v4-16 slice, FSDP, remat.
"""

from configs import llada8b_countdown_mdpo


def get_config():
  c = llada8b_countdown_mdpo.get_config()   # model, task, mesh and evaluation of the MDPO recipe
  c.trainer = "diffu_grpo"
  c.model.lora_rank = 128
  c.model.lora_alpha = 64.0
  c.optim.lr = 3e-6
  c.optim.b1, c.optim.b2 = 0.9, 0.99
  c.optim.weight_decay = 0.1
  c.optim.clip_norm = 0.2
  c.rl.num_updates = 400
  c.rl.prompts_per_update = 16
  c.rl.group_size = 6
  c.rl.inner_iters = 12
  c.rl.micro_batch = 8
  c.rl.temperature = 0.9
  c.rl.gen_length = 256
  c.rl.steps = 128
  c.rl.block_lengths = (32,)
  c.rl.clip_eps = 0.5
  c.rl.beta = 0.04
  c.rl.prompt_mask_prob = 0.15
  c.rl.filter = "none"
  return c
