"""Per-position scores of target tokens (log-probs, cross-entropies) without [B, L, V] logits.

A loss that needs one number per position — `log softmax(logits / T)[target]` — does not need
the float32 logits of every position at once. When the forward can hand back its hidden states
and LM head (`return_head=True`: `llada.forward`, `dream.forward`, LoRA's forward), the head is
applied to a chunk of positions at a time inside a `lax.map`, each chunk under `jax.checkpoint`:
the forward pass holds one chunk's logits, and the backward pass recomputes them chunk by chunk
instead of keeping them. For LLaDA-8B (V = 126,464) a micro-batch of 8 rows × 768 positions would
otherwise hold 3.1 GB of float32 logits per copy (log-softmax, its gradient, ...).

The score of a chunk is the caller's own function of its logits (`rl.common`'s log-probs,
`losses.token_ce`), so each position's value is computed exactly as from the full logits. A
`forward_fn` without a `return_head` parameter (test doubles, other models) gets the plain path:
`score(forward_fn(...), targets)`.

Precision note: the head's gradient is summed over chunks in the parameters' dtype (bfloat16 for
the 8B recipes), as gradients are already summed over micro-batches (`training/steps.py`).
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
Score = Callable[[Array, Array], Array]   # (logits_BxCxV, targets_BxC) -> [B, C] float32

CHUNK_BYTES = 2**28   # float32 logits per chunk: 256 MiB (8 rows × 66 positions at V = 126k)


def takes_head(forward_fn: Callable) -> bool:
  """Whether `forward_fn` (a function or a `functools.partial` of one) has a `return_head`
  parameter, the contract of `llada.forward`."""
  while isinstance(forward_fn, functools.partial):
    forward_fn = forward_fn.func
  try:
    return "return_head" in inspect.signature(forward_fn).parameters
  except (TypeError, ValueError):
    return False


def positions_per_chunk(batch: int, length: int, vocab: int,
                        chunk_bytes: int = CHUNK_BYTES) -> int:
  """Positions whose float32 logits for `batch` rows fit `chunk_bytes` (at least 1, at most
  `length`)."""
  return max(1, min(length, chunk_bytes // (4 * batch * vocab)))


def map_positions(hidden_BxLxD: Array, fn: Callable, chunk: int, *arrays_BxL: Array):
  """`fn(hidden_BxCxD, positions_C, *arrays_BxC)` on `chunk` positions at a time (a `lax.map`),
  its [B, C] outputs (any pytree of them) joined back to [B, L].

  The positions are padded up to a multiple of `chunk` (padding is computed and dropped);
  `positions_C` are the chunk's indices into the unpadded sequence (≥ L on padding)."""
  b, length, d = hidden_BxLxD.shape
  n = -(-length // chunk)
  pad = n * chunk - length
  if pad:
    hidden_BxLxD = jnp.pad(hidden_BxLxD, ((0, 0), (0, pad), (0, 0)))
    arrays_BxL = tuple(jnp.pad(a, ((0, 0), (0, pad))) for a in arrays_BxL)
  split = lambda a: a.reshape(b, n, chunk, *a.shape[2:]).swapaxes(0, 1)  # noqa: E731
  positions_NxC = jnp.arange(n * chunk).reshape(n, chunk)
  out = jax.lax.map(lambda xs: fn(*xs),
                    (split(hidden_BxLxD), positions_NxC, *map(split, arrays_BxL)))
  return jax.tree.map(lambda o: o.swapaxes(0, 1).reshape(b, n * chunk)[:, :length], out)


def chunked_scores(hidden_BxLxD: Array, head: Callable[[Array], Array], targets_BxL: Array,
                   score: Score, chunk: int) -> Array:
  """`score(head(hidden), targets)` computed `chunk` positions at a time: [B, L] float32."""

  @jax.checkpoint   # backward: recompute this chunk's logits rather than keep every chunk's
  def one(h_BxCxD, t_BxC):
    return score(head(h_BxCxD), t_BxC)

  return map_positions(hidden_BxLxD, lambda h, _, t: one(h, t), chunk, targets_BxL)


def per_position(forward_fn: Callable, params, tokens_BxL: Array, targets_BxL: Array,
                 score: Score, *, attention_mask: Array | None = None,
                 chunk_bytes: int | None = None) -> Array:
  """`score(logits, targets)` at every position of the model's output on `tokens_BxL`: chunked
  over positions when the forward takes `return_head` (see the module docstring), else on the
  whole logits. `chunk_bytes`: float32 logits per chunk (None: `CHUNK_BYTES`)."""
  if not takes_head(forward_fn):
    return score(forward_fn(params, tokens_BxL, attention_mask=attention_mask), targets_BxL)
  hidden_BxLxD, head = forward_fn(params, tokens_BxL, attention_mask=attention_mask,
                                  return_head=True)
  vocab = jax.eval_shape(head, hidden_BxLxD[:, :1]).shape[-1]
  b, length = targets_BxL.shape
  return chunked_scores(hidden_BxLxD, head, targets_BxL, score,
                        positions_per_chunk(b, length, vocab, chunk_bytes or CHUNK_BYTES))
