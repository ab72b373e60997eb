"""The fused attention choices ("cudnn", "splash") against the plain "xla" path, on CPU.

Splash runs in the Pallas interpreter (`interpret=True`): the kernel's own tiling, online
softmax, segment-id masking and custom VJP, executed by XLA:CPU instead of Mosaic on a TPU.
cuDNN cannot run here at all: we check its one-line refusals and, with XLA's lowering of the
same `jax.nn.dot_product_attention` call, our padding and masking around it.

Tolerances: everything is float32. The kernels sum the softmax blockwise (online softmax with
rescaling) and Splash scales q before the dot product rather than the scores after it, so the
results differ from "xla" by rounding only: a few float32 ulps (1.2e-7) per term over sums of at
most a few hundred terms of O(1) values; we allow 2e-5 absolute on outputs of order 1.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdpo_jax import parallel
from mdpo_jax.models import dream, llada
from run_helpers import padded_batch

ATOL = 2e-5
splash = functools.partial(llada.attention, impl="splash", interpret=True)
xla = functools.partial(llada.attention, impl="xla")


def _qkv(seed, batch, num_queries, num_keys, heads, kv_heads, head_dim, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(keys[0], (batch, num_queries, heads, head_dim), dtype)
  k = jax.random.normal(keys[1], (batch, num_keys, kv_heads, head_dim), dtype)
  v = jax.random.normal(keys[2], (batch, num_keys, kv_heads, head_dim), dtype)
  return q, k, v


def _left_padded(num_keys, pads):
  """Bool [B, L]: row r has pads[r] pad positions on the left."""
  return jnp.asarray(np.arange(num_keys)[None, :] >= np.asarray(pads)[:, None])


def _real_rows(key_mask_BxL, query_start, num_queries):
  """Bool [B, Q] of the query rows whose output is used: their own position is a real token."""
  return np.asarray(key_mask_BxL)[:, query_start:query_start + num_queries]


def _one_line_error(fn, *needles):
  with pytest.raises(ValueError) as info:
    fn()
  message = str(info.value)
  assert "\n" not in message, message
  for needle in needles:
    assert needle in message, message
  return message


# --------------------------------------------------------------------------------- splash ----


# Lengths: 9 (padded to one 128 tile) and 384 (three 128 tiles: the online softmax across tiles).
@pytest.mark.parametrize("num_keys, pads", [(9, [0, 3, 7]), (384, [0, 50, 200])])
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2)])
def test_splash_bidirectional_matches_xla(num_keys, pads, heads, kv_heads):
  q, k, v = _qkv(0, 3, num_keys, num_keys, heads, kv_heads, 16)
  mask = _left_padded(num_keys, pads)
  got = jax.jit(splash)(q, k, v, mask)
  want = xla(q, k, v, mask)
  # Bidirectional: every query (pad ones too) sees exactly the real keys in both paths.
  np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_splash_without_mask_matches_xla():
  q, k, v = _qkv(1, 2, 130, 130, 4, 1, 8)   # MQA, and a length one past a tile
  np.testing.assert_allclose(jax.jit(splash)(q, k, v, None), xla(q, k, v, None), atol=ATOL,
                             rtol=0)


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2)])
def test_splash_causal_matches_xla_on_real_rows(heads, kv_heads):
  q, k, v = _qkv(2, 3, 200, 200, heads, kv_heads, 16)
  mask = _left_padded(200, [0, 9, 150])
  got = jax.jit(lambda *a: splash(*a, query_start=0))(q, k, v, mask)
  want = xla(q, k, v, mask, query_start=0)
  real = _real_rows(mask, 0, 200)
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=ATOL, rtol=0)


@pytest.mark.parametrize("query_start", [0, 37, 130])
def test_splash_causal_static_window_matches_xla(query_start):
  """Queries at positions query_start .. +W−1 over all L keys (a causal window, start known
  when tracing): the kernel's causal mask takes the start as its offset."""
  q, k, v = _qkv(3, 2, 16, 160, 4, 2, 8)
  mask = _left_padded(160, [0, 40])
  got = jax.jit(lambda *a: splash(*a, query_start=query_start))(q, k, v, mask)
  want = xla(q, k, v, mask, query_start=query_start)
  real = _real_rows(mask, query_start, 16)
  assert real.any()
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=ATOL, rtol=0)


def test_splash_bidirectional_window_matches_xla():
  """Fewer queries than keys (a cached sampler's window) needs nothing static."""
  q, k, v = _qkv(4, 2, 32, 96, 4, 2, 8)
  mask = _left_padded(96, [0, 20])
  np.testing.assert_allclose(jax.jit(splash)(q, k, v, mask), xla(q, k, v, mask), atol=ATOL,
                             rtol=0)


def test_splash_traced_causal_window_raises_one_line():
  q, k, v = _qkv(5, 1, 4, 16, 2, 2, 8)
  run = jax.jit(lambda start: splash(q, k, v, None, query_start=start))
  _one_line_error(lambda: run(3), "attention_impl='splash'", "query_start")


@pytest.mark.parametrize("query_start, on_mesh", [(None, False), (0, False), (0, True)])
def test_splash_gradients_match_xla(query_start, on_mesh):
  """Training differentiates through the kernel's custom VJP (its dq and dkv kernels), also
  inside the shard_map of a run's mesh (data=2, fsdp=2, tensor=2)."""
  assert jax.device_count() >= 8   # conftest: 8 virtual CPU devices
  q, k, v = _qkv(6, 4, 24, 24, 4, 2, 8)   # 4 rows: split over data × fsdp on the mesh
  mask = _left_padded(24, [0, 5, 0, 12])
  real = jnp.asarray(_real_rows(mask, 0, 24))[:, :, None, None]
  cotangent = jax.random.normal(jax.random.key(7), q.shape)

  def loss(fn, q, k, v):
    return jnp.sum(jnp.where(real, fn(q, k, v, mask, query_start=query_start) * cotangent, 0))

  mesh = parallel.mesh_context(parallel.make_mesh(data=2, fsdp=2, tensor=2), enabled=on_mesh)
  with mesh:
    got = jax.jit(jax.grad(functools.partial(loss, splash), argnums=(0, 1, 2)))(q, k, v)
  want = jax.grad(functools.partial(loss, xla), argnums=(0, 1, 2))(q, k, v)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=1e-4, rtol=0)   # sums of O(1) products over 24 rows


def test_splash_without_tpu_raises_one_line():
  if jax.default_backend() == "tpu":
    pytest.skip("on a TPU the kernel runs")
  q, k, v = _qkv(8, 1, 8, 8, 2, 2, 8)
  _one_line_error(lambda: llada.attention(q, k, v, None, "splash"), "attention_impl='splash'",
                  "TPU")


def test_splash_on_several_devices_without_a_mesh_raises_one_line(monkeypatch):
  """The tests see 8 CPU devices (conftest); pretend they are TPUs to reach the device check."""
  assert jax.device_count() > 1   # conftest: 8 virtual CPU devices
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  q, k, v = _qkv(8, 1, 8, 8, 2, 2, 8)
  _one_line_error(lambda: llada.attention(q, k, v, None, "splash"), "attention_impl='splash'",
                  "mesh")


@pytest.mark.parametrize("shape", [dict(data=2, fsdp=2, tensor=2), dict(data=8),
                                   dict(data=2, tensor=4)])
def test_splash_under_a_mesh_matches_xla(shape):
  """With the run's mesh in context the kernel runs in a shard_map: rows over data/fsdp, heads
  over tensor (replicated where they do not divide: 3 rows on data=8, 2 kv heads on tensor=4)."""
  assert jax.device_count() >= 8   # conftest: 8 virtual CPU devices
  mesh = parallel.make_mesh(**shape)
  q, k, v = _qkv(12, 4 if shape.get("data") != 8 else 3, 40, 40, 4, 2, 8)
  mask = _left_padded(40, [0, 7, 20][:q.shape[0]] + [3] * (q.shape[0] - 3))
  with parallel.mesh_context(mesh):
    got = jax.jit(lambda *a: splash(*a, query_start=0))(q, k, v, mask)
  want = xla(q, k, v, mask, query_start=0)
  real = _real_rows(mask, 0, 40)
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=ATOL, rtol=0)


# ------------------------------------------------------------------------ through the model ---


def _interpreted_splash(monkeypatch):
  """The model's blocks call `llada.attention`; make its "splash" run in the interpreter."""
  monkeypatch.setattr(llada, "attention", functools.partial(llada.attention, interpret=True))



@pytest.mark.parametrize("causal, on_mesh", [(False, False), (True, False), (False, True)])
def test_model_forward_with_splash_matches_xla(monkeypatch, causal, on_mesh):
  """Real rows of the logits agree. Pad rows never reach a real row: every block masks pad keys
  for real queries, so a pad query's output only feeds later pad positions, and the losses and
  samplers read logits at real positions only. `on_mesh`: traced under a run's mesh (data=4,
  tensor=2), the kernel in a shard_map."""
  assert jax.device_count() >= 8   # conftest: 8 virtual CPU devices
  _interpreted_splash(monkeypatch)
  cfg = llada.tiny(vocab_size=48, n_kv_heads=2, causal=causal)
  params = llada.init_params(cfg, jax.random.key(0))
  tokens, mask = padded_batch(np.random.default_rng(0), cfg, [11, 6, 2, 9], 11)
  run = lambda c: jax.jit(functools.partial(llada.forward, c))(params, tokens, attention_mask=mask)
  with parallel.mesh_context(parallel.make_mesh(data=4, tensor=2), enabled=on_mesh):
    got = run(cfg.replace(attention_impl="splash"))
  want = run(cfg)
  assert np.isfinite(np.asarray(got)).all()   # pad rows too: no empty softmax row becomes NaN
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=1e-4, rtol=0)


def test_cached_window_with_splash_matches_xla(monkeypatch):
  """A caching sampler's window forward (traced window start, bidirectional) works with splash."""
  _interpreted_splash(monkeypatch)
  cfg = llada.tiny(vocab_size=48, n_kv_heads=2)
  params = llada.init_params(cfg, jax.random.key(1))
  tokens, mask = padded_batch(np.random.default_rng(1), cfg, [12, 7], 12)

  def window(c, start):
    _, cache = llada.forward(c, params, tokens, attention_mask=mask, return_cache=True)
    return llada.forward(c, params, tokens, cache=cache, window_start=start, window_width=4)

  got = jax.jit(functools.partial(window, cfg.replace(attention_impl="splash")))(6)
  want = jax.jit(functools.partial(window, cfg))(6)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_cached_causal_window_with_splash_raises_one_line(monkeypatch):
  _interpreted_splash(monkeypatch)
  cfg = llada.tiny(vocab_size=48, causal=True, attention_impl="splash")
  params = llada.init_params(cfg, jax.random.key(2))
  tokens = np.zeros((1, 8), np.int32)

  @jax.jit
  def window(start):
    _, cache = llada.forward(cfg, params, tokens, return_cache=True)
    return llada.forward(cfg, params, tokens, cache=cache, window_start=start, window_width=1)

  _one_line_error(lambda: window(3), "attention_impl='splash'", "query_start")


# ---------------------------------------------------------------------------------- cudnn ----


def test_cudnn_without_gpu_raises_one_line():
  if jax.default_backend() == "gpu":
    pytest.skip("on a GPU the kernel runs")
  q, k, v = _qkv(9, 1, 8, 8, 2, 2, 8, jnp.bfloat16)
  _one_line_error(lambda: llada.attention(q, k, v, None, "cudnn"), "attention_impl='cudnn'",
                  "needs a GPU")


def test_cudnn_model_on_cpu_raises_one_line_at_first_call():
  if jax.default_backend() == "gpu":
    pytest.skip("on a GPU the kernel runs")
  cfg = llada.tiny(vocab_size=48, dtype="bfloat16", attention_impl="cudnn")
  params = llada.init_params(cfg, jax.random.key(3))
  tokens = np.zeros((1, 8), np.int32)
  _one_line_error(lambda: jax.jit(functools.partial(llada.forward, cfg))(params, tokens),
                  "attention_impl='cudnn'", "needs a GPU")


def test_cudnn_float32_raises_one_line():
  q, k, v = _qkv(10, 1, 8, 8, 2, 2, 8)
  _one_line_error(lambda: llada.attention(q, k, v, None, "cudnn"), "attention_impl='cudnn'",
                  "float32")


@pytest.mark.parametrize("num_queries, num_keys, query_start, padded",
                         [(9, 9, None, True), (9, 9, 0, True), (5, 12, 4, True),
                          (4, 11, None, True), (7, 7, 0, False), (6, 6, None, False)])
def test_cudnn_padding_and_gqa_match_xla(num_queries, num_keys, query_start, padded):
  """Our side of the cuDNN call — odd lengths padded to even ones with a masked key, GQA left
  to the kernel — checked through XLA's lowering of the same `dot_product_attention` call."""
  q, k, v = _qkv(11, 2, num_queries, num_keys, 4, 2, 8)
  mask = _left_padded(num_keys, [0, 3] if padded else [0, 0])
  if not padded:
    mask = None
  got = llada._fused_dot_product_attention(q, k, v, mask, query_start, implementation="xla")
  want = xla(q, k, v, mask, query_start=query_start)
  assert got.shape == want.shape
  real = (np.ones((2, num_queries), bool) if query_start is None or mask is None
          else _real_rows(mask, query_start, num_queries))
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------- config ----


@pytest.mark.parametrize("config_type", [llada.LLaDAConfig, dream.DreamConfig])
def test_bad_attention_impl_lists_the_choices_in_one_line(config_type):
  message = _one_line_error(lambda: config_type(attention_impl="flash"),
                            "attention_impl='flash'")
  for choice in ("xla", "dot_product_attention", "cudnn", "splash"):
    assert repr(choice) in message, message
