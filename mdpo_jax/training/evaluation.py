"""Held-out accuracy for any sampler setting, plus intermediate-step statistics.

For each setting the sampler runs on the held-out prompts; final answers are decoded and scored
with the task verifier. With `trajectory_stats`, every intermediate full prediction x̂0_t is
scored too, which measures the training–inference divide MDPO targets: how often some
intermediate prediction is right while the final answer is wrong ("over-denoising").

"Right" means full reward (1.0). For binary verifiers (Countdown, MATH, GSM8K) accuracy is the
mean reward; for dense ones (Sudoku: the fraction of empty cells filled right) `accuracy` is the
fraction solved outright and `mean_reward` the task's own score.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Sequence

import jax
import numpy as np
from tqdm import tqdm

from mdpo_jax import config as config_lib
from mdpo_jax import tasks
from mdpo_jax.data import pipeline
from mdpo_jax.data.tokenizer import decode_completions
from mdpo_jax.models import families
from mdpo_jax.plots import step_correctness
from mdpo_jax.sampling import ar as ar_sampling
from mdpo_jax.sampling import fhs, guards
from mdpo_jax.sampling.sampler import SamplerConfig, generate
from mdpo_jax.training import setup


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
  """sampler "llada": the scan sampler with `steps` and `remasking`; "fhs": the first-hitting
  sampler (one token per call, gen_length calls: `steps` and `remasking` do not apply)."""
  steps: int
  remasking: str
  temperature: float = 0.0
  sampler: str = "llada"
  cache: str = "none"        # the scan sampler's KV cache: none | prefix | dual
  threshold: float = 0.0     # confidence-threshold decoding (0 = off)
  cfg_scale: float = 0.0     # unsupervised classifier-free guidance weight w (0 = off)
  head_chunk: int = 0        # LM head over this many positions at a time (0 = all at once)

  def __post_init__(self):
    if self.sampler not in fhs.SAMPLERS:
      raise ValueError(f"Setting.sampler={self.sampler!r}: allowed one of {fhs.SAMPLERS}")

  @property
  def name(self) -> str:
    guided = f"/cfg={self.cfg_scale:g}" if self.cfg_scale else ""
    if self.sampler in ("fhs", "ar"):
      cached = "/cache=prefix" if self.cache == "prefix" and self.sampler == "ar" else ""
      return f"{self.sampler}/T={self.temperature:g}{cached}{guided}"
    fast = "" if self.cache == "none" else f"/cache={self.cache}"
    fast += f"/tau={self.threshold:g}" if self.threshold else ""
    return f"{self.remasking}/steps={self.steps}/T={self.temperature:g}{fast}{guided}"

  def sampler_config(self, model_cfg, *, gen_length: int, block_length: int) -> SamplerConfig:
    """The sampler this setting runs for `model_cfg` (FHS, AR: one call per token)."""
    if self.sampler == "ar":
      return SamplerConfig.for_model(model_cfg, gen_length=gen_length, block_length=gen_length,
                                     steps=gen_length, temperature=self.temperature,
                                     cache=self.cache)
    if self.sampler == "fhs":
      return SamplerConfig.for_model(model_cfg, gen_length=gen_length, block_length=block_length,
                                     steps=gen_length, remasking=self.remasking,
                                     temperature=self.temperature, cfg_scale=self.cfg_scale)
    return SamplerConfig.for_model(model_cfg, gen_length=gen_length, block_length=block_length,
                                   steps=self.steps, remasking=self.remasking,
                                   temperature=self.temperature, cache=self.cache,
                                   threshold=self.threshold or None, cfg_scale=self.cfg_scale,
                                   head_chunk=self.head_chunk)


def settings_from_config(ev) -> list[Setting]:
  """One setting per (eval.steps × eval.remasking) entry, at eval.temperature; with
  eval.sampler = "fhs" the one first-hitting setting instead; all at eval.cfg_scale."""
  w = float(ev.cfg_scale)
  if ev.sampler == "fhs":
    return [Setting(int(ev.gen_length), "random", float(ev.temperature), "fhs", cfg_scale=w)]
  if ev.sampler == "ar":
    return [Setting(int(ev.gen_length), "low_confidence", float(ev.temperature), "ar",
                    cache=ev.cache)]
  return [Setting(int(s), r, float(ev.temperature), cache=ev.cache,
                  threshold=float(ev.threshold), cfg_scale=w, head_chunk=int(ev.head_chunk))
          for s in ev.steps for r in ev.remasking]


def evaluate_task(config, model_cfg: families.ModelConfig, params, tokenizer, task,
                  problems: Sequence, settings: Sequence[Setting] | None = None, *,
                  progress: bool = True, per_problem: bool = False) -> list[dict]:
  """Accuracy of `params` on `problems` of `task` with the run's `eval` settings (or `settings`):
  the one evaluation path of the trainers, `python -m mdpo_jax.evaluate`, `reproduce` and the
  benchmarks (`per_problem` as in `evaluate`)."""
  ev = config.eval
  prompts, mask = pipeline.eval_prompts([task.prompt(p) for p in problems], tokenizer,
                                        prompt_len=config.data.prompt_len,
                                        pad_id=model_cfg.pad_token_id)
  return evaluate(model_cfg, params, tokenizer, prompts, mask, problems, task.reward,
                  settings_from_config(ev) if settings is None else settings,
                  gen_length=ev.gen_length, block_length=ev.block_length,
                  batch_size=ev.batch_size, seed=config.seed,
                  trajectory_stats=ev.trajectory_stats, progress=progress,
                  per_problem=per_problem)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A checkpoint loaded for evaluation (`load_checkpoint`), reusable across calls."""
  config: config_lib.RunConfig
  model_cfg: families.ModelConfig
  params: object
  tokenizer: object
  task: object

  def problems(self, split: str = "held_out", num_problems: int | None = None) -> list:
    """The first `num_problems` (default eval.num_problems) of `split` (held_out|validation)."""
    problems = self.task.validation() if split == "validation" else self.task.held_out()
    return problems[: self.config.eval.num_problems if num_problems is None else num_problems]


def evaluate_checkpoint(raw_config, *, checkpoint: str | None = None,
                        hf_checkpoint: str | None = None, split: str = "held_out",
                        num_problems: int | None = None,
                        settings: Sequence[Setting] | None = None,
                        model: LoadedModel | None = None,
                        step: int | None = None,
                        per_problem: bool = False) -> tuple[list[dict], int]:
  """(result rows, problems evaluated) for a run's checkpoint folder or a Hugging Face folder,
  on the task's `split` (held_out | validation), its first `num_problems` (default
  eval.num_problems), with `settings` (default: the config's eval settings). The evaluation of
  `python -m mdpo_jax.evaluate` and of `reproduce`. `model`: one already loaded by
  `load_checkpoint` (e.g. to draw its trajectories afterwards without loading it twice);
  `step`: that checkpoint step of the run (default: its latest); `per_problem` as in
  `evaluate`."""
  model = model or load_checkpoint(raw_config, checkpoint=checkpoint, hf_checkpoint=hf_checkpoint,
                                   step=step)
  problems = model.problems(split, num_problems)
  rows = evaluate_task(model.config, model.model_cfg, model.params, model.tokenizer, model.task,
                       problems, settings, per_problem=per_problem)
  return rows, len(problems)


def load_checkpoint(raw_config, *, checkpoint: str | None = None,
                    hf_checkpoint: str | None = None, step: int | None = None) -> LoadedModel:
  """A run's checkpoint folder or a Hugging Face folder, with the run config's tokenizer and
  task, as `evaluate_checkpoint` evaluates it."""
  raw = raw_config.copy_and_resolve_references()
  with raw.unlocked():
    raw.model.hf_checkpoint = hf_checkpoint or ""
    raw.model.init_checkpoint = checkpoint or ""
    # Evaluation trains nothing: a LoRA run's checkpoint is merged with its base on load (from
    # the config saved with it), so this config's model.lora_rank does not apply here.
    raw.model.lora_rank = 0
  config = config_lib.parse(raw)
  mesh = setup.make_mesh(config)
  tokenizer = setup.make_tokenizer(config)
  model_cfg, params = setup.load_model(config, tokenizer, mesh, jax.random.key(config.seed),
                                       step=step)
  return LoadedModel(config, model_cfg, params, tokenizer, tasks.build(config.task, config.seed))


def sample_fn(sampler_name: str, *, nfe: bool = False):
  """The generate function of a sampler name (`fhs.SAMPLERS`); with `nfe`, the scan sampler also
  returns its model calls (the one-call-per-token samplers make gen_length)."""
  if sampler_name == "fhs":
    return fhs.generate
  if sampler_name == "ar":
    return ar_sampling.generate
  return functools.partial(generate, return_nfe=True) if nfe else generate


def first_batch_trajectory(model: LoadedModel, problems: Sequence, setting: Setting):
  """(final tokens [B, P + gen_length], trajectory, P) of the first evaluation batch of
  `problems` under `setting`: the same prompts, key and batch as `evaluate` scores, so a picture
  of row i shows exactly how problem i's scored answer came about."""
  ev, cfg = model.config.eval, model.model_cfg
  problems = list(problems[: ev.batch_size])
  prompts, mask = pipeline.eval_prompts([model.task.prompt(p) for p in problems],
                                        model.tokenizer, prompt_len=model.config.data.prompt_len,
                                        pad_id=cfg.pad_token_id)
  sc = setting.sampler_config(cfg, gen_length=ev.gen_length, block_length=ev.block_length)
  tokens, traj = sample_fn(setting.sampler)(families.forward_fn(cfg), model.params, prompts, sc,
                        jax.random.key(model.config.seed), prompt_mask=mask,
                        return_trajectory=True)
  return np.asarray(tokens), traj, prompts.shape[1]


def check_sampler(setting: Setting, model_cfg) -> None:
  """The AR decoder runs causal models only, and only it does (a diffusion sampler on a causal
  model, or left-to-right decoding of a bidirectional one, is a one-line error)."""
  causal = bool(getattr(model_cfg, "causal", False))
  if causal != (setting.sampler == "ar"):
    kind = "causal (the AR baseline)" if causal else "bidirectional"
    allowed = "'ar'" if causal else "'llada' or 'fhs'"
    raise ValueError(f"sampler={setting.sampler!r}: the model is {kind}; allowed: {allowed}")


def evaluate(model_cfg: families.ModelConfig, params, tokenizer, prompts_NxP: np.ndarray,
             prompt_mask_NxP: np.ndarray, problems: Sequence, reward: Callable,
             settings: Sequence[Setting], *, gen_length: int, block_length: int,
             batch_size: int, seed: int = 0, trajectory_stats: bool = True,
             progress: bool = True, per_problem: bool = False) -> list[dict]:
  """One result row per setting: accuracy (+95% interval) and intermediate-step statistics;
  with `per_problem`, also `solved` (one bool per problem, for paired comparisons).

  Every sampler call has `batch_size` rows (a last partial batch is padded by repeating its last
  prompt, and the copies are dropped), so one compilation serves any number of problems.
  """
  n = prompts_NxP.shape[0]
  if n != len(problems):
    raise ValueError(f"{n} prompts but {len(problems)} problems")
  # Once over all prompts, so a bad id is reported by its problem's index (`generate` checks
  # each padded batch again, at host cost only).
  guards.check_prompts(prompts_NxP, prompt_mask_NxP, mask_id=model_cfg.mask_token_id,
                       vocab_size=model_cfg.vocab_size, name="eval prompts",
                       hint="row = the problem's index in the evaluated split")
  batch_size = min(batch_size, n)
  fwd = families.forward_fn(model_cfg)
  stops = (model_cfg.eos_token_id, model_cfg.eot_token_id)
  p = prompts_NxP.shape[1]
  rows, keep_stats = [], trajectory_stats
  for setting in settings:
    check_sampler(setting, model_cfg)
    first_hitting = setting.sampler in ("fhs", "ar")   # one call per generated token
    trajectory_stats = keep_stats and setting.sampler != "ar"   # AR's x̂0_t: its prefix only
    sc = setting.sampler_config(model_cfg, gen_length=gen_length, block_length=block_length)
    sample = sample_fn(setting.sampler, nfe=True)
    final, any_mid, wrong_but_mid, mid_right, calls = [], [], [], [], []
    batches = range(0, n, batch_size)
    for start in tqdm(batches, desc=f"eval {setting.name}", disable=not progress, leave=False):
      sl = slice(start, start + batch_size)
      real = len(problems[sl])
      rows_B = np.minimum(np.arange(start, start + batch_size), start + real - 1)
      out = sample(fwd, params, prompts_NxP[rows_B], sc, jax.random.key(seed + start),
                   prompt_mask=prompt_mask_NxP[rows_B], return_trajectory=trajectory_stats)
      if first_hitting:   # one call per generated token
        out = (out if trajectory_stats else (out,)) + (sc.gen_length,)
      tokens, traj, nfe = out if trajectory_stats else (out[0], None, out[1])
      calls.append(int(nfe))
      tokens = np.asarray(tokens)[:real]
      answers = decode_completions(tokenizer, tokens[:, p:], stops)
      r_final = np.asarray([reward(a, prob) for a, prob in zip(answers, problems[sl])])
      final.append(r_final)
      if trajectory_stats:
        x0_TxBxG = np.asarray(traj.x0)[:, :real, p:]
        r_mid = np.stack([[reward(a, prob) for a, prob in
                           zip(decode_completions(tokenizer, x0_TxBxG[t], stops), problems[sl])]
                          for t in range(x0_TxBxG.shape[0] - 1)]) if x0_TxBxG.shape[0] > 1 \
            else np.zeros((0, len(answers)))
        any_mid.append((r_mid >= 1).any(0))
        mid_right.append(r_mid >= 1)   # [T-1, B]: the per-step curves of `step_curves`
        wrong_but_mid.append((r_mid >= 1).any(0) & (r_final < 1))
    rewards = np.concatenate(final)
    k = int((rewards >= 1).sum())   # solved outright (binary tasks: reward 1)
    lo, hi = wilson_interval(k, n)
    row = {"setting": setting.name, "steps": sc.steps, "sampler": setting.sampler,
           "remasking": setting.sampler if first_hitting else setting.remasking,
           "temperature": setting.temperature, "tokens_per_step": gen_length / sc.steps,
           "n": n, "accuracy": k / n, "ci_low": lo, "ci_high": hi,
           "mean_reward": float(rewards.mean()), "cache": setting.cache,
           "threshold": setting.threshold, "nfe": float(np.mean(calls)),
           "cfg_scale": setting.cfg_scale}
    if trajectory_stats:
      row["intermediate_correct"] = float(np.concatenate(any_mid).mean())
      row["over_denoised"] = float(np.concatenate(wrong_but_mid).mean())
      right_TxN = np.concatenate([np.concatenate(mid_right, 1), (rewards >= 1)[None]])
      row["step_curves"] = step_correctness(right_TxN.T, rewards >= 1).to_json()
    if per_problem:
      row["solved"] = (rewards >= 1).tolist()
    rows.append(row)
  return rows


def markdown_table(rows: Sequence[dict]) -> str:
  """Accuracy table; intermediate columns when present, the CFG weight when any row is guided."""
  mid = "over_denoised" in rows[0] if rows else False
  guided = any(r.get("cfg_scale") for r in rows)
  fast = any(r.get("cache", "none") != "none" or r.get("threshold") for r in rows)
  head = "| remasking | steps | tokens/step | T | accuracy | 95% CI | mean reward |"
  sep = "|---|---|---|---|---|---|---|"
  if fast:   # fast-sampling settings: which, and the model calls they made per batch
    head = "| remasking | cache | τ | model calls |" + head.split("| remasking |", 1)[1]
    sep += "---|---|---|"
  if mid:
    head += " some x̂0_t right | x̂0_t right, final wrong |"
    sep += "---|---|"
  if guided:
    head, sep = head + " CFG w |", sep + "---|"
  lines = [head, sep]
  for r in rows:
    fast_cols = (f" {r.get('cache', 'none')} | {r.get('threshold') or '-'} | "
                 f"{r.get('nfe', r['steps']):g} |" if fast else "")
    line = (f"| {r['remasking']} |{fast_cols} {r['steps']} | {r['tokens_per_step']:g} | "
            f"{r['temperature']:g} | {r['accuracy']:.3f} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | "
            f"{r['mean_reward']:.3f} |")
    if mid:
      line += f" {r['intermediate_correct']:.3f} | {r['over_denoised']:.3f} |"
    if guided:
      line += f" {r.get('cfg_scale', 0.0):g} |"
    lines.append(line)
  return "\n".join(lines)
