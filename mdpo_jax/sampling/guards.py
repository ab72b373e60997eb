"""Host-side checks of the sampler's inputs, run at the API boundary, never inside `jit`.

`sampler.generate` (and through it RL rollouts and evaluation) calls `check_prompts` on its
concrete inputs before the jitted scan: a token id outside the vocabulary (the embedding lookup
returns NaN and the answer comes out all zeros) or the mask token inside a prompt is rejected
with one line naming the id, its row and position. The check reads host copies of the (small)
prompt arrays and adds nothing to the compiled program.

Under a trace (`generate` called inside `jax.jit`, so its inputs are tracers) there is nothing
concrete to read: the check is skipped and `check_prompts` returns False; call it yourself on
the concrete arrays before tracing. Inside the scan no remasking kind ever writes a position
outside the generated part, so a mask token that reaches a prompt that way stays there (the
model sees it as a mask) and the answer is still decoded in full; out-of-vocabulary ids under a
trace are not caught.
"""

from __future__ import annotations

import jax
import numpy as np


def host_pieces(x) -> list[tuple[int, int, np.ndarray]] | None:
  """Host copies of the parts of 2-D `x` this process can read, as (row offset, column offset,
  block); None for a tracer. A multi-host array gives its addressable shards (each once)."""
  if isinstance(x, jax.core.Tracer):
    return None
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    pieces: dict[tuple[int, int], jax.Array] = {}
    for shard in x.addressable_shards:
      start = tuple(s.start or 0 for s in shard.index)
      pieces.setdefault((start[0], start[1]), shard.data)
    return [(r, c, np.asarray(block)) for (r, c), block in sorted(pieces.items())]
  return [(0, 0, np.asarray(x))]


def _mask_block(masks, r0: int, c0: int, shape) -> np.ndarray | None:
  """The prompt-mask values over the block at (r0, c0) of `shape`, or None if not readable."""
  if masks is None:
    return np.ones(shape, np.int32)
  for r, c, block in masks:
    if r <= r0 and c <= c0 and r0 + shape[0] <= r + block.shape[0] \
        and c0 + shape[1] <= c + block.shape[1]:
      return block[r0 - r:r0 - r + shape[0], c0 - c:c0 - c + shape[1]]
  return None


def _first(bad: np.ndarray, r0: int, c0: int) -> tuple[int, int]:
  r, c = np.argwhere(bad)[0]
  return int(r) + r0, int(c) + c0


def check_prompts(prompt_BxP, prompt_mask_BxP=None, *, mask_id: int,
                  vocab_size: int | None = None, name: str = "prompt_BxP",
                  hint: str = "") -> bool:
  """Reject bad token ids in concrete (left-padded) prompts; True if checked, False if traced.

  Every position, padding included, must hold an id in [0, vocab_size) (only ≥ 0 when
  `vocab_size` is None): the model embeds padding too, and one NaN embedding spoils the row.
  The mask token may not appear where `prompt_mask_BxP` is 1 (infilling a prompt is not
  supported); padding may hold any valid id. `prompt_mask_BxP` (default: all 1) holds 0 or 1.

  Raises:
    ValueError: one line, e.g. "prompt_BxP: id 130000 at row 0, position 5 is outside the
      vocabulary [0, 126464)"; `hint` (if any) is appended after "; ".
  """
  prompts = host_pieces(prompt_BxP)
  masks = None if prompt_mask_BxP is None else host_pieces(prompt_mask_BxP)
  if prompts is None or (prompt_mask_BxP is not None and masks is None):
    return False
  tail = f"; {hint}" if hint else ""
  for r0, c0, ids in prompts:
    mask = _mask_block(masks, r0, c0, ids.shape)
    if mask is not None:
      bad = (mask != 0) & (mask != 1)
      if bad.any():
        r, c = _first(bad, r0, c0)
        value = mask[r - r0, c - c0].item()
        raise ValueError(f"prompt_mask: value {value!r} at row {r}, position {c}: allowed 0 "
                         "(padding) or 1 (prompt token)")
    ids = ids.astype(np.int64)
    bad = (ids < 0) | (ids >= vocab_size) if vocab_size is not None else ids < 0
    if bad.any():
      r, c = _first(bad, r0, c0)
      allowed = f"[0, {vocab_size})" if vocab_size is not None else "[0, ∞)"
      raise ValueError(f"{name}: id {ids[r - r0, c - c0]} at row {r}, position {c} is outside "
                       f"the vocabulary {allowed}{tail}")
    if mask is not None:
      bad = (mask == 1) & (ids == mask_id)
      if bad.any():
        r, c = _first(bad, r0, c0)
        raise ValueError(f"{name}: the mask token {mask_id} at row {r}, position {c} is in a "
                         "prompt: allowed only in the generated part (infilling a prompt is not "
                         f"supported){tail}")
  return True
