"""LoRA through qwix: identity at init, equality with merged weights, frozen base, config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import base as base_config
from mdpo_jax import parallel
from mdpo_jax.models import llada, lora
from mdpo_jax.training import setup

# qwix 0.1.8 still reads Variable.value / VariableState, deprecated in flax 0.12.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:qwix.*")

ALL = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")


def _cfg(**overrides):
  # GQA (2 kv heads of 4) so k/v adapter shapes differ from q's.
  return llada.tiny(n_kv_heads=2, **overrides)


def _tokens(cfg, shape=(2, 9), seed=0):
  return jax.random.randint(jax.random.key(seed), shape, 0, cfg.vocab_size - 4)


def _randomize(adapters, seed=1, scale=0.3):
  leaves, tree = jax.tree.flatten(adapters)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [scale * jax.random.normal(k, x.shape, x.dtype)
                                   for k, x in zip(keys, leaves)])


def _merged_by_hand(cfg, lcfg, params, adapters):
  """W + (alpha/rank)·A·B with plain reshapes and matmuls (every LLaDA weight stores its input
  dims before its output dims, so W ≅ [N, fan_in, fan_out], A ≅ [N, fan_in, r], B ≅ [N, r, fan_out])."""
  n, r = cfg.n_layers, lcfg.rank
  blocks = dict(params["blocks"])
  for name, ab in adapters["blocks"].items():
    w = np.asarray(blocks[name], np.float64)
    a = np.asarray(ab["lora_a"], np.float64).reshape(n, -1, r)
    b = np.asarray(ab["lora_b"], np.float64).reshape(n, r, -1)
    assert a.shape[1] * b.shape[2] == w[0].size
    blocks[name] = jnp.asarray((w.reshape(n, a.shape[1], -1) + lcfg.alpha / r * a @ b)
                               .reshape(w.shape), jnp.float32)
  return {**params, "blocks": blocks}


@pytest.fixture(scope="module")
def setup_all():
  cfg = _cfg()
  lcfg = lora.LoraConfig(rank=4, alpha=8.0)
  params = llada.init_params(cfg, jax.random.key(0))
  adapters = lora.init_adapters(cfg, lcfg, jax.random.key(1))
  return cfg, lcfg, params, adapters


def test_adapter_shapes_follow_qwix_einsum_split(setup_all):
  cfg, lcfg, _, adapters = setup_all
  n, d, h, k, e, f, r = 2, 32, 4, 2, 8, 64, 4
  shapes = jax.tree.map(lambda x: x.shape, adapters["blocks"])
  assert shapes == {
      "q_proj": {"lora_a": (n, d, r), "lora_b": (n, r, h, e)},
      "k_proj": {"lora_a": (n, d, r), "lora_b": (n, r, k, e)},
      "v_proj": {"lora_a": (n, d, r), "lora_b": (n, r, k, e)},
      "attn_out": {"lora_a": (n, h, e, r), "lora_b": (n, r, d)},
      "ff_proj": {"lora_a": (n, d, r), "lora_b": (n, r, f)},
      "up_proj": {"lora_a": (n, d, r), "lora_b": (n, r, f)},
      "ff_out": {"lora_a": (n, f, r), "lora_b": (n, r, d)},
  }
  # qwix's init: B = 0, A random and different per layer.
  for ab in adapters["blocks"].values():
    assert not np.any(np.asarray(ab["lora_b"]))
    a = np.asarray(ab["lora_a"])
    assert np.all(np.std(a.reshape(n, -1), axis=1) > 0) and not np.allclose(a[0], a[1])
  axes = lora.adapter_logical_axes(cfg, lcfg)
  for name in ALL:
    for part in ("lora_a", "lora_b"):
      assert len(axes["blocks"][name][part]) == len(shapes[name][part]), (name, part)


@pytest.mark.parametrize("overrides", [{}, {"scan_layers": False, "remat": "full"},
                                       {"dtype": "bfloat16", "param_dtype": "bfloat16"}])
def test_zero_init_adapters_give_exactly_the_base_logits(overrides):
  cfg = _cfg(**overrides)
  lcfg = lora.LoraConfig(rank=4, alpha=8.0)
  params = llada.init_params(cfg, jax.random.key(0))
  adapters = lora.init_adapters(cfg, lcfg, jax.random.key(1))
  tokens = _tokens(cfg)
  mask = jnp.ones_like(tokens).at[0, :3].set(0)
  base = jax.jit(llada.forward, static_argnums=0)(cfg, params, tokens, attention_mask=mask)
  with_lora = jax.jit(lora.forward, static_argnums=(0, 1))(cfg, lcfg, params, adapters, tokens,
                                                           attention_mask=mask)
  np.testing.assert_array_equal(np.asarray(with_lora), np.asarray(base))


@pytest.mark.parametrize("targets", [ALL, ("q_proj", "v_proj"), ("attn_out", "ff_out")])
def test_lora_forward_equals_plain_forward_on_merged_weights(targets):
  cfg = _cfg()
  lcfg = lora.LoraConfig(rank=3, alpha=5.0, targets=targets)
  params = llada.init_params(cfg, jax.random.key(0))
  adapters = _randomize(lora.init_adapters(cfg, lcfg, jax.random.key(1)))
  assert set(adapters["blocks"]) == set(targets)
  tokens = _tokens(cfg)
  with_lora = jax.jit(lora.forward, static_argnums=(0, 1))(cfg, lcfg, params, adapters, tokens)
  merged = _merged_by_hand(cfg, lcfg, params, adapters)
  plain = jax.jit(llada.forward, static_argnums=0)
  reference = plain(cfg, merged, tokens)
  base = plain(cfg, params, tokens)
  assert float(jnp.max(jnp.abs(reference - base))) > 1e-2     # the adapters matter
  np.testing.assert_allclose(np.asarray(with_lora), np.asarray(reference), rtol=1e-5, atol=1e-5)
  # lora.merge (einsum over the rank) agrees with the hand merge.
  ours = lora.merge(lcfg, params, adapters)
  for name in ALL:
    np.testing.assert_allclose(np.asarray(ours["blocks"][name]),
                               np.asarray(merged["blocks"][name]), rtol=1e-6, atol=1e-6)
  assert ours["wte"] is params["wte"]


def test_gradients_reach_only_the_adapters(setup_all):
  cfg, lcfg, params, adapters = setup_all
  tokens = _tokens(cfg)
  base_before = jax.tree.map(np.array, params)
  optimizer = optax.adamw(1e-2)
  opt_state = optimizer.init(adapters)
  # The optimiser state holds only adapter-sized moments.
  mu_size = sum(x.size for x in jax.tree.leaves(opt_state[0].mu))
  assert mu_size == lora.num_adapter_params(cfg, lcfg)

  @jax.jit
  def step(adapters, opt_state, base):
    def loss_fn(adapters):
      fwd = lora.forward_fn(cfg, lcfg, base)
      logits = fwd(adapters, tokens)
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1))
    loss, grads = jax.value_and_grad(loss_fn)(adapters)
    updates, opt_state = optimizer.update(grads, opt_state, adapters)
    return optax.apply_updates(adapters, updates), opt_state, grads, loss

  new_adapters, _, grads, _ = step(adapters, opt_state, params)
  assert jax.tree.structure(grads) == jax.tree.structure(adapters)
  for name, g in grads["blocks"].items():
    assert float(jnp.max(jnp.abs(g["lora_b"]))) > 0, name   # B gets gradient at init
    assert not np.any(np.asarray(g["lora_a"])), name        # A's is 0 while B = 0
    assert not np.allclose(new_adapters["blocks"][name]["lora_b"], 0), name
  jax.tree.map(np.testing.assert_array_equal, base_before, jax.tree.map(np.array, params))
  # The step changed the model: the loss went through the adapters.
  moved = lora.forward(cfg, lcfg, params, new_adapters, tokens)
  assert float(jnp.max(jnp.abs(moved - llada.forward(cfg, params, tokens)))) > 0


@pytest.mark.parametrize("targets", [ALL, ("q_proj", "v_proj"), ("k_proj", "ff_out")])
def test_trainable_parameter_count_matches_formula(targets):
  cfg = _cfg()
  r = 4
  d, h, k, e, f, n = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, \
      cfg.mlp_hidden_size, cfg.n_layers
  per_rank = {"q_proj": d + h * e, "k_proj": d + k * e, "v_proj": d + k * e,
              "attn_out": h * e + d, "ff_proj": d + f, "up_proj": d + f, "ff_out": f + d}
  expected = n * r * sum(per_rank[t] for t in targets)
  lcfg = lora.LoraConfig(rank=r, alpha=8.0, targets=targets)
  abstract = lora.abstract_adapters(cfg, lcfg)
  assert sum(x.size for x in jax.tree.leaves(abstract)) == expected
  assert lora.num_adapter_params(cfg, lcfg) == expected


def test_adapters_shard_and_run_on_a_mesh(setup_all):
  cfg, lcfg, params, adapters = setup_all
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  axes = lora.adapter_logical_axes(cfg, lcfg)
  shardings = lora.adapter_shardings(cfg, lcfg, mesh)
  # The same as the logical axes mapped one by one through the default rules.
  expected = jax.tree.map(
      lambda ax, x: NamedSharding(mesh, parallel.logical_to_spec(ax, x.shape, mesh=mesh)),
      axes, adapters, is_leaf=lambda x: isinstance(x, tuple))
  assert shardings == expected
  # A [N, D, r] keeps the weight's embed split, B [N, r, H, E] its heads split; r stays whole.
  assert shardings["blocks"]["q_proj"]["lora_a"].spec == P(None, "fsdp", None)
  assert shardings["blocks"]["q_proj"]["lora_b"].spec == P(None, None, "tensor", None)
  sharded = jax.device_put(_randomize(adapters), shardings)
  sharded_params = jax.device_put(params, llada.param_shardings(cfg, mesh))
  tokens = _tokens(cfg, (4, 9))
  out = jax.jit(lora.forward, static_argnums=(0, 1))(cfg, lcfg, sharded_params, sharded, tokens)
  ref = jax.jit(lora.forward, static_argnums=(0, 1))(cfg, lcfg, params, _randomize(adapters),
                                                      tokens)   # unsharded
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)


def _model_section(**overrides):
  c = base_config.get_config()
  for key, value in overrides.items():
    c.model[key] = value
  return c.model


def test_config_off_by_default_and_parsed():
  assert lora.from_config(_model_section()) is None
  lcfg = lora.from_config(_model_section(lora_rank=8, lora_alpha=16.0,
                                         lora_targets=" v_proj, q_proj "))
  assert lcfg == lora.LoraConfig(rank=8, alpha=16.0, targets=("q_proj", "v_proj"))
  assert lcfg.scale == 2.0
  assert lora.from_config(_model_section(lora_rank=2)).targets == ALL


@pytest.mark.parametrize("field, value, allowed", [
    ("lora_rank", -1, "integer ≥ 0"),
    ("lora_rank", 2.5, "integer ≥ 0"),
    ("lora_rank", True, "integer ≥ 0"),
    ("lora_alpha", 0.0, "> 0"),
    ("lora_alpha", float("nan"), "> 0"),
    ("lora_targets", "q_proj,wq", "unknown ['wq']"),
    ("lora_targets", "", "at least one"),
    ("lora_targets", "q_proj,q_proj", "at most once"),
])
def test_bad_config_values_name_the_field(field, value, allowed):
  overrides = {"lora_rank": 4, field: value}
  model = dict(_model_section())
  model.update(overrides)   # a plain dict: ConfigDict itself would refuse some of these types
  with pytest.raises(ValueError) as e:
    lora.from_config(model)
  msg = str(e.value)
  assert f"model.{field}=" in msg and repr(value) in msg and allowed in msg, msg


def test_rank_larger_than_a_weight_is_refused_by_setup():
  c = base_config.get_config()
  c.model.lora_rank = 9                  # tiny-ish model below: k_proj fan-out is 1 head × 8
  c.model.lora_targets = "q_proj,k_proj"
  cfg = llada.tiny(d_model=32, n_heads=4, n_kv_heads=1)
  with pytest.raises(ValueError, match=r"model\.lora_rank=9: must be ≤ .* = 8 of k_proj"):
    setup.lora_config(c, cfg)
  c.model.lora_rank = 8
  assert setup.lora_config(c, cfg).rank == 8
  c.model.lora_rank = 0
  assert setup.lora_config(c, cfg) is None


def test_sft_loop_trains_only_adapters(tmp_path):
  from mdpo_jax.training import checkpoint, sft_loop   # noqa: PLC0415  (heavier imports)
  c = base_config.get_config()   # as tests/test_training.py's tiny run
  c.model.d_model, c.model.n_layers, c.model.n_heads, c.model.n_kv_heads = 32, 2, 2, 2
  c.model.mlp_hidden_size = 64
  c.task.train_size, c.task.eval_size = 200, 0   # no end-of-run evaluation: about the params
  c.data.batch_size = 8
  c.optim.lr, c.optim.warmup_steps = 3e-3, 1
  c.train.num_steps, c.train.log_every, c.train.checkpoint_every = 3, 1, 3
  c.train.async_checkpoint = False
  c.eval.num_problems, c.eval.batch_size = 8, 8
  c.eval.gen_length, c.eval.block_length, c.eval.steps = 8, 8, (4,)
  c.eval.remasking = ("low_confidence",)
  c.eval.trajectory_stats = False
  c.logging.tensorboard = False
  c.model.lora_rank, c.model.lora_alpha, c.model.lora_targets = 4, 8.0, "q_proj,v_proj,ff_out"
  result = sft_loop.train(c, tmp_path)
  adapters = result["adapters"]
  assert set(adapters["blocks"]) == {"q_proj", "v_proj", "ff_out"}
  assert any(np.any(np.asarray(ab["lora_b"])) for ab in adapters["blocks"].values())
  lcfg = lora.LoraConfig(rank=4, alpha=8.0, targets=("q_proj", "v_proj", "ff_out"))
  cfg = result["model_config"]
  # The frozen base is the seed's fresh init; the returned params are base merged with adapters.
  base = setup.load_model(c, setup.make_tokenizer(c), parallel.mesh_from_config(c.mesh),
                          jax.random.key(c.seed), lora_supported=True)[1]
  want = lora.merge(lcfg, base, adapters)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6),
               result["params"], want)
  np.testing.assert_array_equal(np.asarray(result["params"]["blocks"]["k_proj"]),
                                np.asarray(base["blocks"]["k_proj"]))
  # The checkpoint's params are the adapters (what a resumed run restores into its state).
  restored, _, step = checkpoint.restore_params(tmp_path / "checkpoints",
                                                lora.abstract_adapters(cfg, lcfg))
  assert step == 3
  jax.tree.map(np.testing.assert_array_equal, restored, jax.tree.map(np.asarray, adapters))
  assert lora.num_adapter_params(cfg, lcfg) == sum(x.size for x in jax.tree.leaves(adapters))
  # Callers that do not handle LoRA refuse the config rather than ignore it.
  with pytest.raises(ValueError, match=r"model\.lora_rank=4: this caller trains or reads full "
                                       r"parameters only; allowed here: 0"):
    setup.load_model(c, setup.make_tokenizer(c), parallel.mesh_from_config(c.mesh),
                     jax.random.key(0))
  # Read as evaluate reads a run (init_checkpoint = its checkpoints, lora_rank 0 there): the
  # base is rebuilt from the saved config (fresh init, the run's seed) and the adapters merged.
  c.model.init_checkpoint, c.model.lora_rank, c.seed = str(tmp_path / "checkpoints"), 0, 99
  read = setup.load_model(c, setup.make_tokenizer(c), parallel.mesh_from_config(c.mesh),
                          jax.random.key(c.seed))[1]
  jax.tree.map(np.testing.assert_array_equal, read, result["params"])
