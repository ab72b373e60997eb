"""Co-GRPO (rl/cogrpo.py, rl/schedule_policy.py, sampling/scheduled.py): the scheduled sampler
against the plain one, the joint log-prob against NumPy, ∇φ against finite differences, which
parameters each mode moves, exact resume, and one-line config errors."""

import json
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import countdown_tiny_cogrpo
from mdpo_jax import config as config_lib
from mdpo_jax.models import llada
from mdpo_jax.rl import cogrpo
from mdpo_jax.rl import schedule_policy as sp
from mdpo_jax.sampling import scheduled
from mdpo_jax.sampling.sampler import SamplerConfig, generate
from mdpo_jax.training import metrics, optim, rl_loop
from mdpo_jax.training import state as state_lib
from run_helpers import digit_share, tiny_run, use_reward

VOCAB = 40


@pytest.fixture(scope="module")
def model():
  cfg = llada.tiny(vocab_size=VOCAB, init_std=0.3)   # peaked predictions: no near-ties
  return cfg, llada.init_params(cfg, jax.random.key(7)), llada.forward_fn(cfg)


def _prompts(b=4, p=5, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(0, VOCAB - 4, (b, p)), jnp.int32), np.ones((b, p), np.int32)


def test_hand_schedule_reproduces_the_plain_sampler(model):
  """φ's deterministic mode built from the hand schedule gives the plain sampler's tokens and
  commits exactly (3 blocks of 4 tokens, 2 steps each); other schedules reuse the same
  compilation."""
  cfg, params, fwd = model
  gen, block, steps, temp = 12, 4, 6, 0.7
  prompt, _ = _prompts()
  config = SamplerConfig.for_model(cfg, gen_length=gen, block_length=block, steps=steps,
                                   temperature=temp)
  tokens, traj = generate(fwd, params, prompt, config, jax.random.key(3), return_trajectory=True)
  spec = sp.ScheduleSpec(gen, block, steps, knobs=("commit", "temperature"), temperature=temp)
  knobs = sp.knob_values(spec, sp.mode(sp.from_hand_schedule(spec, 0.3), 4))
  assert (np.asarray(knobs["temperature"]) == np.float32(temp)).all()
  got, got_traj, _ = scheduled.generate(fwd, params, prompt, config, jax.random.key(3),
                                        scheduled.Schedule(knobs["counts"], knobs["temperature"]))
  np.testing.assert_array_equal(np.asarray(got), np.asarray(tokens))
  np.testing.assert_array_equal(np.asarray(got_traj.committed), np.asarray(traj.committed))
  compiled = scheduled._generate_jit._cache_size()
  other = sp.knob_values(spec, sp.sample(sp.from_hand_schedule(spec, 1.0), jax.random.key(1), 4))
  out, _, _ = scheduled.generate(fwd, params, prompt, config, jax.random.key(3),
                                 scheduled.Schedule(other["counts"], other["temperature"]))
  assert scheduled._generate_jit._cache_size() == compiled
  assert not (np.asarray(out)[:, 5:] == cfg.mask_token_id).any()   # every block finishes


@pytest.fixture(scope="module")
def rollout(model):
  """A stochastic Co-GRPO rollout batch (2 prompts × G=4, 12 tokens in 3 steps, every knob but
  CFG) and its training rows (stand-in rewards)."""
  cfg, params, fwd = model
  spec = sp.ScheduleSpec(12, 12, 3, temperature=0.8)
  phi = sp.from_hand_schedule(spec, 0.5)
  config = SamplerConfig.for_model(cfg, gen_length=12, block_length=12, steps=3)
  prompt, pmask = _prompts(2)
  batch = cogrpo.sample(fwd, params, phi, prompt, pmask, ["a", "b"], config, jax.random.key(5),
                        spec=spec, group_size=4, deterministic=False)
  rows = cogrpo.training_rows(batch, np.asarray([0, 1, 1, 0, 1, 1, 1, 0], np.float32))
  return spec, phi, config, batch, rows


def _np_joint_logp(forward, params, phi, rows, spec, mask_id):
  """Σ over steps and committed positions of log softmax(logits/T)[token] (float64, mask token
  impossible) + Σ over used actions of the Gaussian log-density."""
  n, s, length = rows["x"].shape
  attention = np.repeat(rows["attention_mask"], s, axis=0)
  logits = np.asarray(forward(params, jnp.asarray(rows["x"].reshape(n * s, length)),
                              attention_mask=jnp.asarray(attention)), np.float64)
  logits[..., mask_id] = -np.inf
  z = logits / rows["temperature"].reshape(n * s, 1, 1).astype(np.float64)
  top = z.max(-1, keepdims=True)
  lse = (np.log(np.exp(z - top).sum(-1, keepdims=True)) + top)[..., 0]
  chosen = np.take_along_axis(z, rows["target"].reshape(n * s, length, 1), -1)[..., 0]
  total = np.where(rows["committed"], (chosen - lse).reshape(n, s, length), 0.0).sum((1, 2))
  mean, log_std = np.asarray(phi["mean_SxK"], np.float64), np.asarray(phi["log_std_SxK"],
                                                                       np.float64)
  zz = (rows["actions"].astype(np.float64) - mean) / np.exp(log_std)
  dens = -0.5 * zz ** 2 - log_std - 0.5 * math.log(2 * math.pi)
  return total + np.where(spec.used_SxK(), dens, 0.0).sum((1, 2))


def test_joint_logprob_matches_numpy(model, rollout):
  cfg, params, fwd = model
  spec, phi, config, batch, rows = rollout
  assert rows["committed"].sum(1).max() == 1 and rows["committed"].sum((1, 2)).min() == 12
  new, old, _ = cogrpo.joint_logp(fwd, params, phi, rows, spec=spec, mode="joint", config=config)
  want = _np_joint_logp(fwd, params, phi, rows, spec, cfg.mask_token_id)
  np.testing.assert_allclose(np.asarray(new), want, rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(np.asarray(old), want, rtol=1e-4, atol=1e-3)   # the sampler's record
  sched = sp.log_prob(phi, rows["actions"], spec.used_SxK())
  only = cogrpo.joint_logp(fwd, params, phi, rows, spec=spec, mode="schedule_only",
                           config=config)[0]
  np.testing.assert_allclose(np.asarray(only), np.asarray(sched), rtol=1e-6)


def test_schedule_gradient_matches_finite_differences(rollout):
  spec, phi, config, _, rows = rollout
  rows = dict(rows, old_sched_logp=rows["old_sched_logp"] + 0.05)   # ρ ≠ 1, inside the clip
  with jax.enable_x64(True):
    phi64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), phi)
    rows64 = {k: jnp.asarray(v, jnp.float64) if v.dtype == np.float32 else v
              for k, v in rows.items()}

    @jax.jit   # one program for the ~60 evaluations below (op by op, each op compiles anew)
    def loss(p):
      return cogrpo.cogrpo_loss(None, None, p, rows64, spec=spec, mode="schedule_only",
                                config=config, clip_eps=0.2)[0]
    grad = jax.grad(loss)(phi64)
    eps = 1e-6
    for key in ("mean_SxK", "log_std_SxK"):
      for idx in np.ndindex(phi64[key].shape):
        bump = lambda d: {**phi64, key: phi64[key].at[idx].add(d)}  # noqa: E731
        fd = (loss(bump(eps)) - loss(bump(-eps))) / (2 * eps)
        np.testing.assert_allclose(float(grad[key][idx]), float(fd), rtol=1e-5, atol=1e-8)
    assert float(jnp.abs(grad["mean_SxK"]).sum()) > 0


def _toy_forward(params, tokens_BxL, attention_mask=None):
  """A bigram-free stand-in for the model (logits from a token embedding): compiles in
  milliseconds; which parameters an update moves does not depend on the architecture."""
  del attention_mask
  return params["emb_VxV"][tokens_BxL] + params["bias_V"]


def _fake_run(cfg, mode, beta, params):
  c = countdown_tiny_cogrpo.get_config()
  c.rl.cogrpo_mode, c.rl.micro_batch, c.rl.gen_length, c.rl.steps = mode, 4, 12, 3
  c.rl.block_lengths, c.rl.temperature, c.rl.prompts_per_update, c.rl.group_size = (12,), 0.8, 2, 4
  c.rl.beta, c.optim.lr = beta, 1e-2
  config = config_lib.parse(c)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
  policy = types.SimpleNamespace(forward=lambda base: _toy_forward)
  optimizer = optim.make_optimizer(config.optim, 10)
  return types.SimpleNamespace(config=config, policy=policy, model_cfg=cfg, mesh=mesh,
                               optimizer=optimizer,
                               state_shardings=state_lib.shardings(params, optimizer, 0, mesh))


@pytest.mark.parametrize("mode,beta", [("schedule_only", 0.0), ("model_only", 0.0),
                                       ("joint", 0.05)])
def test_each_mode_moves_only_its_parameters(model, rollout, mode, beta):
  """schedule_only: θ frozen, φ moves; model_only: the reverse; joint (with the KL): both."""
  cfg = model[0]
  rows = dict(rollout[4])
  rows["ref_logp"] = np.full(rows["x"].shape, -3.0, np.float32)
  if not beta:
    del rows["ref_logp"]
  params = {"emb_VxV": jax.random.normal(jax.random.key(0), (VOCAB, VOCAB)),
            "bias_V": jnp.zeros((VOCAB,))}
  run = _fake_run(cfg, mode, beta, params)
  algo = cogrpo.CoGRPO()
  extra = rl_loop.extra_state(algo, run.config.rl)
  state = state_lib.with_extra(state_lib.create(params, run.optimizer, 0),
                               state_lib.fresh_extra(*extra))
  before = jax.device_get((state.params, state.extra["params"]))
  state, out = rl_loop.make_update(algo, run)(state, {k: jnp.asarray(v) for k, v in rows.items()})
  theta, phi = jax.device_get((state.params, state.extra["params"]))
  moved = lambda a, b: any(not np.array_equal(x, y)  # noqa: E731
                           for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert moved(before[0], theta) == (mode != "schedule_only")
  assert moved(before[1], phi) == (mode != "model_only")
  assert int(state.step) == 1 and np.isfinite(float(out["loss"]))
  assert (float(out["kl"]) > 0) == (beta > 0)


def test_resume_is_exact(tmp_path, monkeypatch):
  """2 updates straight vs 1 then resumed to 2 (PPO ratio over 2 inner iterations): the same
  per-update metrics and the same final φ."""
  use_reward(monkeypatch, digit_share)
  c = tiny_run(countdown_tiny_cogrpo.get_config())
  c.rl.prompts_per_update, c.rl.group_size, c.rl.micro_batch, c.rl.inner_iters = 2, 4, 8, 2
  c.rl.gen_length, c.rl.block_lengths, c.rl.steps, c.rl.beta = 12, (12,), 3, 0.0
  c.task.eval_size = 0   # no end-of-run evaluation (3 of them): this test is about resuming
  c.rl.num_updates = 2
  rl_loop.train(c, tmp_path / "straight")
  c.rl.num_updates = 1
  rl_loop.train(c, tmp_path / "resumed")
  c.rl.num_updates = 2
  rl_loop.train(c, tmp_path / "resumed")
  rows = {w: [r for r in metrics.read_jsonl(tmp_path / w / "metrics.jsonl") if "loss" in r]
          for w in ("straight", "resumed")}
  assert [r["step"] for r in rows["resumed"]] == [1, 2]
  for key in ("loss", "reward/final_mean", "grad_norm", "schedule/grad_norm",
              "schedule/counts_0", "schedule/temperature_1"):
    np.testing.assert_allclose([r[key] for r in rows["resumed"]],
                               [r[key] for r in rows["straight"]], rtol=1e-5, err_msg=key)
  assert all(r["schedule/grad_norm"] > 0 for r in rows["straight"])
  phi = {w: json.loads((tmp_path / w / "cogrpo_schedule.json").read_text())["phi"]
         for w in ("straight", "resumed")}
  np.testing.assert_allclose(phi["resumed"]["mean_SxK"], phi["straight"]["mean_SxK"], rtol=1e-6)
  np.testing.assert_allclose(phi["resumed"]["log_std_SxK"], phi["straight"]["log_std_SxK"],
                             rtol=1e-6)


@pytest.mark.parametrize("key,value,names", [
    ("rl.cogrpo_mode", "both", "rl.cogrpo_mode='both'"),
    ("rl.cogrpo_knobs", ("commit", "top_p"), "rl.cogrpo_knobs="),
    ("rl.cogrpo_init_std", 0.0, "rl.cogrpo_init_std=0.0"),
    ("rl.block_lengths", (24, 12), "rl.block_lengths=(24, 12)"),
    ("rl.remasking", "rcr", "rl.remasking='rcr'"),
    ("rl.cache", "dual", "rl.cache='dual'")])
def test_config_errors_are_one_line(key, value, names):
  c = countdown_tiny_cogrpo.get_config()
  section, field = key.split(".")
  c[section][field] = value
  with pytest.raises(ValueError) as e:
    config_lib.parse(c)
  assert "\n" not in str(e.value) and str(e.value).startswith(names), str(e.value)
