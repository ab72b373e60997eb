"""The reversal-curse miniature, masked diffusion side (SMDM §5): learn "A is B", ask "B is ?".

  python -m mdpo_jax.train --config configs/reversal_tiny_mdm.py --workdir /tmp/reversal_mdm
  python benchmarks/reversal_curse.py      # this and configs/reversal_tiny_ar.py, one table

240 fictitious facts (`tasks/reversal.py`), half trained as "NAME is desc.", half as
"desc is NAME."; SFT on the statements with the prompt only a start marker, so every token of a
sentence may be masked. Evaluated on both queries of 200 facts — the trained order and the
reverse — by exact match, greedy, one token per step; the other 40 facts' queries are the
validation split (used to choose the training length).
"""

from configs import base


def get_config():
  c = base.get_config()
  c.trainer = "sft"
  c.task.name = "reversal"
  c.task.train_size = 240
  c.task.eval_size = 200
  c.task.val_size = 40
  c.data.seq_len = 16          # ">" + "ABC is xyz." + EOS padding
  c.data.prompt_len = 8        # ">xyz is "
  c.data.batch_size = 64
  c.eval.num_problems = 400    # both queries of the 200 held-out facts
  c.eval.batch_size = 400
  c.eval.gen_length = 6        # "ABC." + EOS
  c.eval.block_length = 6
  c.eval.steps = (6,)
  c.eval.remasking = ("low_confidence",)
  c.eval.trajectory_stats = False
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 100
  c.train.num_steps = 1500
  c.train.log_every = 100
  c.train.checkpoint_every = 1500
  return c
