"""Per-position log-probs / cross-entropies with the LM head applied a chunk of positions at a
time (`diffusion/chunked.py`): the same values and gradients as from the full logits, for every
forward that offers its head (LLaDA, Dream's shifted one, LoRA), and no [B, L, V] array in the
differentiated MDPO and SFT losses."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdpo_jax.diffusion import chunked, losses
from mdpo_jax.models import dream, llada, lora
from mdpo_jax.rl import common, mdpo
from run_helpers import all_shapes

B, L, V = 3, 11, 40   # L is no multiple of the chunk: the padded tail is scored and dropped


def _model(kind):
  key = jax.random.key(0)
  if kind == "dream":
    cfg = dream.tiny(vocab_size=V)
    return cfg, dream.forward_fn(cfg), dream.init_params(cfg, key)
  cfg = llada.tiny(vocab_size=V)
  params = llada.init_params(cfg, key)
  if kind == "llada":
    return cfg, llada.forward_fn(cfg), params
  lcfg = lora.LoraConfig(rank=2, alpha=4.0, targets=("q_proj", "ff_out"))
  adapters = lora.init_adapters(cfg, lcfg, jax.random.key(1))
  adapters = jax.tree.map(lambda a: a + 0.05, adapters)   # B ≠ 0: the adapters matter
  return cfg, lora.forward_fn(cfg, lcfg, params), adapters


def _inputs():
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, V - 4, (B, L)), jnp.int32)
  targets = jnp.asarray(rng.integers(0, V - 4, (B, L)), jnp.int32)
  mask = jnp.asarray(np.arange(L)[None] >= np.array([[0], [2], [5]]), jnp.int32)  # left padding
  weights = jnp.asarray(rng.normal(size=(B, L)), jnp.float32)
  return tokens, targets, mask, weights


def test_chunked_scores_and_gradients_equal_the_full_logits():
  """Both scores, chunk by chunk (3 chunks of 4 positions, the last padded), against the same
  scores of the whole logits: values and gradients (hidden states and head weights)."""
  rng = np.random.default_rng(1)
  hidden = jnp.asarray(rng.normal(size=(B, L, 16)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(16, V)), jnp.float32)
  _, targets, _, weights = _inputs()
  scores = (functools.partial(common.token_logprobs_from_logits, temperature=0.7),
            losses.token_ce)

  def totals(h, w):
    head = lambda x: jnp.einsum("bcd,dv->bcv", x, w)  # noqa: E731
    out = {}
    for name, score in zip(("logp", "ce"), scores):
      out[name, "chunked"] = chunked.chunked_scores(h, head, targets, score, chunk=4)
      out[name, "full"] = score(head(h), targets)
    return out

  def grads(h, w):
    return {k: jax.grad(lambda h, w: jnp.sum(weights * totals(h, w)[k]), (0, 1))(h, w)
            for k in totals(h, w)}

  values, gradients = jax.jit(lambda h, w: (totals(h, w), grads(h, w)))(hidden, w)
  for name in ("logp", "ce"):
    np.testing.assert_allclose(values[name, "chunked"], values[name, "full"], rtol=1e-6,
                               atol=1e-6)
    for a, b in zip(gradients[name, "chunked"], gradients[name, "full"]):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["llada", "dream", "lora"])
def test_the_returned_head_gives_the_forward_logits(kind):
  """`return_head=True`: the (shifted, for Dream) hidden states and the head that make exactly
  the forward's logits, so the chunked scores are the model's."""
  _, fwd, params = _model(kind)
  tokens, _, mask, _ = _inputs()
  assert chunked.takes_head(fwd)
  hidden, head = fwd(params, tokens, attention_mask=mask, return_head=True)
  np.testing.assert_allclose(head(hidden), fwd(params, tokens, attention_mask=mask),
                             rtol=1e-6, atol=1e-6)


def test_positions_per_chunk():
  assert chunked.positions_per_chunk(8, 768, 126464) == 66      # 256 MiB of float32 logits
  assert chunked.positions_per_chunk(8, 50, 100) == 50          # everything in one chunk
  assert chunked.positions_per_chunk(1024, 768, 126464) == 1    # at least one position
  assert not chunked.takes_head(lambda p, t, attention_mask=None: t)



def test_no_full_logits_in_the_differentiated_losses(monkeypatch):
  """With the chunk at 4 positions, the gradient of the MDPO and SFT losses of a real model
  never builds a [B, L, V] array; a forward without a head (the old path) does."""
  monkeypatch.setattr(chunked, "CHUNK_BYTES", 4 * B * V * 4)
  cfg, fwd, params = _model("llada")
  tokens, targets, mask, weights = _inputs()
  batch = {"x_t": tokens, "target": targets, "masked": mask.astype(bool),
           "conf": jnp.ones((B, L)), "adv": jnp.ones((B,)), "attention_mask": mask}
  plain = lambda p, t, attention_mask=None: fwd(p, t, attention_mask=attention_mask)  # noqa: E731

  def mdpo_grad(forward):
    return jax.grad(lambda p: mdpo.mdpo_loss(forward, p, batch, temperature=0.7,
                                             gen_length=L)[0])

  def sft_grad(forward):
    return jax.grad(lambda p: losses.sft_loss(forward, p, tokens, mask == 0, jax.random.key(2),
                                              mask_id=cfg.mask_token_id)[0])

  for make in (mdpo_grad, sft_grad):
    shapes = all_shapes(jax.make_jaxpr(make(fwd))(params).jaxpr)
    assert (B, L, V) not in shapes and (B, 4, V) in shapes
    assert (B, L, V) in all_shapes(jax.make_jaxpr(make(plain))(params).jaxpr)
