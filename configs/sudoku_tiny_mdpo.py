"""MDPO on the tiny 4×4 Sudoku model, from the SFT run of sudoku_tiny_sft.py (CPU).

  python -m mdpo_jax.train --config configs/sudoku_tiny_mdpo.py --workdir /tmp/sudoku_mdpo \
      --config.model.init_checkpoint=/tmp/sudoku_sft/checkpoints

Rollouts commit four tokens per step (24 tokens in 6 steps) at T = 0.5; every step's prediction
x̂0_t is scored with d1's dense reward (fraction of empty cells right), and the K = 4 steps with
the largest |Â_t| per rollout are trained. Prompts are fresh puzzles, disjoint from SFT's,
validation and held-out (`rl.prompt_source="fresh"`), as in the Countdown recipe.
"""

from configs import sudoku_tiny_sft


def get_config():
  c = sudoku_tiny_sft.get_config()
  c.trainer = "mdpo"
  c.optim.lr = 1e-4
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 0
  c.optim.weight_decay = 0.0
  c.rl.num_updates = 30
  c.rl.prompt_source = "fresh"
  c.rl.fresh_size = 2000
  c.rl.prompts_per_update = 8
  c.rl.group_size = 16
  c.rl.top_k = 4
  c.rl.temperature = 0.5
  c.rl.gen_length = 24
  c.rl.steps = 6
  c.rl.block_lengths = (24,)
  c.rl.micro_batch = 64
  c.train.checkpoint_every = 10
  c.eval.steps = (6,)
  return c
