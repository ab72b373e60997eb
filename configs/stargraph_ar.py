"""Star-graph path finding with a tiny autoregressive baseline (`model.family="ar"`: the same
blocks with causal attention, next-token loss): the same task, data, model size, optimiser and
steps as `configs/stargraph_mdm.py`.

  python -m mdpo_jax.train --config configs/stargraph_ar.py --workdir /tmp/star_ar
"""

from configs import stargraph_mdm


def get_config():
  c = stargraph_mdm.get_config()
  c.model.family = "ar"
  c.eval.sampler = "ar"
  c.eval.cache = "prefix"      # incremental decoding (exact for a causal model)
  return c
