"""MDPO on the tiny 4×4 Sudoku model, from the SFT run of sudoku_tiny_sft.py (CPU).

  python -m mdpo_jax.train --config configs/sudoku_tiny_mdpo.py --workdir /tmp/sudoku_mdpo \
      --config.model.init_checkpoint=/tmp/sudoku_sft/checkpoints

Rollouts commit four tokens per step (24 tokens in 6 steps) at T = 0.5; every step's prediction
x̂0_t is scored with d1's dense reward (fraction of empty cells right), and the K = 4 steps with
the largest |Â_t| per rollout are trained. Prompts are fresh puzzles, disjoint from SFT's,
validation and held-out (`rl.prompt_source="fresh"`): the Countdown recipe's settings
(`countdown_tiny_mdpo.with_mdpo`), 30 updates.
"""

from configs import countdown_tiny_mdpo, sudoku_tiny_sft


def get_config():
  c = countdown_tiny_mdpo.with_mdpo(sudoku_tiny_sft.get_config())
  c.rl.num_updates = 30
  c.train.checkpoint_every = 10
  c.eval.steps = (6,)
  return c
