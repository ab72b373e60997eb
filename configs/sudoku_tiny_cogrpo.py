"""Co-GRPO on the tiny 4×4 Sudoku model: the 16 cells (24 answer tokens) in 4 denoising steps,
from the SFT run of sudoku_tiny_sft.py (CPU).

  python -m mdpo_jax.train --config configs/sudoku_tiny_cogrpo.py --workdir /tmp/sudoku_cogrpo \
      --config.model.init_checkpoint=/tmp/sudoku_sft/checkpoints [--config.rl.cogrpo_mode=joint]

The Countdown recipe's settings (`countdown_tiny_cogrpo.with_cogrpo`) on the Sudoku MDPO recipe
(d1's dense reward: the fraction of empty cells filled right). Our own design (SPEC §6).
"""

from configs import countdown_tiny_cogrpo, sudoku_tiny_mdpo


def get_config():
  return countdown_tiny_cogrpo.with_cogrpo(sudoku_tiny_mdpo.get_config(), gen_length=24, steps=4)
