"""Held-out accuracy of an insertion language model, and how well its stop head knows the length.

For each setting (selection rule, temperature, planning or infilling) the ILM sampler runs on the
problems' prompts; each row's answer (the tokens after BOS) is decoded and scored by the task's
verifier. Besides accuracy (Wilson 95% interval) a row reports the stop head's calibration:
the generated answer's length against the task's SFT answer's (`length_match`: equal;
`length_error`: mean |generated − true| in tokens) and the model calls used.

Infilling (`ILMSetting.infill`): the answer starts as its first and last token (for star graphs
the source and the goal), only the first is a slot, so everything is inserted between them and
the last stays fixed: an infill of unknown length.

Result rows carry the keys `evaluation.markdown_table` prints (`remasking` = "ilm/<selection>",
`steps` = the most calls a row may make, one token per call), so the trainers' table serves.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from mdpo_jax.data import ilm_rows
from mdpo_jax.data.tokenizer import encode_text
from mdpo_jax.diffusion import insertion
from mdpo_jax.models import ilm
from mdpo_jax.sampling import ilm as ilm_sampler
from mdpo_jax.training.evaluation import wilson_interval


@dataclasses.dataclass(frozen=True)
class ILMSetting:
  selection: str = "joint"      # joint | factorised
  temperature: float = 0.0
  infill: bool = False          # start from the answer's first and last token

  @property
  def name(self) -> str:
    return (f"ilm/{self.selection}/T={self.temperature:g}" + ("/infill" if self.infill else ""))

  def sampler_config(self, max_new: int) -> ilm_sampler.ILMSamplerConfig:
    return ilm_sampler.ILMSamplerConfig(max_new=max_new, temperature=self.temperature,
                                        selection=self.selection)


def start_rows(model_cfg, tokenizer, task, problems: Sequence, *, prompt_len: int,
               answer_len: int, infill: bool = False):
  """(tokens, mask, slot_ok) [N, W] to sample from, and each problem's true answer length."""
  prompts = [encode_text(tokenizer, task.prompt(p)) for p in problems]
  answers = [encode_text(tokenizer, task.sft_answer(p)) for p in problems]
  given = [[a[0], a[-1]] for a in answers] if infill else None
  tokens, mask = ilm_rows.ilm_rows(prompts, given, prompt_len=prompt_len, answer_len=answer_len,
                                   cls_id=ilm.cls_token_id(model_cfg),
                                   bos_id=model_cfg.bos_token_id, pad_id=model_cfg.pad_token_id)
  bos = ilm_rows.bos_index(prompt_len)
  if infill:   # only the first given token is a slot: insertions land between the two
    slot_ok = np.zeros_like(mask, bool)
    slot_ok[:, bos + 1] = True
  else:
    slot_ok = np.asarray(insertion.answer_slots(jnp.asarray(mask), bos))
  return tokens, mask, slot_ok, np.asarray([len(a) for a in answers])


def _row(setting: ILMSetting, rewards, lengths, true_lengths, calls, max_new: int) -> dict:
  n = len(rewards)
  k = int((rewards >= 1).sum())
  lo, hi = wilson_interval(k, n)
  return {"setting": setting.name, "sampler": "ilm", "remasking": f"ilm/{setting.selection}",
          "infill": setting.infill, "steps": max_new + 1, "tokens_per_step": 1.0,
          "temperature": setting.temperature, "n": n, "accuracy": k / n, "ci_low": lo,
          "ci_high": hi, "mean_reward": float(np.mean(rewards)),
          "length_match": float(np.mean(lengths == true_lengths)),
          "length_error": float(np.mean(np.abs(lengths - true_lengths))),
          "mean_length": float(np.mean(lengths)), "mean_true_length": float(np.mean(true_lengths)),
          "nfe": float(np.mean(calls))}


def evaluate_ilm(model_cfg, params, tokenizer, task, problems: Sequence,
                 settings: Sequence[ILMSetting], *, prompt_len: int, answer_len: int,
                 batch_size: int, seed: int = 0, progress: bool = True) -> list[dict]:
  """One result row per setting (module docstring). Every sampler call has `batch_size` rows (a
  last partial batch repeats its last problem; the copies are dropped): one compilation."""
  n = len(problems)
  batch_size = min(batch_size, n)
  fwd, token_ok = ilm.forward_fn(model_cfg), ilm.insertable_tokens(model_cfg)
  stops = (model_cfg.eos_token_id, model_cfg.eot_token_id)
  rows = []
  for setting in settings:
    tokens, mask, slot_ok, true_lengths = start_rows(
        model_cfg, tokenizer, task, problems, prompt_len=prompt_len, answer_len=answer_len,
        infill=setting.infill)
    config = setting.sampler_config(answer_len - (2 if setting.infill else 0))
    rewards, lengths, calls = [], [], []
    for start in tqdm(range(0, n, batch_size), desc=f"eval {setting.name}", disable=not progress,
                      leave=False):
      real = min(batch_size, n - start)
      rows_B = np.minimum(np.arange(start, start + batch_size), start + real - 1)
      out_tokens, out_mask, used = ilm_sampler.generate(
          fwd, params, tokens[rows_B], mask[rows_B], slot_ok[rows_B], config,
          jax.random.key(seed + start), token_ok_V=token_ok)
      answers = ilm_rows.answers_of(np.asarray(out_tokens)[:real], np.asarray(out_mask)[:real],
                                    prompt_len)
      texts = tokenizer.decode_batch([[t for t in a if t not in stops] for a in answers],
                                     skip_special_tokens=True)
      rewards += [task.reward(text, p) for text, p in zip(texts, problems[start:start + real])]
      lengths += [len(a) for a in answers]
      calls += np.asarray(used)[:real].tolist()
    rows.append(_row(setting, np.asarray(rewards), np.asarray(lengths), true_lengths, calls,
                     config.max_new))
  return rows
