"""LLaDA forward: parity with an independent NumPy implementation of SPEC §1, and its invariants."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mdpo_jax import parallel
from mdpo_jax.models import llada
from run_helpers import padded_batch


# ---------------------------------------------------------------- NumPy reference (SPEC §1) ----


def _np_rmsnorm(x, w, eps):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _np_rope(x_LxHxE, pos_L, theta):
  e = x_LxHxE.shape[-1]
  inv_freq = theta ** (-np.arange(0, e, 2, dtype=np.float64) / e)
  ang = pos_L[:, None] * inv_freq[None, :]
  cos = np.concatenate([np.cos(ang)] * 2, -1)[:, None, :]
  sin = np.concatenate([np.sin(ang)] * 2, -1)[:, None, :]
  x1, x2 = x_LxHxE[..., : e // 2], x_LxHxE[..., e // 2:]
  return x_LxHxE * cos + np.concatenate([-x2, x1], -1) * sin


def _np_forward_row(cfg, p, tokens_L, keep_L, pos_L):
  """One row, float64, per-head loops; `keep_L` = keys that may be attended to."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  x = p["wte"][tokens_L]
  h_n, kv_n, e = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  for i in range(cfg.n_layers):
    b = {k: v[i] for k, v in p["blocks"].items()}
    h = _np_rmsnorm(x, b["attn_norm"], cfg.rms_norm_eps)
    q = _np_rope(np.einsum("ld,dhe->lhe", h, b["q_proj"]), pos_L, cfg.rope_theta)
    k = _np_rope(np.einsum("ld,dhe->lhe", h, b["k_proj"]), pos_L, cfg.rope_theta)
    v = np.einsum("ld,dhe->lhe", h, b["v_proj"])
    out = np.zeros_like(q)
    for head in range(h_n):
      kv = head // (h_n // kv_n)
      s = q[:, head] @ k[:, kv].T / np.sqrt(e)
      s = np.where(keep_L[None, :], s, -np.inf)
      s = np.exp(s - s.max(-1, keepdims=True))
      out[:, head] = (s / s.sum(-1, keepdims=True)) @ v[:, kv]
    x = x + np.einsum("lhe,hed->ld", out, b["attn_out"])
    h = _np_rmsnorm(x, b["ff_norm"], cfg.rms_norm_eps)
    gate, up = h @ b["ff_proj"], h @ b["up_proj"]
    x = x + (gate / (1 + np.exp(-gate)) * up) @ b["ff_out"]
  x = _np_rmsnorm(x, p["ln_f"], cfg.rms_norm_eps)
  head = p["wte"].T if cfg.tie_embeddings else p["lm_head"]
  return x @ head


def _perturbed(params, rng):
  """Random norm weights too, so a bug that ignores them shows."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(rng, len(leaves))
  return jax.tree.unflatten(tree, [a + 0.1 * jax.random.normal(k, a.shape, a.dtype)
                                   for a, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def cfg():
  return llada.tiny(vocab_size=48, n_kv_heads=2, rope_theta=500.0)


@pytest.fixture(scope="module")
def params(cfg):
  return _perturbed(llada.init_params(cfg, jax.random.key(0)), jax.random.key(1))



@pytest.mark.parametrize("honor_padding", [True, False])
@pytest.mark.parametrize("variant", [{}, {"scan_layers": False}, {"tie_embeddings": True},
                                     {"attention_impl": "dot_product_attention"}])
def test_forward_matches_numpy(cfg, params, honor_padding, variant):
  cfg = cfg.replace(honor_padding=honor_padding, **variant)
  p = params
  if cfg.tie_embeddings:
    p = {k: v for k, v in params.items() if k != "lm_head"}
  tokens, mask = padded_batch(np.random.default_rng(0), cfg, [9, 6, 3], 9)
  got = np.asarray(jax.jit(functools.partial(llada.forward, cfg))(p, tokens, attention_mask=mask))
  for r in range(tokens.shape[0]):
    if honor_padding:
      keep, pos = mask[r].astype(bool), np.maximum(np.cumsum(mask[r]) - 1, 0)
    else:
      keep, pos = np.ones(9, bool), np.arange(9)
    want = _np_forward_row(cfg, p, tokens[r], keep, pos.astype(np.float64))
    np.testing.assert_allclose(got[r], want, atol=1e-4, rtol=0)


def test_bidirectional(cfg, params):
  tokens = np.arange(10, dtype=np.int32)[None] % 40
  changed = tokens.copy()
  changed[0, -1] = 41
  a = llada.forward(cfg, params, tokens)
  b = llada.forward(cfg, params, changed)
  assert float(jnp.abs(a[0, 0] - b[0, 0]).max()) > 1e-3  # the first position sees the last


def test_left_padding_invariance(cfg, params):
  rng = np.random.default_rng(3)
  row = rng.integers(0, 40, 7).astype(np.int32)
  padded = np.concatenate([np.full(5, cfg.pad_token_id, np.int32), row])[None]
  mask = np.concatenate([np.zeros(5, np.int32), np.ones(7, np.int32)])[None]
  alone = llada.forward(cfg, params, row[None])
  with_pad = llada.forward(cfg, params, padded, attention_mask=mask)
  np.testing.assert_allclose(with_pad[0, 5:], alone[0], atol=1e-5)
  # The original-code mode attends to pads and shifts positions, so it must differ.
  orig = llada.forward(cfg.replace(honor_padding=False), params, padded, attention_mask=mask)
  assert float(jnp.abs(orig[0, 5:] - alone[0]).max()) > 1e-3


def test_bf16_compute_keeps_float32_islands(cfg, params):
  """bf16 compute stays close to fp32 and returns float32 logits."""
  bf = cfg.replace(dtype="bfloat16", param_dtype="bfloat16")
  p16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
  tokens = np.arange(12, dtype=np.int32)[None] % 40
  lo = llada.forward(bf, p16, tokens)
  hi = llada.forward(cfg, params, tokens)
  assert lo.dtype == jnp.float32
  scale = float(jnp.abs(hi).max())
  assert float(jnp.abs(lo - hi).max()) < 0.05 * scale
  assert float(jnp.abs(lo - hi).max()) > 0  # really computed in bf16


@pytest.mark.parametrize("field,value,needle", [
    ("n_heads", 5, "d_model"), ("n_kv_heads", 3, "n_kv_heads"), ("dtype", "int8", "dtype"),
    ("mask_token_id", 10**6, "mask_token_id"), ("remat", "sometimes", "remat"),
    ("vocab_size", 0, "vocab_size")])
def test_config_errors_name_the_field(field, value, needle):
  with pytest.raises(ValueError, match=needle):
    llada.tiny(**{field: value})


def test_llada_8b_shape():
  c = llada.llada_8b()
  shapes = llada.abstract_params(c)
  assert shapes["blocks"]["q_proj"].shape == (32, 4096, 32, 128)
  assert shapes["blocks"]["ff_out"].shape == (32, 12288, 4096)
  assert shapes["wte"].shape == (126464, 4096) and shapes["lm_head"].shape == (4096, 126464)
  assert shapes["wte"].dtype == jnp.bfloat16
  # Published size: 8.02B parameters.
  total = sum(np.prod(s.shape) for s in jax.tree.leaves(shapes))
  assert total == c.num_params() and 8.0e9 < total < 8.05e9


def test_sharded_forward_and_train_step(cfg):
  """jit forward + one AdamW step on a (data=2, fsdp=2, tensor=2) mesh with sharded params."""
  cfg = cfg.replace(vocab_size=64, mask_token_id=63, d_model=32, n_heads=4, n_kv_heads=4)
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  params = llada.init_sharded_params(cfg, jax.random.key(0), mesh)
  # Parameters really are split: q_proj [N, D, H, E] has D over fsdp and H over tensor.
  q = params["blocks"]["q_proj"]
  assert q.sharding.spec == P(None, "fsdp", "tensor", None)
  assert q.addressable_shards[0].data.shape == (2, 16, 2, 8)
  assert params["wte"].sharding.spec == P("tensor", "fsdp")
  assert params["ln_f"].sharding.spec == P(None)
  # Values equal an unsharded init with the same key.
  ref = llada.init_params(cfg, jax.random.key(0))
  np.testing.assert_allclose(np.asarray(q), np.asarray(ref["blocks"]["q_proj"]), rtol=1e-6)

  tokens = np.random.default_rng(0).integers(0, 60, (8, 16)).astype(np.int32)
  batch = parallel.shard_batch({"tokens": tokens}, mesh)
  assert batch["tokens"].sharding.spec == P(("data", "fsdp"), None)

  opt = optax.adamw(1e-2)
  opt_state = jax.jit(opt.init)(params)

  def loss_fn(p, toks):
    logits = llada.forward(cfg, p, toks)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), toks[..., None], -1))

  shardings = parallel.tree_shardings((params, opt_state), mesh)

  @functools.partial(jax.jit, out_shardings=(*shardings, None, None))
  def step(p, s, toks):
    loss, grads = jax.value_and_grad(loss_fn)(p, toks)
    updates, s = opt.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss, grads

  new_params, _, loss, grads = step(params, opt_state, batch["tokens"])
  # Gradients match the unsharded computation; parameters stay in their shards.
  ref_loss, ref_grads = jax.jit(jax.value_and_grad(loss_fn))(ref, tokens)   # unsharded
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grads["blocks"]["ff_proj"]),
                             np.asarray(ref_grads["blocks"]["ff_proj"]), atol=1e-6)
  for new, old in zip(jax.tree.leaves(new_params), jax.tree.leaves(params)):
    assert isinstance(new.sharding, NamedSharding)
    assert new.sharding.spec == old.sharding.spec
  assert float(jax.jit(loss_fn)(new_params, tokens)) < float(ref_loss)
