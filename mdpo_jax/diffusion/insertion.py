"""The insertion language model's training objective (ILM, Patel et al., 2025): pure functions.

Noising deletes tokens instead of masking them. For a row whose answer has n tokens:
1. `sample_deletions`: draw k uniformly from {0, …, n}, then a uniformly random subset of k answer
   tokens to delete (CLS, the prompt and BOS are never deleted);
2. `delete`: close the gaps — the kept tokens move left, the row keeps its width (pads at the
   end) — and attach each deleted token to its *gap*: the slot of the nearest kept token before
   it (BOS when none). `counts_BxLxV[b, i, v]` = how many deleted tokens v sit in the gap after
   slot i of the shorter row;
3. `insertion_loss`: the target distribution over (slot, token) pairs is
   q(i, v) = counts[i, v] / k, and the loss is the cross-entropy of q against the model's one
   softmax over every allowed pair (`slot_ok` × `token_ok`), plus the stop head's binary
   cross-entropy with label "nothing was deleted" (k = 0; then the insertion term is 0).

Rows are `data/ilm_rows.py`'s layout ([CLS][prompt][BOS] answer [pad]); `bos_index` (static)
is where BOS sits in every row. The slots a model may insert after are BOS and the tokens after
it (`answer_slots`); the prompt and CLS are context only. This is the reference code's objective
(xlm-core `ilm`: uniform number of drops, targets counted per gap and divided by the number of
drops, binary stop loss on CLS); the mean over rows is ours.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

NEG_INF = -1e30


def answer_slots(mask_BxL, bos_index: int):
  """Bool [B, L]: the slots insertion may use — real tokens at or after BOS."""
  return mask_BxL.astype(bool) & (jnp.arange(mask_BxL.shape[1]) >= bos_index)


def sample_deletions(rng: jax.Array, mask_BxL, bos_index: int):
  """Bool [B, L] of answer tokens to delete: a count uniform on {0..n} (n = the row's answer
  tokens), then a uniformly random subset of that size."""
  answer_BxL = answer_slots(mask_BxL, bos_index + 1)   # BOS itself is never deleted
  n_B = answer_BxL.sum(axis=1)
  count_rng, order_rng = jax.random.split(rng)
  k_B = jax.random.randint(count_rng, n_B.shape, 0, n_B + 1)
  scores_BxL = jnp.where(answer_BxL, jax.random.uniform(order_rng, answer_BxL.shape), 2.0)
  rank_BxL = jnp.argsort(jnp.argsort(scores_BxL, axis=1), axis=1)   # 0 = smallest score
  return answer_BxL & (rank_BxL < k_B[:, None])


def delete(tokens_BxL, mask_BxL, drop_BxL, *, vocab_size: int, pad_id: int):
  """(tokens, mask, counts_BxLxV) of the shorter rows: `drop_BxL` removed, gaps closed, each
  deleted token counted at the slot of the kept token before it."""
  width = tokens_BxL.shape[1]
  keep_BxL = ~drop_BxL   # pads stay too, so CLS, the prompt and BOS keep their indices
  index_L = jnp.arange(width)
  order_BxL = jnp.argsort(jnp.where(keep_BxL, index_L, width + index_L), axis=1)
  kept_mask_BxL = jnp.take_along_axis(mask_BxL.astype(bool) & keep_BxL, order_BxL, axis=1)
  kept_BxL = jnp.where(kept_mask_BxL, jnp.take_along_axis(tokens_BxL, order_BxL, axis=1), pad_id)
  slot_BxL = jnp.cumsum(keep_BxL, axis=1) - 1   # for a deleted token: its gap's slot
  at_slot_BxLxL = jax.nn.one_hot(slot_BxL, width, dtype=jnp.float32) * drop_BxL[..., None]
  token_BxLxV = jax.nn.one_hot(tokens_BxL, vocab_size, dtype=jnp.float32)
  counts_BxLxV = jnp.einsum("bks,bkv->bsv", at_slot_BxLxL, token_BxLxV)
  return kept_BxL, kept_mask_BxL.astype(mask_BxL.dtype), counts_BxLxV


def pair_log_probs(insert_logits_BxLxV, slot_ok_BxL, token_ok_V):
  """log p(i, v) over the allowed (slot, token) pairs (one softmax per row); NEG_INF elsewhere."""
  allowed_BxLxV = slot_ok_BxL[..., None] & token_ok_V[None, None, :]
  logits = jnp.where(allowed_BxLxV, insert_logits_BxLxV.astype(jnp.float32), NEG_INF)
  b = logits.shape[0]
  flat_logp = jax.nn.log_softmax(logits.reshape(b, -1), axis=-1)
  return jnp.where(allowed_BxLxV, flat_logp.reshape(logits.shape), NEG_INF)


def insertion_loss(insert_logits_BxLxV, stop_logit_B, counts_BxLxV, slot_ok_BxL, token_ok_V,
                   *, stop_weight: float = 1.0):
  """(loss, aux): mean over rows of CE(q, p) + stop_weight · BCE(stop_logit, k == 0), with
  q = counts / k (all zero when k = 0) and p the one softmax over allowed pairs."""
  k_B = counts_BxLxV.sum(axis=(1, 2))
  q_BxLxV = counts_BxLxV / jnp.maximum(k_B, 1.0)[:, None, None]
  logp_BxLxV = pair_log_probs(insert_logits_BxLxV, slot_ok_BxL, token_ok_V)
  ce_B = -jnp.sum(jnp.where(q_BxLxV > 0, q_BxLxV * logp_BxLxV, 0.0), axis=(1, 2))
  complete_B = (k_B == 0).astype(jnp.float32)
  stop_B = jnp.logaddexp(0.0, stop_logit_B) - complete_B * stop_logit_B   # BCE with logits
  loss = jnp.mean(ce_B + stop_weight * stop_B)
  aux = {"insert_ce": jnp.mean(ce_B), "stop_bce": jnp.mean(stop_B),
         "stop_accuracy": jnp.mean((stop_logit_B > 0) == (complete_B > 0)),
         "deleted": jnp.mean(k_B)}
  return loss, aux


def ilm_loss(forward: Callable, params, tokens_BxL, mask_BxL, rng: jax.Array, *,
             bos_index: int, token_ok_V, vocab_size: int, pad_id: int,
             stop_weight: float = 1.0):
  """The training loss of one batch of complete rows: delete (`sample_deletions`, `delete`),
  run `forward(params, tokens, attention_mask=...) -> (insert_logits, stop_logit)` on the
  shorter rows, score with `insertion_loss`."""
  drop_BxL = sample_deletions(rng, mask_BxL, bos_index)
  tokens, mask, counts = delete(tokens_BxL, mask_BxL, drop_BxL, vocab_size=vocab_size,
                                pad_id=pad_id)
  insert_logits, stop_logit = forward(params, tokens, attention_mask=mask)
  return insertion_loss(insert_logits, stop_logit, counts, answer_slots(mask, bos_index),
                        token_ok_V, stop_weight=stop_weight)
