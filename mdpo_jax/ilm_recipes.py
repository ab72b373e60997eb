"""The star-graph comparison's recipes: ILM, MDM and AR on one split with run-wide settings.

Kept apart from `ilm_compare` (which defines absl flags) so that tests and notebooks can build
the recipes without registering the command's flags.
"""

from __future__ import annotations

from configs import stargraph_ar, stargraph_ilm, stargraph_mdm

# degree, arm lengths (nodes, source included): easy = the ILM paper's easy split; medium: the
# path's length unknown; small: one node between source and goal (a one-hop lookup).
SPLITS = {"easy": (3, 5, 5), "medium": (3, 3, 6), "small": (2, 3, 3)}
RECIPES = {"ilm": stargraph_ilm, "mdm": stargraph_mdm, "ar": stargraph_ar}


def recipe(model: str, split: str, *, seed: int = 0, steps: int | None = None,
           eval_problems: int = 500, lr: float | None = None):
  """The model's recipe on `split` with the run-wide settings; the trainer's own end-of-run
  evaluation is cut to one problem (the tables are measured here)."""
  c = RECIPES[model].get_config()
  c.seed = seed
  c.task.graph_degree, c.task.arm_min, c.task.arm_max = SPLITS[split]
  c.task.eval_size = max(c.task.eval_size, eval_problems)
  c.task.val_size = max(c.task.val_size, eval_problems)
  if steps:
    c.train.num_steps = c.train.checkpoint_every = steps
    c.optim.warmup_steps = min(c.optim.warmup_steps, steps)
  if lr:
    c.optim.lr = lr
  c.eval.num_problems, c.eval.batch_size = 1, 1
  return c
