"""MDPO on the tiny Countdown model, starting from the SFT run of countdown_tiny_sft.py (CPU).

  python -m mdpo_jax.train --config configs/countdown_tiny_mdpo.py --workdir /tmp/countdown_mdpo \
      --config.model.init_checkpoint=/tmp/countdown_sft/checkpoints

Rollouts commit several tokens per step (24 tokens in 6 steps) — the regime where intermediate
predictions are often right while the final answer is not — and every step's prediction is
scored; the K steps with the largest |Â_t| per rollout are trained (SPEC §4). Prompts are fresh
problems of the training distribution (`rl.prompt_source="fresh"`: none trained on by SFT, none in
the validation or held-out splits): on the SFT problems themselves, whose answers the model has
memorised, MDPO learned little that carried over (README, "What moved MDPO").
"""

from configs import countdown_tiny_sft


def get_config():
  return with_mdpo(countdown_tiny_sft.get_config())


def with_mdpo(c):
  """An SFT recipe turned into the tiny MDPO recipe (also the Sudoku one's): 8 fresh prompts ×
  G=16 per update, top-4 of 6 steps, T = 0.5, constant lr 1e-4."""
  c.trainer = "mdpo"
  c.optim.lr = 1e-4
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 0
  c.optim.weight_decay = 0.0
  c.rl.num_updates = 100        # ~7.5 min here; lr and prompt source chosen on validation (README)
  c.rl.prompt_source = "fresh"
  c.rl.prompts_per_update = 8
  c.rl.group_size = 16
  c.rl.top_k = 4
  c.rl.temperature = 0.5
  c.rl.gen_length = 24
  c.rl.steps = 6
  c.rl.block_lengths = (24,)
  c.rl.micro_batch = 64
  c.train.checkpoint_every = 25
  c.train.keep_checkpoints = 2
  return c
