"""Answer likelihood of a checkpoint: the Monte Carlo ELBO bound on held-out completions (SPEC §2).

Each problem's SFT completion — its answer and the EOS padding up to `data.seq_len`, exactly the
rows SFT trains on — is scored given its prompt with `losses.mc_negative_elbo` (stratified mask
counts: each draw uniform, the draws of a batch spread over 1..n, so lower variance than
independent draws at the same cost). The ELBO upper-bounds the completion's negative
log-likelihood, so exp(Σ nll / Σ tokens) upper-bounds its per-token perplexity. `cfg_scale` > 0
scores under unsupervised classifier-free guidance (the prompt masked for the unconditional
half), as SMDM evaluates conditional likelihood. For the autoregressive baseline
(`model.family="ar"`) the same rows get the exact negative log-likelihood, so MDM bounds and AR
values compare directly. `python -m mdpo_jax.evaluate --likelihood`.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import numpy as np

from mdpo_jax.data import pipeline
from mdpo_jax.diffusion import losses
from mdpo_jax.models import ar, families
from mdpo_jax.sampling import sampler


def parse_cfg_scales(texts: Sequence[str]) -> list[float]:
  """Guidance weights from their text (a CLI list), or a one-line ValueError naming the bad one."""
  scales = []
  for text in texts:
    try:
      w = float(text)
    except ValueError:
      w = math.nan
    if not (math.isfinite(w) and w >= 0):
      raise ValueError(f"--cfg_scales={','.join(texts)}: {text!r} is not a number ≥ 0")
    scales.append(w)
  return scales


def completion_rows(task, problems: Sequence, tokenizer, *, seq_len: int, eos_id: int):
  """(tokens [N, seq_len], prompt_mask [N, seq_len]) of the problems' SFT rows."""
  return pipeline.sft_rows([(task.prompt(p), task.sft_answer(p)) for p in problems], tokenizer,
                           seq_len=seq_len, eos_id=eos_id)


@functools.partial(jax.jit, static_argnames=("forward_fn", "mask_id", "num_draws", "cfg_scale"))
def _nll(params, tokens_BxL, prompt_mask_BxL, key, *, forward_fn, mask_id: int, num_draws: int,
         cfg_scale: float):
  return losses.mc_negative_elbo(forward_fn, params, tokens_BxL, prompt_mask_BxL.astype(bool),
                                 key, mask_id=mask_id, num_draws=num_draws, cfg_scale=cfg_scale)


@functools.partial(jax.jit, static_argnames=("forward_fn",))
def _exact_nll(params, tokens_BxL, prompt_mask_BxL, *, forward_fn):
  return ar.completion_nll(forward_fn, params, tokens_BxL, prompt_mask_BxL)


def completion_nll(model_cfg, params, tokens_NxL, prompt_mask_NxL, *, num_draws: int,
                   cfg_scale: float = 0.0, batch_size: int = 64, seed: int = 0) -> np.ndarray:
  """Per-row ELBO bound on −log p(completion | prompt), nats [N] — for the causal baseline the
  exact value (chain rule; `num_draws` unused). Batches of `batch_size` rows (the last one
  padded by repeating its last row, so one compilation serves all); batch j uses
  `fold_in(key(seed), j)`."""
  n = tokens_NxL.shape[0]
  batch_size = min(batch_size, n)
  fwd = sampler.static_callable(families.forward_fn(model_cfg))   # compares by value
  if model_cfg.causal and cfg_scale:
    raise ValueError(f"--cfg_scales={cfg_scale:g}: unsupervised guidance masks the prompt, which "
                     "the autoregressive baseline never saw; allowed: 0")
  out = []
  for j, start in enumerate(range(0, n, batch_size)):
    rows_B = np.minimum(np.arange(start, start + batch_size), n - 1)
    if model_cfg.causal:
      nll_B = _exact_nll(params, tokens_NxL[rows_B], prompt_mask_NxL[rows_B], forward_fn=fwd)
    else:
      nll_B = _nll(params, tokens_NxL[rows_B], prompt_mask_NxL[rows_B],
                   jax.random.fold_in(jax.random.key(seed), j), forward_fn=fwd,
                   mask_id=model_cfg.mask_token_id, num_draws=num_draws,
                   cfg_scale=float(cfg_scale))
    out.append(np.asarray(nll_B)[: min(batch_size, n - start)])
  return np.concatenate(out)


def summary_row(nll_N: np.ndarray, tokens_N: np.ndarray, *, cfg_scale: float,
                num_draws: int) -> dict:
  """Mean bound per completion (with a 95% normal interval over problems), nats per token and
  the perplexity bound exp(Σ nll / Σ tokens)."""
  n = len(nll_N)
  half = 1.96 * float(nll_N.std(ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
  per_token = float(nll_N.sum() / tokens_N.sum())
  return {"cfg_scale": float(cfg_scale), "draws": int(num_draws), "n": n,
          "nll": float(nll_N.mean()), "nll_ci_low": float(nll_N.mean()) - half,
          "nll_ci_high": float(nll_N.mean()) + half, "nats_per_token": per_token,
          "ppl_bound": math.exp(per_token)}


def evaluate(model, problems: Sequence, *, num_draws: int, cfg_scales: Sequence[float] = (0.0,),
             batch_size: int = 64) -> list[dict]:
  """One `summary_row` per guidance scale for a loaded checkpoint (`evaluation.LoadedModel`)."""
  cfg = model.model_cfg
  tokens, prompt_mask = completion_rows(model.task, problems, model.tokenizer,
                                        seq_len=model.config.data.seq_len, eos_id=cfg.eos_token_id)
  completion_tokens_N = (1 - prompt_mask).sum(-1)
  return [summary_row(completion_nll(cfg, model.params, tokens, prompt_mask, num_draws=num_draws,
                                     cfg_scale=w, batch_size=batch_size, seed=model.config.seed),
                      completion_tokens_N, cfg_scale=w, num_draws=num_draws)
          for w in cfg_scales]


def markdown_table(rows: Sequence[dict]) -> str:
  lines = ["| CFG w | draws | problems | ELBO bound, nats / completion (95% CI) | nats / token | "
           "perplexity bound |", "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['cfg_scale']:g} | {r['draws']} | {r['n']} | {r['nll']:.3f} "
                 f"[{r['nll_ci_low']:.3f}, {r['nll_ci_high']:.3f}] | {r['nats_per_token']:.4f} | "
                 f"{r['ppl_bound']:.4f} |")
  return "\n".join(lines)
