"""Fast sampling: the KV cache (prefix, dual) and confidence-threshold decoding.

What makes a cached sampler trustworthy, each checked against an independent computation:
* the model's window forward over a fresh cache equals the full forward's rows (LLaDA with GQA
  and left padding, Dream's shifted logits);
* with one layer the cache is exact (every cached K/V is a function of its own token), so the
  cached sampler must give cache="none"'s tokens — this exercises the window path end to end;
* refreshing the cache at every step reproduces cache="none" exactly, RCR and CFG included;
* a batch of mixed prompt lengths gives each row what that row gives alone (cache + threshold);
* the threshold rule, re-derived in NumPy from the recorded trajectory, and NFE = active steps;
* no recompilation across calls of the same shapes and settings.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdpo_jax.models import dream, llada
from mdpo_jax.sampling import sampler

B, P = 3, 6


@pytest.fixture(scope="module")
def prompts():
  prompt = np.asarray(jax.random.randint(jax.random.key(1), (B, P), 0, 50), np.int32)
  mask = np.ones((B, P), np.int32)
  mask[1, :2] = 0
  mask[2, :4] = 0
  return prompt, mask


def _peaked(config, seed, head_scale=100.0):
  """Random params with sharp attention and a sharpened LM head, so confidences differ across
  positions and spread over (0, 1): a threshold then has something to act on."""
  params = llada.init_params(config, jax.random.key(seed))
  blocks = {**params["blocks"], "q_proj": params["blocks"]["q_proj"] * 10,
            "k_proj": params["blocks"]["k_proj"] * 10,
            "attn_out": params["blocks"]["attn_out"] * 10}
  return {**params, "blocks": blocks, "lm_head": params["lm_head"] * head_scale}


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_window_forward_equals_full_rows(family, prompts):
  module = {"llada": llada, "dream": dream}[family]
  config = module.tiny(n_kv_heads=2) if family == "llada" else dream.tiny()
  params = llada.init_params(config, jax.random.key(0))
  prompt, mask = prompts
  tokens = np.concatenate([prompt, np.full((B, 10), 3, np.int32)], 1)
  attn = np.concatenate([mask, np.ones((B, 10), np.int32)], 1)
  full, cache = module.forward(config, params, tokens, attention_mask=attn, return_cache=True)
  assert cache.k.shape == (config.n_layers, B, P + 10, config.n_kv_heads, config.head_dim)
  window = jax.jit(lambda t, c, s: module.forward(config, params, t, cache=c, window_start=s,
                                                  window_width=4))
  for start in (P, 1):
    np.testing.assert_allclose(window(tokens, cache, start), full[:, start:start + 4],
                               atol=2e-5, rtol=1e-5)


def test_one_layer_cache_is_exact(prompts):
  config = llada.tiny(n_layers=1, n_kv_heads=2)
  params, fwd = _peaked(config, 3), llada.forward_fn(config)
  prompt, mask = prompts
  for cache, settings in (("prefix", dict(cfg_scale=1.0)),
                          ("dual", dict(remasking="margin", threshold=0.9))):
    base = sampler.SamplerConfig.for_model(config, gen_length=8, block_length=4, steps=8,
                                           **settings)
    want = sampler.generate(fwd, params, prompt, base, jax.random.key(2), prompt_mask=mask)
    got = sampler.generate(fwd, params, prompt, base.replace(cache=cache), jax.random.key(2),
                           prompt_mask=mask)
    np.testing.assert_array_equal(got, want, err_msg=f"{cache} {settings}")


@pytest.mark.parametrize("cache,cfg_scale", [("prefix", 0.5), ("dual", 0.0)])
def test_refresh_every_step_reproduces_no_cache(cache, cfg_scale, prompts):
  config = llada.tiny(n_kv_heads=2)
  params, fwd = _peaked(config, 4, 5.0), llada.forward_fn(config)
  prompt, mask = prompts
  base = sampler.SamplerConfig.for_model(config, gen_length=8, block_length=4, steps=8,
                                         remasking="rcr", cfg_scale=cfg_scale,
                                         eos_confidence_neg_inf=True)
  want, want_traj = sampler.generate(fwd, params, prompt, base, jax.random.key(5),
                                     prompt_mask=mask, return_trajectory=True)
  got, traj, nfe = sampler.generate(fwd, params, prompt, base.replace(cache=cache, cache_refresh=1),
                                    jax.random.key(5), prompt_mask=mask, return_trajectory=True,
                                    return_nfe=True)
  np.testing.assert_array_equal(got, want)
  for name in ("x", "x0", "committed", "active"):
    np.testing.assert_array_equal(getattr(traj, name), getattr(want_traj, name), err_msg=name)
  np.testing.assert_allclose(traj.confidence, want_traj.confidence, rtol=1e-5, atol=1e-6)
  assert int(nfe) == base.steps


def test_batch_rows_equal_single_rows(prompts):
  """Rows finish blocks at different steps under a threshold; each still gets what it gets
  alone (its own prompt without padding), with the dual cache and RCR."""
  config = llada.tiny(n_kv_heads=2)
  params, fwd = _peaked(config, 6), llada.forward_fn(config)
  prompt, mask = (a[[0, 2]] for a in prompts)   # 6 and 2 real prompt tokens
  sc = sampler.SamplerConfig.for_model(config, gen_length=8, block_length=4, steps=8,
                                       remasking="rcr", threshold=0.9, cache="dual")
  batch, traj = sampler.generate(fwd, params, prompt, sc, jax.random.key(0), prompt_mask=mask,
                                 return_trajectory=True)
  # x̂0_t is complete at every step (MDPO scores each step's prediction), window or not
  assert (np.asarray(traj.x0)[:, :, P:] != config.mask_token_id).all()
  steps_B = np.asarray(traj.active).sum(0)
  assert steps_B[0] != steps_B[1] and steps_B.max() < sc.steps, steps_B
  for row in range(2):
    real = prompt[row:row + 1, mask[row].astype(bool)]
    alone = sampler.generate(fwd, params, real, sc, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(batch)[row, P:], np.asarray(alone)[0, real.shape[1]:])


def test_threshold_rule_from_the_trajectory(prompts):
  """At every step: committed = the scheduled top-n by confidence ∪ {confidence ≥ τ}, among the
  block's masked positions; a finished row does nothing; NFE counts the steps with work."""
  config = llada.tiny(n_kv_heads=2)
  params, fwd = _peaked(config, 7), llada.forward_fn(config)
  prompt, mask = prompts
  tau, gen = 0.9, 16
  sc = sampler.SamplerConfig.for_model(config, gen_length=gen, block_length=8, steps=8,
                                       threshold=tau)
  tokens, traj, nfe = sampler.generate(fwd, params, prompt, sc, jax.random.key(1),
                                       prompt_mask=mask, return_trajectory=True, return_nfe=True)
  x, conf, committed, active = (np.asarray(a) for a in (traj.x, traj.confidence, traj.committed,
                                                        traj.active))
  counts, spb, pos = sc.schedule_counts(), sc.steps_per_block, np.arange(P + gen)
  for t in range(sc.steps):
    block_end = P + (t // spb + 1) * sc.block_length
    for b in range(B):
      eligible = (x[t, b] == config.mask_token_id) & (pos >= P) & (pos < block_end)
      assert active[t, b] == eligible.any()
      want = eligible & (conf[t, b] >= tau)
      n = min(counts[t % spb], eligible.sum())
      order = np.argsort(-np.where(eligible, conf[t, b], -np.inf), kind="stable")
      want[order[:n]] = True
      np.testing.assert_array_equal(committed[t, b], want, err_msg=f"step {t} row {b}")
  assert int(nfe) == int(active.any(1).sum())
  assert not active.all(), "some row should finish a block early"
  assert (np.asarray(tokens) != config.mask_token_id).all()


def test_threshold_extremes(prompts):
  """τ → 0: every block is committed in its first step (RCR never re-masks), so NFE = blocks and
  the block's tokens are that step's candidates; τ = 1 (nothing is that sure): the plain
  sampler's tokens and NFE."""
  config = llada.tiny(n_kv_heads=2)
  params, fwd = _peaked(config, 8), llada.forward_fn(config)
  prompt, mask = prompts
  base = sampler.SamplerConfig.for_model(config, gen_length=8, block_length=4, steps=8,
                                         remasking="rcr", cache="dual")
  eager, traj, nfe = sampler.generate(fwd, params, prompt, base.replace(threshold=1e-30),
                                      jax.random.key(0), prompt_mask=mask,
                                      return_trajectory=True, return_nfe=True)
  assert int(nfe) == base.num_blocks
  first_steps = np.asarray(traj.x0)[::base.steps_per_block]   # x̂0 of each block's first step
  for block in range(base.num_blocks):
    cols = slice(P + 4 * block, P + 4 * (block + 1))
    np.testing.assert_array_equal(np.asarray(eager)[:, cols], first_steps[block][:, cols])
  plain = base.replace(remasking="low_confidence", cache="none")
  want = sampler.generate(fwd, params, prompt, plain, jax.random.key(0), prompt_mask=mask)
  strict, strict_nfe = sampler.generate(fwd, params, prompt, plain.replace(threshold=1.0),
                                        jax.random.key(0), prompt_mask=mask, return_nfe=True)
  np.testing.assert_array_equal(strict, want)
  assert int(strict_nfe) == base.steps


def test_no_recompilation_across_calls(prompts):
  config = llada.tiny(n_kv_heads=2)
  params, fwd = llada.init_params(config, jax.random.key(9)), llada.forward_fn(config)
  prompt, mask = prompts
  sc = sampler.SamplerConfig.for_model(config, gen_length=8, block_length=4, steps=4,
                                       cache="dual", threshold=0.5, temperature=0.7)
  sampler.generate(fwd, params, prompt, sc, jax.random.key(0), prompt_mask=mask)
  size = sampler._generate_jit._cache_size()
  other = (prompt + 1) % 50
  sampler.generate(llada.forward_fn(config), params, other, sc.replace(), jax.random.key(1),
                   prompt_mask=np.ones_like(mask))
  assert sampler._generate_jit._cache_size() == size


def test_a_forward_without_the_cache_contract_is_one_line_error(prompts):
  config = llada.tiny()
  params = llada.init_params(config, jax.random.key(0))

  def plain(params, tokens, attention_mask=None):
    return llada.forward(config, params, tokens, attention_mask=attention_mask)

  sc = sampler.SamplerConfig.for_model(config, gen_length=4, block_length=4, steps=4,
                                       cache="dual")
  with pytest.raises(ValueError) as e:
    sampler.generate(plain, params, prompts[0], sc, jax.random.key(0))
  assert str(e.value).startswith("SamplerConfig.cache='dual': forward_fn test_a_forward_without_")
  assert "\n" not in str(e.value)


def test_the_first_hitting_sampler_rejects_fast_sampling_settings(prompts):
  from mdpo_jax.sampling import fhs
  config = llada.tiny()
  sc = sampler.SamplerConfig.for_model(config, gen_length=4, block_length=4, steps=4,
                                       threshold=0.9)
  with pytest.raises(ValueError, match=r"^SamplerConfig.cache='none', threshold=0.9: the first"):
    fhs.generate(llada.forward_fn(config), None, prompts[0], sc, jax.random.key(0))
