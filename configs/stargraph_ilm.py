"""Star-graph path finding with a tiny insertion language model (ILM; `models/ilm.py`): the
same task, data, model size, optimiser and steps as `configs/stargraph_mdm.py`.

  python -m mdpo_jax.train --config configs/stargraph_ilm.py --workdir /tmp/star_ilm

Training deletes a uniform number of random answer tokens and learns to put them back (one
softmax over every (slot, token) pair) and when to stop (a stop head on CLS); sampling inserts
one token per model call until the stop head fires (at most `eval.gen_length` insertions).
"""

from configs import stargraph_mdm


def get_config():
  c = stargraph_mdm.get_config()
  c.trainer = "ilm"
  return c
