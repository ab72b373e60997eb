"""The scan sampler against a plain Python loop written from SPEC §3, and its invariants."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdpo_jax import parallel
from mdpo_jax.models import llada
from mdpo_jax.sampling import remask
from mdpo_jax.sampling.sampler import SamplerConfig, generate

VOCAB = 40


@pytest.fixture(scope="module")
def model():
  # A larger init scale gives peaked, well-separated predictions, so rankings are not near-ties.
  cfg = llada.tiny(vocab_size=VOCAB, init_std=0.3)
  return cfg, llada.init_params(cfg, jax.random.key(7))


def _prompts(lengths, total, pad_id, seed=0):
  rng = np.random.default_rng(seed)
  tokens = np.full((len(lengths), total), pad_id, np.int32)
  mask = np.zeros((len(lengths), total), np.int32)
  for r, n in enumerate(lengths):
    tokens[r, total - n:] = rng.integers(0, VOCAB - 4, n)
    mask[r, total - n:] = 1
  return tokens, mask


# ------------------------------------------------- reference: a Python loop straight from SPEC §3


def _np_counts(block_masked, steps_per_block):
  base, r = divmod(block_masked, steps_per_block)
  return [base + (1 if i < r else 0) for i in range(steps_per_block)]


def _np_softmax64(logits):
  z = logits.astype(np.float64)
  z = np.exp(z - z.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def reference_generate(fwd, params, prompt, pmask, gen, block, steps, remasking, mask_id,
                       cfg_scale=0.0):
  b, p = prompt.shape
  x = np.concatenate([prompt, np.full((b, gen), mask_id, np.int32)], 1)
  attn = np.concatenate([pmask, np.ones((b, gen), np.int32)], 1)
  is_prompt = np.concatenate([pmask.astype(bool), np.zeros((b, gen), bool)], 1)
  nblocks = gen // block
  spb = steps // nblocks
  run_conf = np.zeros(x.shape, np.float64)
  states = []
  for blk in range(nblocks):
    end = p + (blk + 1) * block
    n = _np_counts(block, spb)
    for i in range(spb):
      states.append(x.copy())
      logits = np.array(fwd(params, jnp.asarray(x), attention_mask=jnp.asarray(attn)))
      if cfg_scale:
        un_in = np.where(is_prompt, mask_id, x)
        un = np.asarray(fwd(params, jnp.asarray(un_in), attention_mask=jnp.asarray(attn)))
        logits = un + (cfg_scale + 1) * (logits - un)
      logits[..., mask_id] = -np.inf  # the sampler never proposes the mask token itself
      probs = _np_softmax64(logits)
      x0 = logits.argmax(-1)
      masked = x == mask_id
      x0 = np.where(masked, x0, x)
      conf = np.take_along_axis(probs, x0[..., None], -1)[..., 0]
      if remasking == "low_confidence":
        conf[:, end:] = -np.inf
        conf = np.where(masked, conf, -np.inf)
        for r in range(b):
          chosen = np.argsort(-conf[r], kind="stable")[: n[i]]
          x[r, chosen] = x0[r, chosen]
      else:  # RCR
        for r in range(b):
          for pos in range(end):
            if x[r, pos] == mask_id:
              x[r, pos] = x0[r, pos]
              run_conf[r, pos] = conf[r, pos]
          if i < spb - 1:
            num = sum(n[i + 1:])
            score = np.where(run_conf[r] == 0, 1.0, run_conf[r])
            lowest = np.argsort(score, kind="stable")[:num]
            x[r, lowest] = mask_id
  states.append(x.copy())
  return x, states


SETTINGS = [  # (gen, block, steps): one token per step, several per step, several blocks, uneven
    (8, 8, 8), (12, 4, 6), (16, 8, 4), (12, 12, 5)]


@pytest.mark.parametrize("remasking", ["low_confidence", "rcr"])
@pytest.mark.parametrize("gen,block,steps", SETTINGS)
def test_scan_equals_python_loop_at_t0(model, remasking, gen, block, steps):
  cfg, params = model
  prompt, pmask = _prompts([5, 3, 1], 5, cfg.pad_token_id)
  fwd = llada.forward_fn(cfg)
  sc = SamplerConfig.for_model(cfg, gen_length=gen, block_length=block, steps=steps,
                               remasking=remasking)
  got, traj = generate(fwd, params, prompt, sc, jax.random.key(0), prompt_mask=pmask,
                       return_trajectory=True)
  want, states = reference_generate(jax.jit(fwd), params, prompt, pmask, gen, block, steps,
                                    remasking, cfg.mask_token_id)
  np.testing.assert_array_equal(np.asarray(got), want)
  np.testing.assert_array_equal(np.asarray(traj.x), np.stack(states[:-1]))


def test_cfg_equals_reference_and_scale_zero_is_plain(model):
  cfg, params = model
  prompt, pmask = _prompts([4, 2], 4, cfg.pad_token_id, seed=1)
  fwd = llada.forward_fn(cfg)
  base = SamplerConfig.for_model(cfg, gen_length=8, block_length=4, steps=4)
  got = generate(fwd, params, prompt, base.replace(cfg_scale=1.5), jax.random.key(0),
                 prompt_mask=pmask)
  want, _ = reference_generate(jax.jit(fwd), params, prompt, pmask, 8, 4, 4, "low_confidence",
                               cfg.mask_token_id, cfg_scale=1.5)
  np.testing.assert_array_equal(np.asarray(got), want)
  plain = generate(fwd, params, prompt, base, jax.random.key(0), prompt_mask=pmask)
  zero = generate(fwd, params, prompt, base.replace(cfg_scale=0.0), jax.random.key(0),
                  prompt_mask=pmask)
  np.testing.assert_array_equal(np.asarray(plain), np.asarray(zero))
  assert not np.array_equal(np.asarray(plain), want)  # guidance changed something here


def _run(model, remasking, temperature, gen=16, block=8, steps=8, seed=0, lengths=(6, 4, 2, 1)):
  cfg, params = model
  prompt, pmask = _prompts(list(lengths), 6, cfg.pad_token_id, seed)
  sc = SamplerConfig.for_model(cfg, gen_length=gen, block_length=block, steps=steps,
                               remasking=remasking, temperature=temperature)
  out, traj = generate(llada.forward_fn(cfg), params, prompt, sc, jax.random.key(seed),
                       prompt_mask=pmask, return_trajectory=True)
  return cfg, sc, prompt, np.asarray(out), jax.tree.map(np.asarray, traj)


@pytest.mark.parametrize("remasking", ["low_confidence", "rcr", "random", "margin", "entropy"])
def test_schedule_prompt_and_block_invariants(model, remasking):
  cfg, sc, prompt, out, traj = _run(model, remasking, temperature=1.0)
  p, m = prompt.shape[1], cfg.mask_token_id
  states = np.concatenate([traj.x, out[None]], 0)  # x_0 .. x_T
  counts = remask.transfer_schedule(sc.block_length, sc.steps_per_block)
  for t in range(sc.steps):
    blk, i = divmod(t, sc.steps_per_block)
    after = states[t + 1]
    assert (after[:, :p] == prompt).all()  # prompt tokens never change
    unmasked_gen = (after[:, p:] != m).sum(1)
    assert (unmasked_gen == blk * sc.block_length + counts[: i + 1].sum()).all()
    assert (after[:, p + (blk + 1) * sc.block_length:] == m).all()  # nothing past the block
    if i == sc.steps_per_block - 1:
      assert (after[:, : p + (blk + 1) * sc.block_length] != m).all()  # block ends unmasked
    # trajectory consistency
    assert ((traj.x0[t] == traj.x[t]) | (traj.x[t] == m)).all()
    assert (traj.x0[t] != m).all()
    np.testing.assert_array_equal(traj.committed[t], (traj.x[t] == m) & (after != m))
    assert np.isfinite(traj.confidence[t]).all() and (traj.confidence[t] <= 1).all()
    if remasking != "rcr":  # committed tokens never change
      keep = states[t] != m
      assert (after[keep] == states[t][keep]).all()
      np.testing.assert_array_equal(after, np.where(traj.committed[t], traj.x0[t], traj.x[t]))
  assert (out != m).all()


def test_rcr_revises_earlier_blocks(model):
  """Some token of block 0 changes after block 0 has ended (impossible under low_confidence)."""
  revised = 0
  for seed in range(3):
    _, sc, prompt, out, traj = _run(model, "rcr", temperature=1.0, seed=seed)
    p = prompt.shape[1]
    end_of_block0 = traj.x[sc.steps_per_block][:, p:p + sc.block_length]
    revised += int((out[:, p:p + sc.block_length] != end_of_block0).sum())
  assert revised > 0


def test_temperature_sampling_follows_softmax():
  """A model with fixed logits: every committed token ~ softmax(logits/T) (chi-square test).

  Random remasking, so which positions commit is independent of the sampled tokens (confidence
  ranking would favour likely tokens and bias the counts).
  """
  v = 6
  logits_V = jnp.asarray([2.0, 1.0, 0.5, 0.0, -1.0, -50.0])  # last id is the mask: never drawn

  def fixed_forward(params, tokens_BxL, attention_mask=None):
    return jnp.broadcast_to(logits_V * params, tokens_BxL.shape + (v,))

  temperature = 0.7
  sc = SamplerConfig(gen_length=64, block_length=64, steps=16, temperature=temperature,
                     remasking="random", mask_id=5, eos_id=4, eot_id=3)
  out = generate(fixed_forward, jnp.float32(1.0), np.zeros((256, 1), np.int32), sc,
                 jax.random.key(3))
  counts = np.bincount(np.asarray(out)[:, 1:].ravel(), minlength=v)[:5]
  expected = _np_softmax64(np.asarray(logits_V[:5]) / temperature) * counts.sum()
  chi2 = ((counts - expected) ** 2 / expected).sum()
  assert chi2 < 18.47  # chi-square 0.999 quantile, 4 degrees of freedom
  # ...and the temperature matters: at T=0.7 vs T=1 the top token frequency differs clearly.
  p_top = counts[0] / counts.sum()
  assert abs(p_top - _np_softmax64(np.asarray(logits_V[:5]))[0]) > 0.05


_TRACES = {"n": 0}


def _counting_forward(config, params, tokens_BxL, attention_mask=None):
  _TRACES["n"] += 1  # runs only while tracing
  return llada.forward(config, params, tokens_BxL, attention_mask=attention_mask)


def test_no_recompilation_on_second_call(model):
  cfg, params = model
  fwd = functools.partial(_counting_forward, cfg)
  sc = SamplerConfig.for_model(cfg, gen_length=8, block_length=4, steps=4, temperature=0.5)
  prompt, pmask = _prompts([3, 2], 3, cfg.pad_token_id)
  generate(fwd, params, prompt, sc, jax.random.key(0), prompt_mask=pmask)
  traced = _TRACES["n"]
  assert traced >= 1
  other_prompt, other_mask = _prompts([1, 3], 3, cfg.pad_token_id, seed=5)
  generate(functools.partial(_counting_forward, cfg), params, other_prompt, sc,
           jax.random.key(1), prompt_mask=other_mask)
  assert _TRACES["n"] == traced


def test_sharded_params_and_batch_match_unsharded(model):
  cfg, _ = model
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  params = llada.init_sharded_params(cfg.replace(init_std=0.3), jax.random.key(7), mesh)
  prompt, pmask = _prompts([5, 4, 3, 2], 5, cfg.pad_token_id)
  sharded = parallel.shard_batch({"p": prompt, "m": pmask}, mesh)
  assert params["blocks"]["q_proj"].sharding.spec[1] == "fsdp"
  sc = SamplerConfig.for_model(cfg, gen_length=8, block_length=4, steps=4, remasking="rcr")
  fwd = llada.forward_fn(cfg)
  got = generate(fwd, params, sharded["p"], sc, jax.random.key(0), prompt_mask=sharded["m"])
  host_params = jax.device_get(params)
  want = generate(fwd, host_params, prompt, sc, jax.random.key(0), prompt_mask=pmask)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("changes,needle", [
    (dict(gen_length=10, block_length=4), "block_length"),
    (dict(gen_length=8, block_length=4, steps=3), "steps"),
    (dict(temperature=-1.0), "temperature"),
    (dict(remasking="greedy"), "remasking"),
    (dict(schedule="cosine"), "schedule"),
    (dict(top_p=1.5), "top_p"),
    (dict(gen_length=8, block_length=8, steps=16), "steps"),
])
def test_config_errors_name_the_field(changes, needle):
  base = dict(gen_length=8, block_length=8, steps=8)
  base.update(changes)
  with pytest.raises(ValueError, match=needle):
    SamplerConfig(**base)


def test_schedules():
  assert list(remask.transfer_schedule(10, 4, "llada")) == [3, 3, 2, 2]
  assert list(remask.transfer_schedule(12, 4, "linear")) == [3, 3, 3, 3]
  assert list(remask.transfer_schedule(6, 3, "linear")) == [2, 2, 2]
  # linear = floor(N(1-(i+1)/S)) masked after step i: 10 -> 7, 5, 2, 0
  assert list(remask.transfer_schedule(10, 4, "linear")) == [3, 2, 3, 2]
