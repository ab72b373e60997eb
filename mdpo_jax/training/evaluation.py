"""Held-out accuracy for any sampler setting, plus intermediate-step statistics.

For each setting the sampler runs on the held-out prompts; final answers are decoded and scored
with the task verifier. With `trajectory_stats`, every intermediate full prediction x̂0_t is
scored too, which measures the training–inference divide MDPO targets: how often some
intermediate prediction is right while the final answer is wrong ("over-denoising").
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import numpy as np
from tqdm import tqdm

from mdpo_jax.models import llada
from mdpo_jax.sampling.sampler import SamplerConfig, generate


def decode_answers(tokenizer, ids_NxG: np.ndarray, stop_ids: Sequence[int]) -> list[str]:
  """Decode generated ids, cut at the first stop token (EOS/EOT: the rest is padding)."""
  rows = []
  for ids in np.asarray(ids_NxG).tolist():
    cut = len(ids)
    for stop in stop_ids:
      if stop in ids:
        cut = min(cut, ids.index(stop))
    rows.append(ids[:cut])
  return tokenizer.decode_batch(rows, skip_special_tokens=True)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
  """95% Wilson score interval of a binomial proportion."""
  if n == 0:
    return (0.0, 1.0)
  p = successes / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return (centre - half, centre + half)


@dataclasses.dataclass(frozen=True)
class Setting:
  steps: int
  remasking: str
  temperature: float = 0.0

  @property
  def name(self) -> str:
    return f"{self.remasking}/steps={self.steps}/T={self.temperature:g}"


def config_list(value) -> list[str]:
  """A config list given as a tuple, a single value, or comma-separated text (command line)."""
  values = value if isinstance(value, (tuple, list)) else (value,)
  return [part.strip() for v in values for part in str(v).split(",") if part.strip()]


def settings_from_config(ev) -> list[Setting]:
  """One setting per (eval.steps × eval.remasking) entry."""
  steps = config_list(ev.steps)
  bad = [s for s in steps if not s.isdigit() or int(s) < 1]
  if bad:
    raise ValueError(f"eval.steps={ev.steps!r}: entries must be positive integers, got {bad}")
  return [Setting(int(s), r, float(ev.temperature))
          for s in steps for r in config_list(ev.remasking)]


def validate_config(config) -> None:
  """Check `config.eval` before any training, so a bad setting fails in seconds, not after it."""
  ev = config.eval
  settings = settings_from_config(ev)
  for name in ("num_problems", "batch_size"):
    if int(ev[name]) < 1:
      raise ValueError(f"eval.{name}={ev[name]}: must be ≥ 1")
  for setting in settings:
    try:
      SamplerConfig(gen_length=int(ev.gen_length), block_length=int(ev.block_length),
                    steps=setting.steps, remasking=setting.remasking,
                    temperature=setting.temperature)
    except ValueError as e:
      raise ValueError(str(e).replace("SamplerConfig.", "eval.")) from e


def evaluate(model_cfg: llada.LLaDAConfig, params, tokenizer, prompts_NxP: np.ndarray,
             prompt_mask_NxP: np.ndarray, problems: Sequence, reward: Callable,
             settings: Sequence[Setting], *, gen_length: int, block_length: int,
             batch_size: int, seed: int = 0, trajectory_stats: bool = True,
             progress: bool = True) -> list[dict]:
  """One result row per setting: accuracy (+95% interval) and intermediate-step statistics.

  Every sampler call has `batch_size` rows (a last partial batch is padded by repeating its last
  prompt, and the copies are dropped), so one compilation serves any number of problems.
  """
  n = prompts_NxP.shape[0]
  if n != len(problems):
    raise ValueError(f"{n} prompts but {len(problems)} problems")
  batch_size = min(batch_size, n)
  fwd = llada.forward_fn(model_cfg)
  stops = (model_cfg.eos_token_id, model_cfg.eot_token_id)
  p = prompts_NxP.shape[1]
  rows = []
  for setting in settings:
    sc = SamplerConfig.for_model(model_cfg, gen_length=gen_length, block_length=block_length,
                                 steps=setting.steps, remasking=setting.remasking,
                                 temperature=setting.temperature)
    final, any_mid, wrong_but_mid = [], [], []
    batches = range(0, n, batch_size)
    for start in tqdm(batches, desc=f"eval {setting.name}", disable=not progress, leave=False):
      sl = slice(start, start + batch_size)
      real = len(problems[sl])
      rows_B = np.minimum(np.arange(start, start + batch_size), start + real - 1)
      out = generate(fwd, params, prompts_NxP[rows_B], sc, jax.random.key(seed + start),
                     prompt_mask=prompt_mask_NxP[rows_B],
                     return_trajectory=trajectory_stats)
      tokens, traj = out if trajectory_stats else (out, None)
      tokens = np.asarray(tokens)[:real]
      answers = decode_answers(tokenizer, tokens[:, p:], stops)
      r_final = np.asarray([reward(a, prob) for a, prob in zip(answers, problems[sl])])
      final.append(r_final)
      if trajectory_stats:
        x0_TxBxG = np.asarray(traj.x0)[:, :real, p:]
        r_mid = np.stack([[reward(a, prob) for a, prob in
                           zip(decode_answers(tokenizer, x0_TxBxG[t], stops), problems[sl])]
                          for t in range(x0_TxBxG.shape[0] - 1)]) if x0_TxBxG.shape[0] > 1 \
            else np.zeros((0, len(answers)))
        any_mid.append((r_mid > 0).any(0))
        wrong_but_mid.append((r_mid > 0).any(0) & (r_final == 0))
    correct = np.concatenate(final)
    k = int((correct > 0).sum())
    lo, hi = wilson_interval(k, n)
    row = {"setting": setting.name, "steps": setting.steps, "remasking": setting.remasking,
           "temperature": setting.temperature, "tokens_per_step": gen_length / setting.steps,
           "n": n, "accuracy": float(correct.mean()), "ci_low": lo, "ci_high": hi}
    if trajectory_stats:
      row["intermediate_correct"] = float(np.concatenate(any_mid).mean())
      row["over_denoised"] = float(np.concatenate(wrong_but_mid).mean())
    rows.append(row)
  return rows


def markdown_table(rows: Sequence[dict]) -> str:
  """Accuracy table; intermediate columns when present."""
  mid = "over_denoised" in rows[0] if rows else False
  head = "| remasking | steps | tokens/step | T | accuracy | 95% CI |"
  sep = "|---|---|---|---|---|---|"
  if mid:
    head += " some x̂0_t right | x̂0_t right, final wrong |"
    sep += "---|---|"
  lines = [head, sep]
  for r in rows:
    line = (f"| {r['remasking']} | {r['steps']} | {r['tokens_per_step']:g} | "
            f"{r['temperature']:g} | {r['accuracy']:.3f} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}] |")
    if mid:
      line += f" {r['intermediate_correct']:.3f} | {r['over_denoised']:.3f} |"
    lines.append(line)
  return "\n".join(lines)
