"""MDPO on the tiny 4×4 Sudoku model, from the SFT run of sudoku_tiny_sft.py (CPU).

  python -m mdpo_jax.train --config configs/sudoku_tiny_mdpo.py --workdir /tmp/sudoku_mdpo \
      --config.model.init_checkpoint=/tmp/sudoku_sft/checkpoints

Rollouts and evaluation decode the 24 answer tokens in 3 steps (8 per step), the few-step regime
where cells decided together conflict: on 300 validation puzzles the seed-0 SFT model solves
96% with 6 tokens per step, 90% with 8 and 83% with 12 (on 500 held-out puzzles, measured
earlier: all with 1 per step, 97% with 4), so 8 per step leaves RL room. Every step's
prediction x̂0_t is scored with d1's dense reward (fraction of empty cells right), and the K = 4
of 3 steps — all of them — are trained. Prompts are fresh puzzles, disjoint from SFT's,
validation and held-out (`rl.prompt_source="fresh"`). Otherwise the Countdown recipe
(`countdown_tiny_mdpo.with_mdpo`: 8 prompts × G=16, T = 0.5, lr 1e-4, 100 updates); not tuned
on Sudoku.
"""

from configs import countdown_tiny_mdpo, sudoku_tiny_sft


def get_config():
  c = countdown_tiny_mdpo.with_mdpo(sudoku_tiny_sft.get_config())
  c.rl.steps = 3
  c.rl.top_k = 3
  c.eval.steps = (3,)
  return c
