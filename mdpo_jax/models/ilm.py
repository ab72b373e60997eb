"""Insertion language model (ILM; Patel et al., 2025): LLaDA's bidirectional encoder with an
insertion head and a stop head.

The network reads the current, *shorter* sequence, laid out in a fixed-width row

    [CLS] [prompt, left-padded] [BOS] t1 … tn [pad …]

with `attention_mask` 1 on real tokens; positions come from the mask (`llada.positions_from_mask`),
so CLS is position 0 and the answer tokens are numbered contiguously after BOS whatever the
padding. It returns
* `insert_logits_BxLxV`: logit (i, v) = "insert token v right after the token at i". One softmax
  over every allowed (slot, token) pair is the model's insertion distribution (the loss and the
  sampler mask the slots and tokens that are not allowed);
* `stop_logit_B`: from CLS's hidden state; sigmoid = p(the sequence is complete).

The encoder and the per-slot head are LLaDA's (`llada.hidden_states`, `llada.lm_head`): the row of
slot i is the LM head applied to hidden state i, exactly LLaDA's math; only the stop head
(`stop_head` [D], `stop_bias` []) is new. CLS is the tokenizer's mask token (an ILM never masks,
so that embedding row is free) and always sits at index 0 of the row (`CLS_INDEX`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from mdpo_jax import parallel
from mdpo_jax.models import llada

Params = Mapping[str, Any]
CLS_INDEX = 0
STOP_AXES = {"stop_head": ("embed",), "stop_bias": ()}


def cls_token_id(config: llada.LLaDAConfig) -> int:
  """The CLS id of an ILM built on `config`: its mask token (never used otherwise)."""
  return config.mask_token_id


def insertable_tokens(config: llada.LLaDAConfig) -> jax.Array:
  """Bool [V]: the tokens an ILM may insert — all but CLS/mask, BOS, EOS/pad and EOT."""
  special = [config.mask_token_id, config.bos_token_id, config.eos_token_id,
             config.pad_token_id, config.eot_token_id]
  return jnp.ones((config.vocab_size,), bool).at[jnp.asarray(special)].set(False)


def init_params(config: llada.LLaDAConfig, rng: jax.Array) -> dict:
  """LLaDA's parameters plus the stop head (zero bias, normal(init_std) weights)."""
  backbone_rng, stop_rng = jax.random.split(rng)
  params = dict(llada.init_params(config, backbone_rng))
  dt = jnp.dtype(config.param_dtype)
  stop_D = config.init_std * jax.random.normal(stop_rng, (config.d_model,))
  params["stop_head"] = stop_D.astype(dt)
  params["stop_bias"] = jnp.zeros((), dt)
  return params


@functools.lru_cache(maxsize=32)
def param_logical_axes(config: llada.LLaDAConfig) -> dict:
  """Logical axis names of every parameter (LLaDA's, plus the stop head's)."""
  return {**llada.param_logical_axes(config), **STOP_AXES}


def abstract_params(config: llada.LLaDAConfig) -> dict:
  return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def param_shardings(config: llada.LLaDAConfig, mesh: jax.sharding.Mesh,
                    rules: Sequence[tuple[str, Any]] = parallel.DEFAULT_RULES) -> dict:
  return parallel.shardings_from_axes(param_logical_axes(config), abstract_params(config), mesh,
                                      rules)


def init_sharded_params(config: llada.LLaDAConfig, rng: jax.Array, mesh: jax.sharding.Mesh,
                        rules: Sequence[tuple[str, Any]] = parallel.DEFAULT_RULES) -> dict:
  """`init_params` created directly in its shards on `mesh`."""
  shardings = param_shardings(config, mesh, rules)
  return jax.jit(lambda key: init_params(config, key), out_shardings=shardings)(rng)


def forward(config: llada.LLaDAConfig, params: Params, tokens_BxL, *, attention_mask):
  """(insert_logits_BxLxV, stop_logit_B), both float32 (see the module docstring).

  `attention_mask` [B, L] is required (1 = real token; CLS at index 0 must be real): it decides
  which keys are attended to and the positions."""
  if not config.honor_padding:
    raise ValueError("an ILM needs honor_padding=True (its rows are padded in the middle)")
  hidden_BxLxD, _ = llada.hidden_states(config, params, tokens_BxL,
                                        attention_mask=attention_mask)
  insert_logits_BxLxV = llada.lm_head(config, params, hidden_BxLxD).astype(jnp.float32)
  cls_BxD = hidden_BxLxD[:, CLS_INDEX].astype(jnp.float32)
  stop_logit_B = cls_BxD @ params["stop_head"].astype(jnp.float32) + params["stop_bias"]
  return insert_logits_BxLxV, stop_logit_B.astype(jnp.float32)


def forward_fn(config: llada.LLaDAConfig) -> Callable:
  """`fwd(params, tokens_BxL, attention_mask=...) -> (insert_logits, stop_logit)`: the form the
  ILM loss and sampler take (a hashable partial, a valid static argument)."""
  return functools.partial(forward, config)
