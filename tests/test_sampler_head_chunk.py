"""The sampler with its LM head applied a chunk of positions at a time (`head_chunk`).

Properties: at T = 0 every token and every recorded confidence equals the whole-logits sampler's
(any chunk size, every remasking kind, top-k, left padding); at T > 0 the result does not depend
on the chunk size (noise drawn per position); the draws follow softmax(logits / T) computed
independently from the model's forward, and different positions draw independently; no
[B, L, V] array is built; rollouts split over the data axes equal replicated ones; misuse is
one line.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from configs import base
from mdpo_jax import config as config_lib
from mdpo_jax import parallel
from mdpo_jax.models import llada
from mdpo_jax.rl import rollout
from mdpo_jax.sampling import ar, fhs, sampler, scheduled
from mdpo_jax.sampling.sampler import SamplerConfig, generate
from run_helpers import all_shapes

V = 96   # ≠ the tiny model's width, so a [B, L, V] shape is only ever logits


@pytest.fixture(scope="module")
def model():
  cfg = llada.tiny(vocab_size=V)
  return cfg, llada.forward_fn(cfg), llada.init_params(cfg, jax.random.key(0))


def _prompts():
  prompts = jax.random.randint(jax.random.key(1), (3, 5), 0, 60)
  mask = jnp.array([[0, 1, 1, 1, 1], [1] * 5, [0, 0, 1, 1, 1]])
  return prompts, mask


@pytest.mark.parametrize("remasking,top_k", [("low_confidence", None), ("rcr", None),
                                             ("margin", 5)])
def test_greedy_trajectory_equals_the_whole_logits_sampler(model, remasking, top_k):
  cfg, fwd, params = model
  prompts, mask = _prompts()
  base = SamplerConfig.for_model(cfg, gen_length=12, block_length=4, steps=6,
                                 remasking=remasking, top_k=top_k)
  want = generate(fwd, params, prompts, base, jax.random.key(2), prompt_mask=mask,
                  return_trajectory=True)
  for chunk in (5, 40):   # 5: the last chunk padded; 40 > L = 17: one padded chunk
    got = generate(fwd, params, prompts, base.replace(head_chunk=chunk), jax.random.key(2),
                   prompt_mask=mask, return_trajectory=True)
    np.testing.assert_array_equal(got[0], want[0])
    for name in ("x", "x0", "committed"):
      np.testing.assert_array_equal(getattr(got[1], name), getattr(want[1], name))
    np.testing.assert_allclose(got[1].confidence, want[1].confidence, rtol=1e-6, atol=1e-7)


def test_sampled_tokens_do_not_depend_on_the_chunk_size(model):
  cfg, fwd, params = model
  prompts, mask = _prompts()
  hot = SamplerConfig.for_model(cfg, gen_length=12, block_length=4, steps=6, temperature=0.8,
                                remasking="rcr", top_p=0.9)
  runs = [generate(fwd, params, prompts, hot.replace(head_chunk=c), jax.random.key(3),
                   prompt_mask=mask, return_trajectory=True) for c in (2, 17)]
  for got in runs[1:]:
    np.testing.assert_array_equal(got[0], runs[0][0])
    np.testing.assert_array_equal(got[1].x0, runs[0][1].x0)
  other_key = generate(fwd, params, prompts, hot.replace(head_chunk=2), jax.random.key(4),
                       prompt_mask=mask)
  assert (other_key != runs[0][0]).any()   # the key matters


def _exact_probs(cfg, fwd, params, prompt, gen_length, temperature):
  """softmax(logits / T) of the all-masked completion (mask token excluded), float64."""
  x = jnp.concatenate([prompt, jnp.full((1, gen_length), cfg.mask_token_id)], axis=1)
  logits = np.asarray(fwd(params, x), np.float64)[0, prompt.shape[1]:]
  logits[:, cfg.mask_token_id] = -np.inf
  z = logits / temperature
  p = np.exp(z - z.max(-1, keepdims=True))
  return p / p.sum(-1, keepdims=True)


def test_draws_follow_the_tempered_distribution_independently_per_position(model):
  """Two positions committed in one step: each marginal passes a chi-square test against the
  exact softmax(logits / T), and P(x1 == x2) matches the independent-draws value (shared noise
  between the positions of a chunk would inflate it)."""
  cfg, fwd, params = model
  n, t = 4000, 0.5
  prompt = jnp.asarray([[3, 9, 4]])
  sc = SamplerConfig.for_model(cfg, gen_length=2, block_length=2, steps=1, temperature=t,
                               head_chunk=2)
  out = np.asarray(generate(fwd, params, jnp.repeat(prompt, n, 0), sc, jax.random.key(6)))[:, 3:]
  probs = _exact_probs(cfg, fwd, params, prompt, 2, t)
  for pos in range(2):
    counts = np.bincount(out[:, pos], minlength=V)
    keep = probs[pos] * n >= 5
    observed = np.append(counts[keep], counts[~keep].sum())
    expected = np.append(probs[pos][keep] * n, probs[pos][~keep].sum() * n)
    assert expected[-1] == 0 or expected[-1] >= 5 or observed[-1] <= 10
    p_value = stats.chisquare(observed[expected > 0], expected[expected > 0]).pvalue
    assert p_value > 1e-3, (pos, p_value)
  same = float((probs[0] * probs[1]).sum())
  assert stats.binomtest(int((out[:, 0] == out[:, 1]).sum()), n, same).pvalue > 1e-3



def test_no_whole_sequence_logits_are_built(model):
  cfg, fwd, params = model
  prompts, mask = _prompts()
  sc = SamplerConfig.for_model(cfg, gen_length=12, block_length=4, steps=6, temperature=0.5,
                               remasking="rcr")

  def shapes(config):
    run = lambda p, x, m: sampler._generate(  # noqa: E731
        fwd, p, x, m, jax.random.key(0), config, True)
    return all_shapes(jax.make_jaxpr(run)(params, prompts, mask).jaxpr)

  assert (3, 17, V) in shapes(sc)
  chunked = shapes(sc.replace(head_chunk=4))
  assert (3, 17, V) not in chunked and (3, 4, V) in chunked


def test_rollouts_split_over_the_data_axes_equal_replicated_ones(model):
  cfg, fwd, params = model
  mesh = parallel.make_mesh(data=2, fsdp=4)
  prompts, mask = np.asarray(_prompts()[0]), np.asarray(_prompts()[1])
  sc = SamplerConfig.for_model(cfg, gen_length=8, block_length=4, steps=4, temperature=0.7,
                               head_chunk=3)
  placed = []

  def place(x):
    placed.append(parallel.shard_rows(x, mesh))
    return placed[-1]

  args = (fwd, params, prompts[:2], mask[:2], ["a", "b"], sc, jax.random.key(6))
  split = rollout.sample(*args, group_size=4, place=place)
  whole = rollout.sample(*args, group_size=4)
  assert placed and all(not p.sharding.is_fully_replicated for p in placed)   # 8 rows, 8 ways
  np.testing.assert_array_equal(split.tokens_NxL, whole.tokens_NxL)
  for name in ("x", "x0", "committed"):
    np.testing.assert_array_equal(getattr(split.traj, name), getattr(whole.traj, name))
  # one row per device compiles its softmax differently: the same confidences up to an ulp
  np.testing.assert_allclose(split.traj.confidence, whole.traj.confidence, rtol=1e-6)
  odd = parallel.shard_rows(np.zeros((6, 3), np.int32), mesh)   # 6 rows do not split 8 ways
  assert isinstance(odd, np.ndarray)


def test_misuse_is_one_line(model):
  cfg, fwd, params = model
  base = dict(gen_length=8, block_length=4, steps=4)
  for kwargs, needle in ((dict(head_chunk=-1), "head_chunk=-1"),
                         (dict(head_chunk=2.5), "head_chunk=2.5"),
                         (dict(head_chunk=4, cache="dual"), "cache='dual'"),
                         (dict(head_chunk=4, cfg_scale=1.0), "cfg_scale=1.0")):
    with pytest.raises(ValueError, match="SamplerConfig.head_chunk") as e:
      SamplerConfig.for_model(cfg, **base, **kwargs)
    assert needle in str(e.value) and "\n" not in str(e.value)
  sc = SamplerConfig.for_model(cfg, **base, head_chunk=4)
  prompts = jnp.zeros((2, 3), jnp.int32)
  no_head = lambda p, x, attention_mask=None: fwd(p, x, attention_mask=attention_mask)  # noqa: E731
  with pytest.raises(ValueError, match="no return_head parameter"):
    generate(no_head, params, prompts, sc, jax.random.key(0))
  with pytest.raises(ValueError, match="first-hitting sampler computes the whole logits"):
    fhs.generate(fwd, params, prompts, sc, jax.random.key(0))
  with pytest.raises(ValueError, match="autoregressive sampler computes the whole logits"):
    ar.generate(fwd, params, prompts, sc, jax.random.key(0))
  with pytest.raises(ValueError, match="head_chunk=4: the scheduled sampler"):
    scheduled.check_config(sc)


@pytest.mark.parametrize("overrides,needle", [
    ({"trainer": "mdpo", "rl.cache": "dual", "rl.head_chunk": 8}, "rl.head_chunk=8: allowed 0"),
    ({"trainer": "cogrpo", "rl.head_chunk": 8}, "rl.head_chunk=8: trainer='cogrpo'"),
    ({"eval.sampler": "fhs", "eval.head_chunk": 8}, "eval.head_chunk=8: eval.sampler='fhs'"),
    ({"eval.cache": "dual", "eval.head_chunk": 8}, "eval.head_chunk=8"),
    ({"eval.head_chunk": -2}, "eval.head_chunk=-2"),
])
def test_config_errors_name_the_field(overrides, needle):
  raw = base.get_config().to_dict()
  for dotted, value in overrides.items():
    section, key = dotted.split(".") if "." in dotted else (None, dotted)
    (raw[section] if section else raw)[key] = value
  with pytest.raises(ValueError) as e:
    config_lib.parse(raw)
  assert needle in str(e.value) and "\n" not in str(e.value)
