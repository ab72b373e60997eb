"""The insertion language model: model, deletion loss (against NumPy), sampler invariants, an
oracle that reconstructs sequences exactly, and a toy where the stop head must learn lengths."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from mdpo_jax.data import ilm_rows
from mdpo_jax.diffusion import insertion
from mdpo_jax.models import ilm, llada
from mdpo_jax.sampling import ilm as ilm_sampler

V = 16                      # tiny vocabulary: 0..11 ordinary, 12 BOS, 13 EOS/pad, 14 EOT, 15 CLS
CFG = llada.tiny(vocab_size=V, n_layers=1)
CLS, BOS, PAD = ilm.cls_token_id(CFG), CFG.bos_token_id, CFG.pad_token_id
P, A = 3, 5                 # prompt width, answer capacity
BOS_AT = ilm_rows.bos_index(P)


def _init(cfg, key):
  """ILM params drawn with NumPy in the model's shapes (norm weights 1, stop bias 0): compiling
  the NNX initialiser costs more than everything a test does with the params."""
  rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**30)))

  def leaf(path, a):
    name = jax.tree_util.keystr(path)
    if "norm" in name or "ln_f" in name:
      return jnp.ones(a.shape, a.dtype)
    return jnp.asarray(cfg.init_std * rng.standard_normal(a.shape), a.dtype)
  return jax.tree_util.tree_map_with_path(leaf, ilm.abstract_params(cfg))


def _rows(prompts, answers, prompt_len=P, answer_len=A):
  return ilm_rows.ilm_rows(prompts, answers, prompt_len=prompt_len, answer_len=answer_len,
                           cls_id=CLS, bos_id=BOS, pad_id=PAD)


# ---------------------------------------------------------------------------------- NumPy side


def _np_delete(tokens, mask, drop):
  """Row by row with lists: the shorter row, and counts[slot][token] of the deleted tokens."""
  w = tokens.shape[1]
  out_t, out_m = np.full_like(tokens, PAD), np.zeros_like(mask)
  counts = np.zeros((tokens.shape[0], w, V))
  for b in range(tokens.shape[0]):
    kept = []   # (token, real) of the positions that stay, in order
    for i in range(w):
      if drop[b, i]:
        counts[b, len(kept) - 1, tokens[b, i]] += 1   # after the last token that stays
      else:
        kept.append((tokens[b, i], mask[b, i]))
    for j, (t, m) in enumerate(kept):
      out_t[b, j], out_m[b, j] = (t if m else PAD), m
  return out_t, out_m, counts


def _np_loss(logits, stop_logit, counts, slot_ok, token_ok):
  total = 0.0
  for b in range(logits.shape[0]):
    allowed = slot_ok[b][:, None] & token_ok[None, :]
    z = logits[b].astype(np.float64)[allowed]
    logz = np.log(np.sum(np.exp(z - z.max()))) + z.max()
    k = counts[b].sum()
    ce = 0.0 if k == 0 else -np.sum(counts[b][allowed] / k * (z - logz))
    p = 1 / (1 + np.exp(-float(stop_logit[b])))
    y = 1.0 if k == 0 else 0.0
    total += ce - (y * np.log(p) + (1 - y) * np.log(1 - p))
  return total / logits.shape[0]


def _random_batch(rng, n=6):
  prompts = [list(rng.integers(0, 12, rng.integers(0, P + 1))) for _ in range(n)]
  answers = [list(rng.integers(0, 12, rng.integers(0, A + 1))) for _ in range(n)]
  return _rows(prompts, answers)


# ---------------------------------------------------------------------------------- the loss


def test_delete_and_loss_match_an_independent_numpy_computation():
  rng = np.random.default_rng(0)
  tokens, mask = _random_batch(rng)
  answer = np.asarray(insertion.answer_slots(jnp.asarray(mask), BOS_AT + 1))
  drop = answer & (rng.random(tokens.shape) < 0.5)
  got_t, got_m, got_c = jax.jit(functools.partial(insertion.delete, vocab_size=V, pad_id=PAD))(
      jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(drop))
  want_t, want_m, want_c = _np_delete(tokens, mask, drop)
  np.testing.assert_array_equal(got_t, want_t)
  np.testing.assert_array_equal(got_m, want_m)
  np.testing.assert_array_equal(got_c, want_c)
  assert got_c.sum() == drop.sum() and (got_c.sum(axis=(1, 2)) == drop.sum(1)).all()
  logits = rng.normal(size=(tokens.shape[0], tokens.shape[1], V)).astype(np.float32) * 3
  stop = rng.normal(size=tokens.shape[0]).astype(np.float32)
  slot_ok = np.asarray(insertion.answer_slots(got_m, BOS_AT))
  token_ok = np.asarray(ilm.insertable_tokens(CFG))
  loss, aux = jax.jit(insertion.insertion_loss)(jnp.asarray(logits), jnp.asarray(stop), got_c,
                                                jnp.asarray(slot_ok), jnp.asarray(token_ok))
  np.testing.assert_allclose(loss, _np_loss(logits, stop, want_c, slot_ok, token_ok), rtol=1e-5)
  assert float(aux["deleted"]) == pytest.approx(drop.sum() / len(drop))


def test_deletion_counts_are_uniform_and_only_answer_tokens_go():
  """k ~ U{0..n}; given k every answer position goes with probability k/n; CLS, the prompt,
  BOS and pads never do."""
  tokens, mask = _rows([[1, 2]] * 4000, [[3, 4, 5, 6]] * 4000)
  sample = jax.jit(insertion.sample_deletions, static_argnums=2)
  drop = np.asarray(sample(jax.random.key(0), jnp.asarray(mask), BOS_AT))
  assert not drop[:, :BOS_AT + 1].any() and not drop[:, BOS_AT + 5:].any()
  k = drop.sum(1)
  observed = np.bincount(k, minlength=5)
  assert stats.chisquare(observed).pvalue > 1e-3          # uniform over 0..4
  for size in (1, 2, 3):
    per_position = drop[k == size][:, BOS_AT + 1:BOS_AT + 5].mean(0)
    np.testing.assert_allclose(per_position, size / 4, atol=0.06)


# ---------------------------------------------------------------------------------- the model


def test_insertion_head_is_llada_and_padding_changes_nothing():
  params = _init(CFG, jax.random.key(1))
  tokens, mask = _rows([[1, 2], [3]], [[4, 5], [6, 7, 8]])
  forward = jax.jit(ilm.forward_fn(CFG))
  logits, stop = forward(params, jnp.asarray(tokens), attention_mask=jnp.asarray(mask))
  want = jax.jit(llada.forward_fn(CFG))(params, jnp.asarray(tokens),
                                        attention_mask=jnp.asarray(mask))
  np.testing.assert_allclose(logits, want, atol=1e-5)
  # A wider prompt area (more padding in the middle) gives the same real rows and stop logit.
  wide_t, wide_m = _rows([[1, 2], [3]], [[4, 5], [6, 7, 8]], prompt_len=P + 3)
  wide_logits, wide_stop = forward(params, jnp.asarray(wide_t), attention_mask=jnp.asarray(wide_m))
  for b in range(2):
    np.testing.assert_allclose(wide_logits[b][wide_m[b] == 1], logits[b][mask[b] == 1],
                               atol=1e-4)
  np.testing.assert_allclose(wide_stop, stop, atol=1e-5)


# ---------------------------------------------------------------------------------- the sampler


def _oracle(targets_BxA, lengths_B, order_BxA):
  """A model that proposes the true next insertion: row b's answer grows into targets[b] by
  inserting its tokens in the order `order[b]` (a permutation of target indices), and says
  "complete" exactly when all are in. `params` carries nothing; the target is closed over."""
  targets, lengths, order = map(jnp.asarray, (targets_BxA, lengths_B, order_BxA))
  rank = jnp.argsort(order, axis=1)   # rank[b, k] = when target index k is inserted

  def forward(params, tokens_BxW, attention_mask):
    del params
    n_cur = attention_mask[:, BOS_AT + 1:].sum(1)                    # answer tokens present
    nxt = jnp.take_along_axis(order, jnp.minimum(n_cur, A - 1)[:, None], 1)[:, 0]
    present = rank < n_cur[:, None]
    slot = BOS_AT + jnp.sum(present & (jnp.arange(A) < nxt[:, None]), 1)
    token = jnp.take_along_axis(targets, nxt[:, None], 1)[:, 0]
    w = tokens_BxW.shape[1]
    logits = (10.0 * jax.nn.one_hot(slot, w)[:, :, None] * jax.nn.one_hot(token, V)[:, None, :])
    return logits, jnp.where(n_cur >= lengths, 20.0, -20.0)
  return forward


@pytest.mark.parametrize("selection", ["joint", "factorised"])
def test_oracle_insertions_reconstruct_every_row_exactly(selection):
  rng = np.random.default_rng(3)
  lengths = np.asarray([5, 1, 3, 4, 2, 5])
  targets = rng.integers(0, 12, (6, A))
  order = np.stack([np.concatenate([rng.permutation(n), np.arange(n, A)]) for n in lengths])
  tokens, mask = _rows([[1]] * 6, None)
  slot_ok = insertion.answer_slots(jnp.asarray(mask), BOS_AT)
  config = ilm_sampler.ILMSamplerConfig(max_new=A, selection=selection)
  out, out_mask, calls, traj = ilm_sampler.generate(
      _oracle(targets, lengths, order), None, tokens, mask, slot_ok, config, jax.random.key(0),
      token_ok_V=ilm.insertable_tokens(CFG), return_trajectory=True)
  answers = ilm_rows.answers_of(out, out_mask, P)
  assert answers == [list(t[:n]) for t, n in zip(targets, lengths)]
  np.testing.assert_array_equal(calls, lengths + 1)       # n insertions, then the stop
  np.testing.assert_array_equal(np.asarray(traj.inserted).sum(0), lengths)
  # Each insertion went right after the tokens that precede it in the target (NumPy replay).
  for b, n in enumerate(lengths):
    want = [BOS_AT + sum(1 for j in order[b][:t] if j < order[b][t]) for t in range(n)]
    np.testing.assert_array_equal(np.asarray(traj.slot)[:n, b], want)


def test_one_token_per_call_and_constrained_tokens_are_never_touched():
  """A random ILM at T = 1 infilling between two given tokens: each call adds exactly one token
  right after an allowed slot (removing it gives the previous row), the prompt and CLS/BOS stay
  byte for byte, the given end token is never a slot and stays last."""
  params = _init(CFG, jax.random.key(2))
  tokens, mask = _rows([[1, 2, 3], [4]] * 4, [[5, 6]] * 8)
  slot_ok = np.zeros_like(mask, bool)
  slot_ok[:, BOS_AT + 1] = True                      # after the first given token only
  config = ilm_sampler.ILMSamplerConfig(max_new=A - 2, temperature=1.0, stop_threshold=0.9)
  _, _, calls, traj = ilm_sampler.generate(ilm.forward_fn(CFG), params, tokens, mask, slot_ok,
                                           config, jax.random.key(5),
                                           token_ok_V=ilm.insertable_tokens(CFG),
                                           return_trajectory=True)
  x = np.concatenate([tokens[None], np.asarray(traj.x)])
  inserted, slot = np.asarray(traj.inserted), np.asarray(traj.slot)
  assert inserted.any(0).all()                       # every row inserted something
  for t, b in itertools.product(range(int(np.max(calls))), range(8)):
    before, after = x[t, b], x[t + 1, b]
    if not inserted[t, b]:                           # stopped (or stopping): unchanged
      np.testing.assert_array_equal(after, before)
      continue
    s = slot[t, b]
    assert BOS_AT + 1 <= s and after[s + 1] == np.asarray(traj.token)[t, b]
    np.testing.assert_array_equal(np.delete(after, s + 1), before[:-1])
    np.testing.assert_array_equal(after[:BOS_AT + 2], tokens[b, :BOS_AT + 2])  # CLS..first
    answer = after[BOS_AT + 1:][after[BOS_AT + 1:] != PAD]
    assert answer[0] == 5 and answer[-1] == 6 and s < BOS_AT + len(answer)


def test_rows_stop_at_max_new_and_the_program_is_compiled_once():
  forward = _oracle(np.zeros((2, A), int), np.asarray([A, A]), np.tile(np.arange(A), (2, 1)))
  tokens, mask = _rows([[1], [2]], None)
  slot_ok = insertion.answer_slots(jnp.asarray(mask), BOS_AT)
  config = ilm_sampler.ILMSamplerConfig(max_new=3)
  run = functools.partial(ilm_sampler.generate, forward, None, tokens, mask, slot_ok, config,
                          token_ok_V=ilm.insertable_tokens(CFG))
  out, out_mask, calls = run(jax.random.key(0))
  assert [len(a) for a in ilm_rows.answers_of(out, out_mask, P)] == [3, 3]
  np.testing.assert_array_equal(calls, [4, 4])
  size = ilm_sampler._generate._cache_size()
  run(jax.random.key(1))
  assert ilm_sampler._generate._cache_size() == size


def test_sampler_config_errors_name_the_field():
  with pytest.raises(ValueError, match=r"^ILMSamplerConfig.selection='slot': allowed"):
    ilm_sampler.ILMSamplerConfig(max_new=2, selection="slot")
  with pytest.raises(ValueError, match=r"^ILMSamplerConfig.max_new=0: must be"):
    ilm_sampler.ILMSamplerConfig(max_new=0)


# ---------------------------------------------------------------------------------- a toy


def test_a_trained_toy_ilm_stops_at_the_right_length():
  """Prompt "k" (k = 1..4), answer k copies of token 7: after a short training run the greedy
  sampler must write exactly k tokens for every k — the stop head has learnt the length."""
  cfg = llada.tiny(vocab_size=V, n_layers=1, d_model=32, n_heads=2, n_kv_heads=2)
  ks = np.tile(np.arange(1, 5), 16)
  tokens, mask = _rows([[int(k)] for k in ks], [[7] * int(k) for k in ks], prompt_len=1)
  params = _init(cfg, jax.random.key(0))
  opt = optax.adam(3e-3)
  loss_fn = functools.partial(insertion.ilm_loss, ilm.forward_fn(cfg), bos_index=2,
                              token_ok_V=ilm.insertable_tokens(cfg), vocab_size=V, pad_id=PAD)

  @jax.jit
  def step(params, state, rng):
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, jnp.asarray(tokens), jnp.asarray(mask), rng)
    updates, state = opt.update(grads, state)
    return optax.apply_updates(params, updates), state, loss

  state = opt.init(params)
  # 120 steps: the greedy sampler writes every length right from step 50 on (checked every 25
  # steps up to 300, the loss flat at ~0.3 from step 75), so this leaves more than twice that.
  for i in range(120):
    params, state, loss = step(params, state, jax.random.key(i))
  start, start_mask = _rows([[k] for k in range(1, 5)], None, prompt_len=1)
  out, out_mask, calls = ilm_sampler.generate(
      ilm.forward_fn(cfg), params, start, start_mask,
      insertion.answer_slots(jnp.asarray(start_mask), 2), ilm_sampler.ILMSamplerConfig(max_new=A),
      jax.random.key(0), token_ok_V=ilm.insertable_tokens(cfg))
  assert ilm_rows.answers_of(out, out_mask, 1) == [[7] * k for k in range(1, 5)], float(loss)
  np.testing.assert_array_equal(calls, np.arange(1, 5) + 1)
