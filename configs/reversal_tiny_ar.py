"""The reversal-curse miniature, autoregressive side: `reversal_tiny_mdm.py` with the causal twin.

  python -m mdpo_jax.train --config configs/reversal_tiny_ar.py --workdir /tmp/reversal_ar

Same facts, model size, batch, optimiser and steps; next-token loss on every token of each
statement; greedy left-to-right decoding (`eval.sampler="ar"`, KV cache).
"""

from configs import reversal_tiny_mdm


def get_config():
  c = reversal_tiny_mdm.get_config()
  c.model.family = "ar"
  c.eval.sampler = "ar"
  c.eval.cache = "prefix"
  return c
