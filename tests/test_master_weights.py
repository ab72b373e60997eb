"""Float32 master weights under bfloat16 compute, and the copies that never train.

A bfloat16 weight cannot take an optimiser step much smaller than half its ulp (relative
2^-9): at MDPO's lr 7e-7 almost every step rounds away. The 8B recipes therefore keep float32
parameters (a Hugging Face bfloat16 folder is loaded into them) with bfloat16 compute, and keep
the weights that never train — the RL reference, LoRA's base — in the compute dtype, which
changes no forward (every weight is cast to the compute dtype before use).
"""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from mdpo_jax import config as config_lib
from mdpo_jax.models import dream, hf, llada, lora
from mdpo_jax.rl.common import token_logprobs
from mdpo_jax.training import optim, policy

FULL_FINE_TUNE_8B = ("llada8b_sft", "llada8b_math500_mdpo", "llada8b_countdown_mdpo",
                     "llada8b_gsm8k_mdpo", "dream7b_countdown_mdpo")


def _changed_fraction(optim_section, param_dtype, steps=3):
  """Share of weights (N(0, 0.02), like a trained LLM's) that the last of `steps` optimiser
  steps at the recipe's peak lr actually changes."""
  section = {**optim_section, "warmup_steps": 0, "schedule": "constant"}
  tx = optim.make_optimizer(section, 100)
  params = {"w": (0.02 * jax.random.normal(jax.random.key(0), (256, 256))).astype(param_dtype)}
  state = tx.init(params)
  for step in range(steps):
    grads = {"w": jax.random.normal(jax.random.key(step + 1), (256, 256)).astype(param_dtype)}
    updates, state = tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    changed = float((new["w"] != params["w"]).mean())
    params = new
  return changed


@pytest.mark.parametrize("recipe", FULL_FINE_TUNE_8B)
def test_the_8b_recipes_keep_float32_master_weights_that_take_their_steps(recipe):
  c = importlib.import_module(f"configs.{recipe}").get_config()   # parsed in test_config.py
  assert c.model.param_dtype == "float32" and c.model.dtype == "bfloat16"
  section = c.optim.to_dict()
  assert _changed_fraction(section, jnp.float32) > 0.99
  assert _changed_fraction(section, jnp.bfloat16) < 0.5   # bfloat16 weights: most steps lost


def test_first_moment_dtype_option():
  section = {**base.get_config().optim.to_dict(), "mu_dtype": "bfloat16"}
  params = {"w": jnp.zeros((4, 4), jnp.float32)}
  state = optim.make_optimizer(section, 1000).init(params)
  mu, nu = (optax.tree_utils.tree_get(state, name) for name in ("mu", "nu"))
  assert mu["w"].dtype == jnp.bfloat16 and nu["w"].dtype == jnp.float32
  raw = base.get_config().to_dict()
  raw["optim"]["mu_dtype"] = "float16"
  with pytest.raises(ValueError, match=r"^optim.mu_dtype='float16': allowed \('float32', "
                                       r"'bfloat16'\) or ''"):
    config_lib.parse(raw)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_a_frozen_copy_in_compute_dtype_gives_the_same_log_probs(family):
  module = llada if family == "llada" else dream
  cfg = module.tiny(param_dtype="float32", dtype="bfloat16")
  params = module.init_params(cfg, jax.random.key(0))
  frozen = policy.frozen_copy(params, cfg)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(frozen))
  fwd = module.forward_fn(cfg)
  tokens = jax.random.randint(jax.random.key(1), (2, 9), 0, cfg.vocab_size - 4)
  mask = jnp.array([[0, 0] + [1] * 7, [1] * 9])
  want = token_logprobs(fwd, params, tokens, tokens, temperature=0.7, attention_mask=mask)
  got = token_logprobs(fwd, frozen, tokens, tokens, temperature=0.7, attention_mask=mask)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  same = llada.tiny()   # float32 compute: nothing to narrow
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(
      policy.frozen_copy(llada.init_params(same, jax.random.key(0)), same)))


def test_lora_on_a_frozen_base_gives_the_same_logits():
  cfg = llada.tiny(param_dtype="float32", dtype="bfloat16")
  lcfg = lora.LoraConfig(rank=4, alpha=8.0)
  params = llada.init_params(cfg, jax.random.key(0))
  adapters = lora.init_adapters(cfg, lcfg, jax.random.key(1))
  adapters = jax.tree.map(lambda a: a + 0.05, adapters)   # B ≠ 0: the adapters matter
  fwd = lora.policy_forward_fn(cfg, lcfg)
  tokens = jax.random.randint(jax.random.key(2), (2, 7), 0, 40)
  want = fwd({"base": params, "adapters": adapters}, tokens)
  got = fwd({"base": policy.frozen_copy(params, cfg), "adapters": adapters}, tokens)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_a_bfloat16_folder_loads_into_float32_master_weights(tmp_path):
  cfg = llada.tiny(param_dtype="bfloat16", dtype="bfloat16")
  params = llada.init_params(cfg, jax.random.key(3))
  hf.save_pretrained(tmp_path / "ckpt", cfg, params)
  loaded_cfg, loaded = hf.load_pretrained(tmp_path / "ckpt", dtype="bfloat16",
                                          param_dtype="float32")
  assert (loaded_cfg.dtype, loaded_cfg.param_dtype) == ("bfloat16", "float32")
  for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want).astype(np.float32))
  same_cfg, _ = hf.load_pretrained(tmp_path / "ckpt")   # default: the folder's own type
  assert (same_cfg.dtype, same_cfg.param_dtype) == ("bfloat16", "bfloat16")
