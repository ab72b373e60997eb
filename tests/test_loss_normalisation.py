"""MDPO's batch reduction (`rl.loss_normalisation`): "example_mean" (each example weighs the same)
and "batch_tokens" (the MDPO reference's Σ over masked tokens / (Σ|M| + 1e-4), with λ =
L/(|M| + 1e-4)). Each reduction is checked against a NumPy float64 computation from the same
per-token quantities, its gradient against the closed form, its gradient under micro-batching
through the RL loop's own update (the same whatever `rl.micro_batch`), and the config field."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base, countdown_tiny_mdpo
from mdpo_jax import config as config_lib
from mdpo_jax.rl import mdpo, rollout
from mdpo_jax.rl.common import token_logprobs
from mdpo_jax.sampling.sampler import Trajectory
from mdpo_jax.training import rl_loop
from mdpo_jax.training import state as state_lib

GEN, PROMPT, VOCAB, MASK = 8, 4, 16, 15


# ----------------------------------------------------------------------------- NumPy reference

def _np_loss(logp, batch, *, normalisation, clip_eps, beta, gen_length=GEN):
  """Float64, written from SPEC §4.5 and the reference's `compute_loss`: per-token ℓ, then the
  reduction."""
  logp = np.asarray(logp, np.float64)
  m = np.asarray(batch["masked"], bool)
  count = m.sum(1).astype(np.float64)
  if normalisation == "example_mean":
    lam = gen_length / np.maximum(count, 1.0)
  else:
    lam = gen_length / (count + 1e-4)
  old = np.asarray(batch.get("old_logp", logp), np.float64)
  ratio = np.exp(logp - old)
  adv = np.asarray(batch["adv"], np.float64)[:, None]
  surrogate = np.minimum(ratio * adv, np.clip(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
  ell = -surrogate * lam[:, None]
  if beta:
    ell = ell + beta * (np.asarray(batch["ref_logp"], np.float64) - logp) ** 2 / 2
  terms = np.where(m, np.asarray(batch["conf"], np.float64) * ell, 0.0)
  if normalisation == "example_mean":
    return float(np.mean(terms.sum(1) / np.maximum(count, 1.0)))
  return float(terms.sum() / (count.sum() + 1e-4))


def _batch(seed=0, n=6, length=PROMPT + GEN):
  """Rows with |M| from 0 to GEN (row 0 has none), confidences, advantages and log-probs."""
  rng = np.random.default_rng(seed)
  masked = np.zeros((n, length), bool)
  for i, k in enumerate(np.linspace(0, GEN, n).astype(int)):
    masked[i, PROMPT + rng.choice(GEN, k, replace=False)] = True
  logp = np.log(rng.uniform(0.05, 1.0, (n, length))).astype(np.float32)
  batch = {"x_t": np.zeros((n, length), np.int32), "target": np.zeros((n, length), np.int32),
           "masked": masked, "conf": rng.uniform(0.1, 1.0, (n, length)).astype(np.float32),
           "adv": rng.normal(size=n).astype(np.float32),
           "old_logp": (logp + rng.normal(0, 0.3, logp.shape)).astype(np.float32),
           "ref_logp": (logp + rng.normal(0, 0.5, logp.shape)).astype(np.float32)}
  return logp, batch


@pytest.mark.parametrize("normalisation", mdpo.LOSS_NORMALISATIONS)
@pytest.mark.parametrize("inner,beta", [(False, 0.0), (True, 0.05)])
def test_each_reduction_matches_numpy_float64(normalisation, inner, beta):
  logp, batch = _batch()
  if not inner:
    del batch["old_logp"]
  if not beta:
    del batch["ref_logp"]
  loss, _ = mdpo.mdpo_loss_from_logp(jnp.asarray(logp), batch, gen_length=GEN, clip_eps=0.2,
                                     beta=beta, normalisation=normalisation)
  want = _np_loss(logp, batch, normalisation=normalisation, clip_eps=0.2, beta=beta)
  np.testing.assert_allclose(float(loss), want, rtol=2e-6, atol=1e-7)


def test_the_two_reductions_differ_and_the_default_is_example_mean():
  logp, batch = _batch()
  del batch["old_logp"], batch["ref_logp"]
  got = {n: float(mdpo.mdpo_loss_from_logp(jnp.asarray(logp), batch, gen_length=GEN,
                                           normalisation=n)[0])
         for n in mdpo.LOSS_NORMALISATIONS}
  assert abs(got["example_mean"] - got["batch_tokens"]) > 1e-2 * abs(got["example_mean"])
  default = float(mdpo.mdpo_loss_from_logp(jnp.asarray(logp), batch, gen_length=GEN)[0])
  assert default == got["example_mean"]


@pytest.mark.parametrize("normalisation", mdpo.LOSS_NORMALISATIONS)
def test_gradient_wrt_logp_is_the_closed_form(normalisation):
  """ρ ≡ 1 (no old_logp) and the k2 KL: ∂loss/∂logp_i = conf_i·(−Â·λ − β·(ref_i − logp_i)) / D on
  M, with D = N·max(|M|, 1) per example ("example_mean") or Σ|M| + 1e-4 ("batch_tokens")."""
  logp, batch = _batch(seed=1)
  del batch["old_logp"]
  beta = 0.05
  grad = jax.grad(lambda lp: mdpo.mdpo_loss_from_logp(
      lp, batch, gen_length=GEN, beta=beta, normalisation=normalisation)[0])(jnp.asarray(logp))
  m, n = batch["masked"], len(batch["adv"])
  count = m.sum(1).astype(np.float64)
  if normalisation == "example_mean":
    lam, denom = GEN / np.maximum(count, 1), (n * np.maximum(count, 1))[:, None]
  else:
    lam, denom = GEN / (count + 1e-4), count.sum() + 1e-4
  per_token = (-batch["adv"].astype(np.float64)[:, None] * lam[:, None]
               - beta * (batch["ref_logp"].astype(np.float64) - logp))
  want = np.where(m, batch["conf"] * per_token / denom, 0.0)
  np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-5, atol=1e-8)


def test_token_norm_is_the_whole_batch_count_in_every_row():
  _, batch = _batch()
  norm = mdpo.batch_token_norm(batch["masked"])
  assert norm.shape == (6,) and norm.dtype == np.float32 and np.all(norm == norm[0])
  np.testing.assert_allclose(norm.sum(), batch["masked"].sum() + 1e-4, rtol=1e-6)


def test_bad_normalisation_is_one_line():
  logp, batch = _batch()
  with pytest.raises(ValueError, match=r"^normalisation='tokens': allowed \('example_mean', "
                                       r"'batch_tokens'\)$"):
    mdpo.mdpo_loss_from_logp(jnp.asarray(logp), batch, gen_length=GEN, normalisation="tokens")


# ----------------------------------------------------------------------------- micro-batching

def _toy_forward(params, tokens_BxL, attention_mask=None):
  """Logits from a token embedding: compiles in milliseconds."""
  del attention_mask
  return params["emb_VxV"][tokens_BxL] + params["bias_V"]


def _config(normalisation: str, micro_batch: int):
  c = countdown_tiny_mdpo.get_config()
  c.rl.prompts_per_update, c.rl.group_size, c.rl.top_k, c.rl.steps = 2, 4, 2, 4
  c.rl.gen_length, c.rl.block_lengths, c.rl.temperature = GEN, (GEN,), 0.7
  c.rl.micro_batch, c.rl.loss_normalisation, c.rl.beta = micro_batch, normalisation, 0.05
  return config_lib.parse(c)


def _rollout_batch(rl, seed=0) -> rollout.RolloutBatch:
  """A recorded trajectory: every generated position masked at t = 0, GEN / T of them unmasked
  per step in a random order; random predictions and confidences."""
  rng = np.random.default_rng(seed)
  n, t_steps, length = rl.prompts_per_update * rl.group_size, rl.steps, PROMPT + GEN
  order = np.argsort(rng.random((n, GEN)), axis=1)
  x = np.zeros((t_steps, n, length), np.int32)
  for t in range(t_steps):
    x[t, :, :PROMPT] = rng.integers(0, MASK, (n, PROMPT)) if t == 0 else x[0, :, :PROMPT]
    still = order >= t * GEN // t_steps   # rank among the unmasking order ≥ unmasked so far
    x[t, :, PROMPT:] = np.where(still, MASK, rng.integers(0, MASK, (n, GEN)))
  x0 = np.where(x == MASK, rng.integers(0, MASK, x.shape), x).astype(np.int32)
  traj = Trajectory(x=x, x0=x0, confidence=rng.uniform(0.1, 1, x.shape).astype(np.float32),
                    committed=np.zeros(x.shape, bool))
  return rollout.RolloutBatch(x[0, :, :PROMPT], np.ones((n, PROMPT), np.int32), x0[-1], traj,
                              [None] * n, rl.group_size)


class _Scorer:
  """Random 0/1 rewards per step (a fixed draw)."""

  def step_rewards(self, batch):
    t, n = batch.traj.x.shape[:2]
    return (np.random.default_rng(1).integers(0, 2, (n, t)).astype(np.float32),
            {"timeouts": 0, "errors": 0, "crashes": 0})


def _rows(config):
  rl = config.rl
  rows = mdpo.MDPO().rows(_rollout_batch(rl), _Scorer(), jax.random.key(0), rl, mask_id=MASK,
                          eos_id=0).rows
  rng = np.random.default_rng(2)
  rows["ref_logp"] = np.log(rng.uniform(0.05, 1, rows["x_t"].shape)).astype(np.float32)
  return rows


def _params():
  return {"emb_VxV": 0.5 * jax.random.normal(jax.random.key(0), (VOCAB, VOCAB)),
          "bias_V": jnp.zeros((VOCAB,))}


def _update(config, rows):
  """The loop's own update (`rl_loop.make_update`: micro-batches of `rl.micro_batch` rows) with
  SGD, lr 1: returns (params before − after = the gradient it applied, the logged loss)."""
  sgd = optax.apply_if_finite(optax.sgd(1.0), 10**9)
  params = _params()
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
  run = types.SimpleNamespace(config=config, policy=types.SimpleNamespace(
      forward=lambda base: _toy_forward), model_cfg=None, mesh=mesh, optimizer=sgd,
      state_shardings=state_lib.shardings(params, sgd, 0, mesh))
  state = state_lib.create(params, sgd, 0)
  state, out = rl_loop.make_update(mdpo.MDPO(), run)(
      state, {k: jnp.asarray(v) for k, v in rows.items()})
  grads = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), _params(), state.params)
  return grads, float(out["loss"])


def _close(a, b):
  return all(np.allclose(x, y, rtol=1e-4, atol=1e-7)
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("normalisation", mdpo.LOSS_NORMALISATIONS)
def test_gradient_does_not_depend_on_the_micro_batch_split(normalisation):
  """16 rows as one micro-batch, 2 and 4: the same applied gradient and logged loss, which is the
  NumPy float64 loss of the whole batch."""
  rows = _rows(_config(normalisation, 16))
  assert ("token_norm" in rows) == (normalisation == "batch_tokens")
  counts = rows["masked"].sum(1)
  assert counts.min() < counts.max()   # the reductions differ only when |M| varies
  whole, loss = _update(_config(normalisation, 16), rows)
  assert max(float(np.abs(g).max()) for g in jax.tree.leaves(whole)) > 1e-3
  logp = token_logprobs(_toy_forward, _params(), rows["x_t"], rows["target"], temperature=0.7)
  want = _np_loss(np.asarray(logp), rows, normalisation=normalisation, clip_eps=0.2, beta=0.05)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  for micro in (8, 4):
    split, split_loss = _update(_config(normalisation, micro), rows)
    assert _close(split, whole), (normalisation, micro)
    np.testing.assert_allclose(split_loss, loss, rtol=1e-5)


def test_per_micro_batch_token_counts_would_depend_on_the_split():
  """The control: without `token_norm` each micro-batch divides by its own Σ|M| (the reference's
  per-call reduction), and the gradient changes with the split — what `token_norm` prevents."""
  rows = _rows(_config("batch_tokens", 16))
  del rows["token_norm"]
  whole, _ = _update(_config("batch_tokens", 16), rows)
  split, _ = _update(_config("batch_tokens", 4), rows)
  assert not _close(split, whole)


# ----------------------------------------------------------------------------- config

def _mdpo(**rl):
  c = base.get_config()
  c.trainer = "mdpo"
  for k, v in rl.items():
    c.rl[k] = v
  return c


def test_config_default_and_values():
  assert config_lib.parse(base.get_config()).rl.loss_normalisation == "example_mean"
  assert config_lib.parse(countdown_tiny_mdpo.get_config()).rl.loss_normalisation == "example_mean"
  assert config_lib.parse(_mdpo(loss_normalisation="batch_tokens")).rl.loss_normalisation == \
      "batch_tokens"


def test_config_bad_value_is_one_line():
  with pytest.raises(ValueError) as info:
    config_lib.parse(_mdpo(loss_normalisation="tokens"))
  assert str(info.value) == ("rl.loss_normalisation='tokens': allowed ('example_mean', "
                             "'batch_tokens')")


@pytest.mark.parametrize("trainer", ["diffu_grpo", "cogrpo"])
def test_config_batch_tokens_is_mdpo_only(trainer):
  c = _mdpo(loss_normalisation="batch_tokens")
  c.trainer = trainer
  if trainer == "cogrpo":
    c.rl.block_lengths = (c.rl.gen_length,)
  with pytest.raises(ValueError) as info:
    config_lib.parse(c)
  message = str(info.value)
  assert message.startswith(f"rl.loss_normalisation='batch_tokens': trainer='{trainer}' allows "
                            "'example_mean'") and "\n" not in message


def test_changing_it_on_resume_is_a_difference_and_old_runs_read_example_mean():
  saved = config_lib.parse(_mdpo())
  now = config_lib.parse(_mdpo(loss_normalisation="batch_tokens"))
  assert config_lib.resume_differences(saved, now) == [
      "rl.loss_normalisation: 'example_mean' → 'batch_tokens'"]
  old_run = saved.to_json()
  del old_run["rl"]["loss_normalisation"]   # a checkpoint written before the key existed
  assert config_lib.saved(old_run).rl.loss_normalisation == "example_mean"
