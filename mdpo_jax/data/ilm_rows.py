"""Rows of an insertion language model (`models/ilm.py`), built on the host with NumPy.

Every row has the same width `W = 1 + prompt_len + 1 + answer_len` and layout

    index 0            CLS
    1 .. prompt_len    the prompt, left-padded (pads have attention mask 0)
    prompt_len + 1     BOS  (= `bos_index(prompt_len)`)
    after BOS          the answer tokens (all of them for training; none, or the given ones,
                       to sample from), then pads up to W

so the answer can grow to `answer_len` tokens in place. Positions come from the attention mask,
so the padding inside the row changes nothing the model computes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def bos_index(prompt_len: int) -> int:
  """Where BOS sits in every row."""
  return prompt_len + 1


def width(prompt_len: int, answer_len: int) -> int:
  return prompt_len + answer_len + 2


def ilm_rows(prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]] | None, *,
             prompt_len: int, answer_len: int, cls_id: int, bos_id: int,
             pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens [N, W] int32, attention mask [N, W] int32) of (prompt ids, answer ids) pairs;
  `answers=None` gives rows with empty answers (what sampling starts from). A prompt longer than
  `prompt_len` or an answer longer than `answer_len` is an error naming the row (never cut)."""
  n = len(prompts)
  answers = [()] * n if answers is None else answers
  if len(answers) != n:
    raise ValueError(f"{n} prompts but {len(answers)} answers")
  w, bos = width(prompt_len, answer_len), bos_index(prompt_len)
  tokens_NxW = np.full((n, w), pad_id, np.int32)
  mask_NxW = np.zeros((n, w), np.int32)
  tokens_NxW[:, 0], tokens_NxW[:, bos] = cls_id, bos_id
  mask_NxW[:, 0] = mask_NxW[:, bos] = 1
  for i, (prompt, answer) in enumerate(zip(prompts, answers)):
    if len(prompt) > prompt_len:
      raise ValueError(f"row {i}: prompt of {len(prompt)} tokens; allowed: data.prompt_len ≥ "
                       f"{len(prompt)} (prompts are never truncated)")
    if len(answer) > answer_len:
      raise ValueError(f"row {i}: answer of {len(answer)} tokens; allowed: eval.gen_length ≥ "
                       f"{len(answer)} (answers are never truncated)")
    if len(prompt):
      tokens_NxW[i, bos - len(prompt):bos] = prompt
      mask_NxW[i, bos - len(prompt):bos] = 1
    tokens_NxW[i, bos + 1:bos + 1 + len(answer)] = answer
    mask_NxW[i, bos + 1:bos + 1 + len(answer)] = 1
  return tokens_NxW, mask_NxW


def answers_of(tokens_NxW: np.ndarray, mask_NxW: np.ndarray, prompt_len: int) -> list[list[int]]:
  """Each row's answer ids: the real tokens after BOS, in order."""
  bos = bos_index(prompt_len)
  return [[int(t) for t, m in zip(row[bos + 1:], keep[bos + 1:]) if m]
          for row, keep in zip(np.asarray(tokens_NxW), np.asarray(mask_NxW))]
