"""Co-GRPO on the tiny Countdown model: learn the sampling schedule (and the model) at a small
step budget, 24 tokens in 3 denoising steps, from the SFT run of countdown_tiny_sft.py (CPU).

  python -m mdpo_jax.train --config configs/countdown_tiny_cogrpo.py --workdir /tmp/countdown_cogrpo \
      --config.model.init_checkpoint=/tmp/countdown_sft/checkpoints [--config.rl.cogrpo_mode=joint]

`rl.cogrpo_mode`: joint (θ and the schedule φ), model_only (θ with the hand schedule), or
schedule_only (φ with θ frozen). φ starts at the hand schedule (LLaDA's 8 + 8 + 8 tokens per step,
T = rl.temperature) with std 0.3 per action in the unconstrained space, and learns per step the
share of the block's masked tokens to commit, the sampling temperature and the ranking
temperature (rl/schedule_policy.py). The learned schedule is printed at the end and written to
WORKDIR/cogrpo_schedule.json. Our own design for text (the paper is text-to-image, no code).
"""

from configs import countdown_tiny_mdpo


def get_config():
  return with_cogrpo(countdown_tiny_mdpo.get_config(), gen_length=24, steps=3)


def with_cogrpo(c, *, gen_length: int, steps: int):
  """An MDPO recipe turned into Co-GRPO at `steps` denoising steps for `gen_length` tokens (one
  block): the MDPO recipe's prompts, group size and lr for θ; PPO clip 0.2, no KL."""
  c.trainer = "cogrpo"
  c.rl.gen_length = gen_length
  c.rl.steps = steps
  c.rl.block_lengths = (gen_length,)
  c.rl.num_updates = 40
  c.rl.cogrpo_mode = "joint"
  c.rl.cogrpo_knobs = ("commit", "temperature", "rank_temperature")
  c.rl.cogrpo_schedule_lr = 0.05
  c.rl.micro_batch = 32
  c.eval.steps = (steps,)
  c.train.checkpoint_every = 10
  return c
