"""The first-hitting sampler, and the main sampler at one token per step with random remasking,
draw from the model's joint exactly: checked on an enumerable "model" whose joint is known.

The tabular model: G = 4 generated positions, V = 3 tokens (+ the mask, id 3), a fixed random
joint p(x) ∝ exp(θ[x] + c·#{i: x_i = s}) over the V^G = 81 outcomes, where s = (sum of the real
prompt tokens) mod V, so prompts (and left padding, which must be ignored) matter. Its forward
returns, at every position, the exact conditional p(x_i | unmasked generated tokens, prompt) of
that joint, computed from the table with jnp ops. A sampler that reveals one token at a time from
exact conditionals, in any order that does not peek at the values, samples the joint exactly; a
chi-square goodness-of-fit test over the 81 outcomes (one batched call, fixed seed) must accept,
and must reject a deliberately biased sampler (low-confidence remasking, whose
choice of position depends on the drawn token).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from mdpo_jax.sampling import fhs
from mdpo_jax.sampling.sampler import SamplerConfig, Trajectory, generate

G, V, MASK = 4, 3, 3
OUTCOMES_NxG = np.array(list(itertools.product(range(V), repeat=G)), np.int32)   # N = 81
ONEHOT_NxGV = np.eye(V, dtype=np.float32)[OUTCOMES_NxG].reshape(len(OUTCOMES_NxG), G * V)
COUNT_VxN = np.stack([(OUTCOMES_NxG == v).sum(1) for v in range(V)]).astype(np.float32)
SAMPLES = 30_000


def _params(seed=0, c=0.7):
  theta = np.random.default_rng(seed).normal(0.0, 1.0, len(OUTCOMES_NxG)).astype(np.float32)
  return {"theta": jnp.asarray(theta), "c": jnp.float32(c)}


def true_joint(params, s: int) -> np.ndarray:
  """p(x) over OUTCOMES_NxG, float64, for prompt class s."""
  logp = np.asarray(params["theta"], np.float64) + float(params["c"]) * COUNT_VxN[s]
  p = np.exp(logp - logp.max())
  return p / p.sum()


def tabular_forward(params, tokens_BxT, attention_mask=None, *, gen: int = G):
  """Logits [B, T, V + 1]: on the last `gen` positions the log of the exact conditional of each
  position's value given the unmasked generated tokens and the prompt; the mask id gets −inf."""
  attn_BxT = jnp.ones_like(tokens_BxT) if attention_mask is None else attention_mask
  prompt_BxP, gen_BxG = tokens_BxT[:, :-gen], tokens_BxT[:, -gen:]
  s_B = jnp.sum(jnp.where(attn_BxT[:, :-gen] == 1, prompt_BxP, 0), axis=1) % V
  logp_BxN = params["theta"][None] + params["c"] * jnp.asarray(COUNT_VxN)[s_B]
  known_BxGV = jax.nn.one_hot(gen_BxG, V).reshape(gen_BxG.shape[0], -1)   # the mask → zeros
  hits_BxN = known_BxGV @ jnp.asarray(ONEHOT_NxGV).T                      # exact small ints
  n_known_Bx1 = jnp.sum(gen_BxG != MASK, axis=1, keepdims=True).astype(jnp.float32)
  w_BxN = jnp.where(hits_BxN == n_known_Bx1, logp_BxN, -jnp.inf)           # consistent outcomes
  w_BxN = jnp.exp(w_BxN - jnp.max(w_BxN, axis=1, keepdims=True))
  cond_BxGxV = (w_BxN @ jnp.asarray(ONEHOT_NxGV)).reshape(-1, gen, V)
  logits_BxGxV = jnp.log(cond_BxGxV / jnp.sum(cond_BxGxV, axis=-1, keepdims=True))
  b, p = prompt_BxP.shape
  logits_BxTxV = jnp.concatenate([jnp.zeros((b, p, V), jnp.float32), logits_BxGxV], axis=1)
  return jnp.concatenate([logits_BxTxV, jnp.full((b, p + gen, 1), -jnp.inf)], axis=-1)


FWD = tabular_forward   # a module-level function: hashable, one compilation per config


def _config(**kw):
  base = dict(gen_length=G, block_length=G, steps=G, temperature=1.0, remasking="random",
              mask_id=MASK, eos_id=0, eot_id=1, vocab_size=V + 1)
  return SamplerConfig(**{**base, **kw})


def chi_square(samples_BxG, joint_N):
  """(statistic, dof, p-value) of the outcome counts against the joint."""
  idx = (np.asarray(samples_BxG) * V ** np.arange(G - 1, -1, -1)).sum(1)
  observed = np.bincount(idx, minlength=len(joint_N))
  expected = len(idx) * joint_N
  assert expected.min() > 5, expected.min()      # the chi-square approximation holds
  stat = float(((observed - expected) ** 2 / expected).sum())
  dof = len(joint_N) - 1
  return stat, dof, float(stats.chi2.sf(stat, dof))


PROMPT = np.array([[1, 2]], np.int32)        # prompt class s = 0


def _left_padded(n: int, pad_id: int = 2):
  """n rows cycling through the prompts [2, 1], [0] and [] (all of class 0), left-padded to 2
  with a real id: padding that were read would move the short rows to class 1 or 2."""
  kinds = ([2, 1], [0], [])
  tokens = np.full((n, 2), pad_id, np.int32)
  mask = np.zeros((n, 2), np.int32)
  for r in range(n):
    ids = kinds[r % 3]
    tokens[r, 2 - len(ids):], mask[r, 2 - len(ids):] = ids, 1
  return tokens, mask


PADDED, PADDED_MASK = _left_padded(SAMPLES)
CASES = {   # name: (sampler, config changes, exact?, left-padded with one key per row?)
    "fhs": (fhs.generate, {}, True, False),
    "fhs_blocks_of_2_left_padded": (fhs.generate, dict(block_length=2, steps=2), True, True),
    "llada_random_1_per_step": (generate, {}, True, False),
    "llada_low_confidence": (generate, dict(remasking="low_confidence"), False, False),
}


def _run_case(name: str):
  """(tokens [SAMPLES, 2 + G] as numpy, trajectory or None) of one case, from one batched call."""
  sample, changes, _, padded = CASES[name]
  with_traj = padded   # the record is checked on the semi-AR, left-padded case
  if padded:
    prompts, kw = PADDED, dict(prompt_mask=PADDED_MASK)
    rng = jax.random.split(jax.random.key(1), SAMPLES)
  else:
    prompts, kw, rng = np.repeat(PROMPT, SAMPLES, 0), {}, jax.random.key(1)
  out = sample(FWD, _params(), prompts, _config(**changes), rng, return_trajectory=with_traj,
               **kw)
  return (np.asarray(out[0]), out[1]) if with_traj else (np.asarray(out), None)


def _check_trajectory(traj, out, p, block):
  """One committed position per call and row, inside the generated part and the current block;
  each state follows from the previous record; event times in (0, 1], falling within a block."""
  committed, x, x0 = (np.asarray(a) for a in (traj.committed, traj.x, traj.x0))
  calls = committed.shape[0]
  assert calls == G and (committed.sum(-1) == 1).all()
  for t in range(calls):
    lo = p + (t // block) * block
    assert committed[t, :, lo:lo + block].sum(-1).min() == 1, t
    assert (x[t][committed[t]] == MASK).all()
    assert (x[t][:, :p] == out[:, :p]).all()
    after = np.where(committed[t], x0[t], x[t])
    np.testing.assert_array_equal(after, x[t + 1] if t + 1 < calls else out)
  time = np.asarray(traj.time, np.float64)
  assert ((time > 0) & (time <= 1)).all()
  for t in range(1, calls):
    if t % block:
      assert (time[t] < time[t - 1]).all(), t
  return time


@pytest.mark.parametrize("name", list(CASES))
def test_samples_follow_the_joint_exactly_and_bias_is_caught(name):
  _, changes, exact, padded = CASES[name]
  out, traj = _run_case(name)
  np.testing.assert_array_equal(out[:, :2], PADDED if padded else np.repeat(PROMPT, SAMPLES, 0))
  assert ((out[:, 2:] >= 0) & (out[:, 2:] < V)).all()
  stat, dof, p = chi_square(out[:, 2:], true_joint(_params(), 0))
  print(f"{name}: chi2={stat:.1f} dof={dof} p={p:.3g}")
  if exact:
    assert p > 1e-3, (name, stat, dof, p)
  else:
    assert p < 1e-12, (name, stat, dof, p)
  if traj is not None:
    time = _check_trajectory(traj, out, 2, changes.get("block_length", G))
    assert isinstance(traj.as_trajectory(), Trajectory)
    # Per block of n = 2: the first event time is the max of n uniform reveal times (CDF τ^n),
    # the second their min (CDF 1 − (1 − τ)^n).
    assert stats.kstest(time[0], lambda t: t ** 2).pvalue > 1e-3
    assert stats.kstest(time[1], lambda t: 1 - (1 - t) ** 2).pvalue > 1e-3
    assert stats.kstest(time[2], lambda t: t ** 2).pvalue > 1e-3


def test_the_tabular_forward_is_the_joints_conditional():
  params = _params()
  x = np.array([[0, 0, MASK, 2, MASK, MASK]], np.int32)   # prompt [0, 0]: s = 0; x_1 = 2 known
  probs = np.exp(np.asarray(jax.jit(FWD)(params, jnp.asarray(x)))[0, 2:, :V])
  joint = true_joint(params, 0)
  sel = OUTCOMES_NxG[:, 1] == 2
  for i in (0, 2, 3):
    want = np.array([joint[sel & (OUTCOMES_NxG[:, i] == v)].sum() for v in range(V)])
    np.testing.assert_allclose(probs[i], want / want.sum(), rtol=1e-5)


def test_left_padding_rows_equal_per_row_runs():
  """A row of the left-padded batch (one key per row) equals a run of that row alone, unpadded:
  the empty prompt (all padding in the batch); fields FHS ignores (remasking, steps) change
  nothing; raw key data works as well as typed keys."""
  out, traj = _run_case("fhs_blocks_of_2_left_padded")   # compiled already by the test above
  keys = jax.random.split(jax.random.key(1), SAMPLES)
  cfg = _config(block_length=2, steps=4, remasking="rcr")
  for r in (2, 5):
    one, one_traj = fhs.generate(FWD, _params(), np.zeros((1, 0), np.int32), cfg,
                                 jax.random.key_data(keys[r:r + 1]), return_trajectory=True)
    np.testing.assert_array_equal(np.asarray(one)[0], out[r, 2:])
    for field in ("x", "x0", "committed", "confidence"):   # confidences: matmul rounding
      np.testing.assert_allclose(np.asarray(getattr(one_traj, field))[:, 0],
                                 np.asarray(getattr(traj, field))[:, r, 2:], rtol=1e-6,
                                 err_msg=field)
    np.testing.assert_array_equal(np.asarray(one_traj.time)[:, 0], np.asarray(traj.time)[:, r])


def test_boundary_errors():
  params = _params()
  with pytest.raises(ValueError, match="one key per row"):
    fhs.generate(FWD, params, PROMPT, _config(), jax.random.split(jax.random.key(0), 2))
  with pytest.raises(ValueError, match="mask token 3 at row 0, position 1"):
    fhs.generate(FWD, params, np.array([[1, MASK]], np.int32), _config(), jax.random.key(0))
  with pytest.raises(TypeError, match="SamplerConfig"):
    fhs.generate(FWD, params, PROMPT, {"gen_length": G}, jax.random.key(0))


def _spy(calls, name):
  """A stand-in sampler recording (name, config): no model runs, nothing compiles."""
  def sample(fwd, params, prompts, sc, rng, *, prompt_mask=None, return_trajectory=False,
             return_nfe=False):
    calls.append((name, sc))
    out = np.concatenate([np.asarray(prompts), np.zeros((len(prompts), sc.gen_length), np.int32)],
                         axis=1)
    record = np.zeros((sc.steps, *out.shape), np.int32)
    traj = fhs.FHSTrajectory(record, record, record, record, np.ones((sc.steps, len(out))))
    result = (out,) + ((traj,) if return_trajectory else ()) + ((sc.steps,) if return_nfe else ())
    return result if len(result) > 1 else out
  return sample


def test_the_cli_and_evaluation_select_fhs(monkeypatch, tmp_path):
  from absl import flags

  from mdpo_jax import generate as generate_cli
  from mdpo_jax.data import tokenizer as tokenizer_lib
  from mdpo_jax.models import hf, llada
  from mdpo_jax.sampling import sampler
  from mdpo_jax.training import evaluation
  calls = []
  monkeypatch.setattr(fhs, "generate", _spy(calls, "fhs"))
  monkeypatch.setattr(sampler, "generate", _spy(calls, "llada"))
  monkeypatch.setattr(evaluation, "generate", _spy(calls, "llada"))
  cfg = llada.tiny(vocab_size=40)
  for name in (hf.CONFIG_FILE, hf.TOKENIZER_FILE):
    (tmp_path / name).write_text("{}")
  monkeypatch.setattr(generate_cli, "load", lambda *a: (cfg, None, None))
  monkeypatch.setattr(generate_cli, "encode_prompts",
                      lambda *a: (np.array([[1, 2]], np.int32), np.ones((1, 2), np.int32)))
  monkeypatch.setattr(generate_cli, "_print_answers", lambda *a: None)
  flags.FLAGS.unparse_flags()
  try:   # --steps 128 > --gen_length 8 is fine: FHS makes gen_length calls
    flags.FLAGS(["generate", f"--checkpoint={tmp_path}", "--prompt=hi", "--sampler=fhs",
                 "--gen_length=8", "--block_length=4", "--steps=128", "--temperature=1"])
    generate_cli.main(["generate"])
  finally:
    flags.FLAGS.unparse_flags()
  assert [(n, sc.steps, sc.block_length) for n, sc in calls] == [("fhs", 8, 4)]

  calls.clear()
  tok = tokenizer_lib.build_char_tokenizer("abcdefghijklmnopqrstuvwxyz 0123456789")
  prompts = np.array([[1, 2], [3, 4], [5, 6]], np.int32)
  rows = evaluation.evaluate(
      cfg, None, tok, prompts, np.ones_like(prompts), ["a", "b", "c"], lambda a, p: 1.0,
      [evaluation.Setting(4, "rcr"), evaluation.Setting(4, "random", 1.0, sampler="fhs")],
      gen_length=8, block_length=8, batch_size=2, progress=False)
  assert [(n, sc.steps) for n, sc in calls] == [("llada", 4)] * 2 + [("fhs", 8)] * 2
  assert [(r["sampler"], r["remasking"], r["steps"], r["tokens_per_step"]) for r in rows] == [
      ("llada", "rcr", 4, 2.0), ("fhs", "fhs", 8, 1.0)]
  assert rows[1]["setting"] == "fhs/T=1" and rows[1]["accuracy"] == 1.0
  ev = dict(sampler="fhs", gen_length=8, temperature=0.5, steps=(4,), remasking=("rcr",),
            cfg_scale=0.0)
  assert evaluation.settings_from_config(type("Ev", (), ev)) == [
      evaluation.Setting(8, "random", 0.5, "fhs")]
  with pytest.raises(ValueError, match="Setting.sampler='mask'"):
    evaluation.Setting(8, "random", sampler="mask")
