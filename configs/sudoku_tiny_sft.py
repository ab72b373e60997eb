"""SFT of a tiny masked diffusion LM from scratch on 4×4 Sudoku, as d1 poses it (CPU).

  python -m mdpo_jax.train --config configs/sudoku_tiny_sft.py --workdir /tmp/sudoku_sft

Procedural puzzles with unique solutions (6–10 empty cells of 16), character tokens; the prompt
is `Puzzle: <16 digits, 0 = empty>` and the answer the solved grid, `\\boxed{<16 digits>}`.
Reward (d1): the fraction of the puzzle's empty cells filled right; the tables report the mean
reward and the fraction of puzzles solved outright. Evaluated on held-out puzzles (disjoint from
training) with one and with four tokens committed per step, low-confidence remasking vs RCR.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.trainer = "sft"
  c.task.name = "sudoku"
  c.task.prompt_style = "compact"
  c.task.empty_min, c.task.empty_max = 6, 10
  c.task.train_size = 12000
  c.task.eval_size = 500
  c.task.val_size = 500
  c.data.seq_len = 56          # prompt 25 + answer 23 + EOS padding
  c.data.prompt_len = 28
  c.eval.gen_length = 24
  c.eval.block_length = 24
  c.eval.steps = (24, 6)       # one and four tokens committed per step
  c.optim.lr = 2e-3
  c.train.num_steps = 1000
  c.train.log_every = 100
  return c
