"""The diffu-GRPO (d1) baseline on the tiny 4×4 Sudoku model, from the same SFT start (CPU).

  python -m mdpo_jax.train --config configs/sudoku_tiny_diffu_grpo.py \
      --workdir /tmp/sudoku_grpo --config.model.init_checkpoint=/tmp/sudoku_sft/checkpoints

The Countdown baseline's settings (`countdown_tiny_diffu_grpo.with_diffu_grpo`: one-step
log-prob estimate, ε = 0.5, one update per rollout batch, lr 1e-4, d1's KL β = 0.04) on the
Sudoku MDPO recipe's rollouts and budget (same fresh puzzles, G, T, steps, number of updates).
Not tuned on Sudoku. The README's Sudoku table ran it before β was added
(`--grpo_config.rl.beta=0` reproduces that run).
"""

from configs import countdown_tiny_diffu_grpo, sudoku_tiny_mdpo


def get_config():
  return countdown_tiny_diffu_grpo.with_diffu_grpo(sudoku_tiny_mdpo.get_config())
