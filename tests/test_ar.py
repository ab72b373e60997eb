"""The autoregressive baseline: a causal network, its next-token losses and likelihood, its
left-to-right decoder, and how runs and evaluation select it.

Independent checks: the causal mask by perturbation (row i depends on tokens < i only) and, for a
one-layer network, against the bidirectional model run on the prefix (the same computation for a
prefix's last position); the losses and likelihood against NumPy log-softmax of the logits; the
likelihood is a proper distribution (exp(−nll) summed over every completion is 1); the decoder
against a plain Python loop over full forwards (greedy) and, at T = 1, against the model's exact
joint (chi-square, fixed seed).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from mdpo_jax import config as config_lib
from mdpo_jax.models import ar, families, llada
from mdpo_jax.sampling import ar as ar_sampling
from mdpo_jax.sampling.sampler import SamplerConfig
from mdpo_jax.training import evaluation, likelihood
from configs import base

V = 12   # ids 0..7 ordinary, 8 bos, 9 eos/pad, 10 eot, 11 mask


def _model(n_layers=2, seed=0, init_std=0.02):
  cfg = ar.tiny(vocab_size=V, n_layers=n_layers, init_std=init_std)
  return cfg, ar.init_params(cfg, jax.random.key(seed))


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_row_i_sees_only_earlier_tokens_and_matches_the_prefix_forward():
  cfg, params = _model()
  x = jax.random.randint(jax.random.key(1), (3, 9), 0, 8)
  logits = np.asarray(ar.forward(cfg, params, x))
  for j in (2, 5, 7):
    changed = np.asarray(ar.forward(cfg, params, x.at[:, j].set((x[:, j] + 1) % 8)))
    np.testing.assert_array_equal(changed[:, : j + 1], logits[:, : j + 1])   # rows ≤ j: blind
    assert not np.allclose(changed[:, j + 1:], logits[:, j + 1:])           # later rows see it
  one, one_params = _model(n_layers=1)
  causal = np.asarray(ar.forward(one, one_params, x))
  bidir = llada.tiny(vocab_size=V, n_layers=1)
  bidir_forward = jax.jit(lambda mask: llada.forward(bidir, one_params, x, attention_mask=mask))
  for i in range(1, 9):   # position i's prediction = the prefix x<i's last row, bidirectionally
    prefix_only = jnp.broadcast_to(jnp.arange(9) < i, x.shape).astype(jnp.int32)  # one program
    np.testing.assert_allclose(causal[:, i], bidir_forward(prefix_only)[:, i - 1],
                               rtol=1e-5, atol=1e-5)


def test_left_padding_gives_the_unpadded_rows_logits():
  cfg, params = _model()
  x = jax.random.randint(jax.random.key(2), (1, 6), 0, 8)
  padded = jnp.concatenate([jnp.full((1, 3), 9), x], axis=1)
  mask = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), jnp.ones((1, 6), jnp.int32)], axis=1)
  np.testing.assert_allclose(ar.forward(cfg, params, padded, attention_mask=mask)[:, 4:],
                             ar.forward(cfg, params, x)[:, 1:], rtol=1e-5, atol=1e-5)


def test_losses_and_likelihood_equal_numpy_cross_entropy():
  cfg, params = _model(init_std=0.5)
  fwd = ar.forward_fn(cfg)
  tokens = jax.random.randint(jax.random.key(3), (3, 7), 0, 8)
  attn = jnp.array([[1] * 7, [0, 0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 1]])
  prompt = jnp.array([[1, 1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 0, 0]])
  logp = _log_softmax(fwd(params, tokens, attention_mask=attn))
  ce = -np.take_along_axis(logp, np.asarray(tokens)[..., None], -1)[..., 0]
  first = np.argmax(np.asarray(attn), axis=1)                 # first real token: no prediction
  real = np.asarray(attn).astype(bool) & (np.arange(7)[None] > first[:, None])
  answer = real & ~np.asarray(prompt).astype(bool)
  key = jax.random.key(0)
  pre, aux = ar.pretrain_loss(fwd, params, tokens, key, mask_id=11, attention_mask=attn)
  np.testing.assert_allclose(pre, ce[real].mean(), rtol=1e-5)
  np.testing.assert_allclose(aux["next_token_ce"], ce[real].mean(), rtol=1e-5)
  sft, _ = ar.sft_loss(fwd, params, tokens, prompt, key, mask_id=11, attention_mask=attn)
  per_row = [ce[b][answer[b]].mean() for b in range(3)]
  np.testing.assert_allclose(sft, np.mean(per_row), rtol=1e-5)
  nll = ar.completion_nll(fwd, params, tokens, prompt, attention_mask=attn)
  np.testing.assert_allclose(nll, [ce[b][answer[b]].sum() for b in range(3)], rtol=1e-5)


def test_the_likelihood_is_a_distribution_over_completions():
  cfg, params = _model(init_std=0.5)
  completions = np.array(list(itertools.product(range(V), repeat=2)))   # every id, mask too
  prompt = np.array([3, 1, 4])
  tokens = np.concatenate([np.tile(prompt, (len(completions), 1)), completions], axis=1)
  prompt_mask = np.zeros_like(tokens)
  prompt_mask[:, :3] = 1
  nll = likelihood.completion_nll(cfg, params, tokens, prompt_mask, num_draws=1, batch_size=48)
  np.testing.assert_allclose(np.exp(-nll).sum(), 1.0, rtol=1e-5)


# One compiled full forward per length (op-by-op dispatch compiled every op at every length);
# module level, so the second parametrisation reuses the first's programs.
_full_forward = jax.jit(llada.forward, static_argnums=0)


def _naive_greedy(cfg, params, prompt, gen):
  x = np.asarray(prompt)
  for _ in range(gen):
    # The causal network's raw last row (before the family's shift) predicts the next token.
    logits = np.array(_full_forward(cfg, params, jnp.asarray(x)))[:, -1]
    logits[:, cfg.mask_token_id] = -np.inf
    x = np.concatenate([x, logits.argmax(-1)[:, None]], axis=1)
  return x


@pytest.mark.parametrize("cache", ["none", "prefix"])
def test_greedy_decoding_equals_a_python_loop_and_padding_is_ignored(cache):
  cfg, params = _model(init_std=0.5)
  sc = SamplerConfig.for_model(cfg, gen_length=5, block_length=5, steps=5, cache=cache)
  prompts = np.array([[1, 2, 3, 4], [5, 6, 7, 0]])
  out = np.asarray(ar_sampling.generate(ar.forward_fn(cfg), params, jnp.asarray(prompts), sc,
                                        jax.random.key(0)))
  np.testing.assert_array_equal(out, _naive_greedy(cfg, params, prompts, 5))
  padded = jnp.array([[9, 9, 2, 3, 4]])
  mask = jnp.array([[0, 0, 1, 1, 1]])
  got = ar_sampling.generate(ar.forward_fn(cfg), params, padded, sc, jax.random.key(0),
                             prompt_mask=mask)
  np.testing.assert_array_equal(np.asarray(got)[:, 5:],
                                _naive_greedy(cfg, params, np.array([[2, 3, 4]]), 5)[:, 3:])


def test_sampling_at_temperature_one_follows_the_models_joint():
  cfg, params = _model(init_std=0.5)
  fwd = ar.forward_fn(cfg)
  n = 6000
  prompts = jnp.tile(jnp.array([[3, 1, 4]]), (n, 1))
  sc = SamplerConfig.for_model(cfg, gen_length=2, block_length=2, steps=2, temperature=1.0,
                               cache="prefix")
  out = np.asarray(ar_sampling.generate(fwd, params, prompts, sc, jax.random.key(7)))[:, 3:]
  assert (out != cfg.mask_token_id).all()
  # The decoder's exact joint: at each step the model's next-token distribution with the mask
  # token removed and renormalised, from the chain rule of the likelihood.
  def nll(completions):
    k = completions.shape[1]
    tokens = np.concatenate([np.tile([3, 1, 4], (len(completions), 1)), completions], axis=1)
    prompt_mask = (np.arange(3 + k) < 3)[None].repeat(len(completions), 0).astype(np.int32)
    return np.asarray(likelihood.completion_nll(cfg, params, tokens, prompt_mask, num_draws=1,
                                                batch_size=len(completions)), np.float64)
  nll_a = nll(np.arange(V - 1)[:, None])                                # −log p(a)
  pairs = np.array(list(itertools.product(range(V - 1), repeat=2)))   # the mask never drawn
  cond_AxB = np.exp(-(nll(pairs) - np.repeat(nll_a, V - 1))).reshape(V - 1, V - 1)  # p(b | a)
  first_A = np.exp(-nll_a)
  p = (first_A / first_A.sum())[:, None] * cond_AxB / cond_AxB.sum(1, keepdims=True)
  p = p.reshape(-1)
  counts = np.array([np.sum((out[:, 0] == a) & (out[:, 1] == b)) for a, b in pairs])
  keep = p * n >= 5   # pool the rare cells into one
  observed = np.append(counts[keep], counts[~keep].sum())
  expected = np.append(p[keep], p[~keep].sum())
  expected = expected * n / expected.sum()
  assert stats.chisquare(observed, expected).pvalue > 1e-3
  biased = np.roll(expected, 1)   # the test has power: a wrong joint is rejected
  assert stats.chisquare(observed, biased * observed.sum() / biased.sum()).pvalue < 1e-6


def _config(**overrides):
  c = base.get_config()
  c.model.family = "ar"
  c.eval.sampler = "ar"
  for key, value in overrides.items():
    section, name = key.split(".") if "." in key else (None, key)
    target = c if section is None else c[section]
    target[name] = value
  return c


@pytest.mark.parametrize("overrides, message", [
    ({"trainer": "mdpo"}, "trainer='mdpo': model.family='ar'"),
    ({"eval.sampler": "llada"}, "eval.sampler='llada': with model.family='ar' allowed 'ar'"),
    ({"model.family": "llada"}, "eval.sampler='ar': with model.family='llada'"),
    ({"model.hf_checkpoint": "/x"}, "model.hf_checkpoint=/x: model.family='ar' has no Hugging"),
    ({"eval.cache": "dual"}, "eval.cache='dual'"),
])
def test_config_errors_name_the_field(overrides, message):
  with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
    config_lib.parse(_config(**overrides))


def test_the_family_and_evaluation_select_the_decoder():
  parsed = config_lib.parse(_config(**{"eval.cache": "prefix"}))
  assert families.get(parsed.model.family).config_type is ar.ARConfig
  settings = evaluation.settings_from_config(parsed.eval)
  assert [(s.sampler, s.cache) for s in settings] == [("ar", "prefix")]
  cfg, params = _model()
  with pytest.raises(ValueError, match="^sampler='llada': the model is causal"):
    evaluation.check_sampler(evaluation.Setting(4, "low_confidence"), cfg)
  with pytest.raises(ValueError, match="^sampler='ar': the model is bidirectional"):
    evaluation.check_sampler(settings[0], llada.tiny(vocab_size=V))
  with pytest.raises(ValueError, match="^SamplerConfig.cfg_scale=1.0"):
    ar_sampling.generate(ar.forward_fn(cfg), params, jnp.array([[1, 2]]),
                         SamplerConfig.for_model(cfg, gen_length=2, block_length=2, steps=2,
                                                 cfg_scale=1.0), jax.random.key(0))
