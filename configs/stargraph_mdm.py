"""Star-graph path finding (Bachmann & Nagarajan; degree 3, arms of 5 nodes, 20 node labels —
the ILM paper's easy split) with a tiny masked diffusion LM trained from scratch by SFT (CPU).

  python -m mdpo_jax.train --config configs/stargraph_mdm.py --workdir /tmp/star_mdm

The prompt is the shuffled edge list and the source/goal (`"ab|bc|.../ag="`, one letter per
node), the answer the source-to-goal path (`"abcdg"`), EOS-padded; exact-match verification
along the edges (`tasks/stargraph.py`). Evaluated greedily with one token committed per step.
`configs/stargraph_ilm.py` and `configs/stargraph_ar.py` train the insertion LM and the
autoregressive baseline with the same size, data and steps (`shared()` below);
`python -m mdpo_jax.ilm_compare` runs all three and prints the comparison.
The medium split (arm lengths 3–6, the answer's length unknown):
`--config.task.arm_min=3 --config.task.arm_max=6 --config.data.prompt_len=48`.
"""

from configs import base


def shared(c):
  """What the three star-graph recipes share: task, data, model size, optimiser, steps."""
  c.seed = 0
  c.task.name = "stargraph"
  c.task.graph_degree, c.task.arm_min, c.task.arm_max, c.task.graph_nodes = 3, 5, 5, 20
  c.task.train_size = 20000
  c.task.eval_size = 500
  c.task.val_size = 500
  c.data.prompt_len = 48       # ≤ 16 edges × 3 − 1 + 4 characters (the medium split's longest)
  c.data.seq_len = 56          # prompt + answer ≤ 6 + EOS padding (MDM / AR rows)
  c.data.batch_size = 64
  c.model.d_model, c.model.n_layers, c.model.n_heads = 128, 3, 4
  c.model.n_kv_heads, c.model.mlp_hidden_size = 4, 384
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 100
  c.train.num_steps = 1000     # ≈ 7 min per model on this 2-core CPU when it is not shared
  c.train.log_every = 100
  c.train.checkpoint_every = 1000
  c.eval.num_problems = 500
  c.eval.batch_size = 250
  c.eval.gen_length = 8        # answer tokens (and EOS) generated
  c.eval.block_length = 8
  c.eval.steps = (8,)          # one token per step
  c.eval.remasking = ("low_confidence",)
  c.eval.trajectory_stats = False
  return c


def get_config():
  c = shared(base.get_config())
  c.trainer = "sft"
  return c
