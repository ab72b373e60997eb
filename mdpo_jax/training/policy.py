"""The trained policy: full parameters, or LoRA adapters on a frozen base.

Every trainer holds one `Policy` and one trainable pytree (`state.params`): the full params, or
the adapters. The frozen base is an *argument* of the jitted steps (`policy.base`), never a
closure constant, so it is neither differentiated nor baked into the compiled program.

Rollouts and old-policy log-probs run `sample_fn` on `sample_params(params)` — with LoRA the
forward of {"base", "adapters"}, exactly the function the loss differentiates (so the importance
ratio is 1 on-policy even with bf16 weights, where a merged W + ΔW would round small updates
away) and no second copy of the weights. `merged(params)` gives plain-forward params (evaluation,
the run's result).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from mdpo_jax.models import families, lora


def frozen_dtype(leaf_dtype, model_cfg: families.ModelConfig):
  """The dtype a weight that is never updated is kept in: the compute dtype (`model.dtype`)
  where that is narrower than the stored one (float32 master weights, bfloat16 compute),
  else its own. Exact: the forward casts every weight to the compute dtype before use."""
  compute = jnp.dtype(model_cfg.dtype)
  narrower = (jnp.issubdtype(leaf_dtype, jnp.floating)
              and jnp.dtype(leaf_dtype).itemsize > compute.itemsize)
  return compute if narrower else jnp.dtype(leaf_dtype)


def frozen_copy(params, model_cfg: families.ModelConfig):
  """A copy of `params` for a model that never trains (the RL reference, LoRA's base) in
  `frozen_dtype`: half the bytes of float32 master weights, the same forward."""
  return jax.tree.map(lambda x: x.astype(frozen_dtype(x.dtype, model_cfg)), params)


@dataclasses.dataclass(frozen=True)
class Policy:
  model_cfg: families.ModelConfig
  lora_cfg: lora.LoraConfig | None
  base: Any        # the frozen base params with LoRA; None for a full fine-tune

  @property
  def sample_fn(self):
    if self.lora_cfg is None:
      return families.forward_fn(self.model_cfg)
    return lora.policy_forward_fn(self.model_cfg, self.lora_cfg)

  def forward(self, base):
    """The loss's forward of the trainable params; `base` is the traced frozen base (or None)."""
    if self.lora_cfg is None:
      return families.forward_fn(self.model_cfg)
    return lora.forward_fn(self.model_cfg, self.lora_cfg, base)

  def sample_params(self, params):
    return params if self.lora_cfg is None else {"base": self.base, "adapters": params}

  def merged(self, params):
    if self.lora_cfg is None:
      return params
    return jax.jit(lora.merge, static_argnums=0)(self.lora_cfg, self.base, params)
