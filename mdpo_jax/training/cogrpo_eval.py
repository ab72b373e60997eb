"""Held-out accuracy of a Co-GRPO *learned* schedule (`python -m mdpo_jax.cogrpo_compare`).

A trained schedule policy φ (rl/schedule_policy.py) is evaluated with its deterministic schedule,
φ's mode (`schedule_policy.mode` → `knob_values`: per step the tokens committed, the sampling
temperature, the ranking temperature), sampled by the scheduled scan sampler
(`sampling/scheduled.py`) with the run's θ. Two decodings:

* `argmax` ("greedy"): the learned tokens-per-step only; candidates at T = `ARGMAX_TEMPERATURE`
  (1e-6: the argmax of the logits unless two logits are within ~1e-5, where the plain sampler's
  T = 0 takes the first index) and the plain confidence ranking (τ → 0, LLaDA's rule). With the
  hand schedule's φ this is the plain sampler's greedy decoding (tests/test_cogrpo_compare.py).
* `as_learned`: the policy's own mode, every knob as learned (its T and τ, so still sampled) —
  what a user of the learned schedule runs.

The batching, keys, prompts, decoding and scoring are those of `evaluation.evaluate` (same
prompts per batch, `jax.random.key(seed + start)`, padding of a last partial batch by repeating
its last prompt, `decode_completions` cut at EOS/EOT, the task's reward; accuracy = the share
with full reward, Wilson 95% interval), so its rows sit in one table with the plain sampler's.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from mdpo_jax.data import pipeline
from mdpo_jax.data.tokenizer import decode_completions
from mdpo_jax.models import families
from mdpo_jax.rl import schedule_policy as sp
from mdpo_jax.sampling import guards, scheduled
from mdpo_jax.training import evaluation

ARGMAX_TEMPERATURE = 1e-6
DECODINGS = ("argmax", "as_learned")


def schedule_arrays(spec: sp.ScheduleSpec, phi, batch: int, decoding: str) -> scheduled.Schedule:
  """φ's deterministic schedule for `batch` rows ([B, S] arrays) under `decoding`."""
  if decoding not in DECODINGS:
    raise ValueError(f"decoding={decoding!r}: allowed {DECODINGS}")
  knobs = sp.knob_values(spec, sp.mode(phi, batch))
  if decoding == "argmax":
    return scheduled.Schedule(knobs["counts"],
                              jnp.full_like(knobs["temperature"], ARGMAX_TEMPERATURE),
                              None, knobs["cfg_scale"])
  return scheduled.Schedule(knobs["counts"], knobs["temperature"], knobs["rank_temperature"],
                            knobs["cfg_scale"])


def describe_schedule(spec: sp.ScheduleSpec, phi, decoding: str) -> dict:
  """The schedule's knobs per step as plain numbers (counts, temperature, ranking temperature,
  CFG weight; None where off)."""
  s = jax.device_get(schedule_arrays(spec, phi, 1, decoding))
  def host(a):
    return None if a is None else [round(float(v), 6) for v in np.asarray(a)[0]]
  return {"counts": [int(v) for v in np.asarray(s.counts)[0]],
          "temperature": host(s.temperature), "rank_temperature": host(s.rank_temperature),
          "cfg_scale": host(s.cfg_scale)}


def _check_spec(spec: sp.ScheduleSpec, ev) -> None:
  if (spec.gen_length, spec.block_length) != (ev.gen_length, ev.block_length):
    raise ValueError(f"eval.gen_length={ev.gen_length}, eval.block_length={ev.block_length}: "
                     f"a learned schedule of rl.gen_length={spec.gen_length} in blocks of "
                     f"{spec.block_length} needs the same")


def _sample_scores(config, model_cfg, params, tokenizer, task, problems, spec, phi,
                   decoding: str, progress: bool) -> np.ndarray:
  """The reward of every problem's completion under the schedule (evaluate's batching)."""
  ev = config.eval
  prompts, pmask = pipeline.eval_prompts([task.prompt(p) for p in problems], tokenizer,
                                         prompt_len=config.data.prompt_len,
                                         pad_id=model_cfg.pad_token_id)
  guards.check_prompts(prompts, pmask, mask_id=model_cfg.mask_token_id,
                       vocab_size=model_cfg.vocab_size, name="eval prompts",
                       hint="row = the problem's index in the evaluated split")
  n, p = prompts.shape
  batch_size = min(ev.batch_size, n)
  sc = evaluation.Setting(spec.steps, "low_confidence").sampler_config(
      model_cfg, gen_length=ev.gen_length, block_length=ev.block_length)
  schedule = schedule_arrays(spec, phi, batch_size, decoding)
  fwd = families.forward_fn(model_cfg)
  stops = (model_cfg.eos_token_id, model_cfg.eot_token_id)
  rewards = []
  for start in tqdm(range(0, n, batch_size), desc=f"eval learned/{decoding}",
                    disable=not progress, leave=False):
    real = len(problems[start:start + batch_size])
    rows_B = np.minimum(np.arange(start, start + batch_size), start + real - 1)
    tokens, _, _ = scheduled.generate(fwd, params, prompts[rows_B], sc,
                                      jax.random.key(config.seed + start), schedule,
                                      prompt_mask=pmask[rows_B])
    answers = decode_completions(tokenizer, np.asarray(tokens)[:real, p:], stops)
    rewards.append([task.reward(a, prob) for a, prob in
                    zip(answers, problems[start:start + real])])
  return np.concatenate([np.asarray(r, np.float64) for r in rewards])


def evaluate_schedule(config, model_cfg, params, tokenizer, task, problems: Sequence,
                      spec: sp.ScheduleSpec, phi, decoding: str, *,
                      progress: bool = True) -> dict:
  """One result row (the keys of `evaluation.evaluate`'s, plus the schedule) for θ = `params`
  sampled with φ's deterministic schedule under `decoding` on `problems` of `task`."""
  _check_spec(spec, config.eval)
  if not problems:
    raise ValueError("no problems to evaluate (eval_problems must be ≥ 1)")
  rewards = _sample_scores(config, model_cfg, params, tokenizer, task, list(problems), spec,
                           phi, decoding, progress)
  n, k = len(rewards), int((rewards >= 1).sum())
  lo, hi = evaluation.wilson_interval(k, n)
  knobs = describe_schedule(spec, phi, decoding)
  temps = knobs["temperature"]
  return {"setting": f"learned/{decoding}/steps={spec.steps}", "steps": spec.steps,
          "sampler": "scheduled", "remasking": "low_confidence", "decoding": decoding,
          "temperature": float(np.mean(temps)), "tokens_per_step": spec.gen_length / spec.steps,
          "n": n, "accuracy": k / n, "ci_low": lo, "ci_high": hi,
          "mean_reward": float(rewards.mean()), "nfe": float(spec.steps), "schedule": knobs}
