"""The autoregressive baseline of `countdown_tiny_sft.py`: same transformer, data and steps, causal.

  python -m mdpo_jax.train --config configs/countdown_tiny_ar_sft.py --workdir /tmp/countdown_ar

`model.family="ar"` (`models/ar.py`): LLaDA's network with causal attention, trained by the same
SFT trainer with next-token cross-entropy on the answer tokens (EOS padding included, as the
masked loss), evaluated by left-to-right decoding (`eval.sampler="ar"`, greedy, with a KV cache:
exact for a causal model). Everything else — task, tokenizer, model size, batch, optimiser,
steps — is the masked diffusion recipe's, so the two compare at equal size, data and updates.
"""

from configs import countdown_tiny_sft


def get_config():
  c = countdown_tiny_sft.get_config()
  c.model.family = "ar"
  c.eval.sampler = "ar"
  c.eval.cache = "prefix"      # incremental decoding (exact for a causal model)
  c.eval.trajectory_stats = False
  return c
