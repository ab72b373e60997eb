"""The FHS precision finding, reproduced: float32 Gumbel noise lowers the effective temperature of
a masked-diffusion ancestral sampler more and more as the number of steps grows.

  python benchmarks/precision.py [--out docs/precision.png]    # 1.5-2.5 min on a shared 2-core CPU

Zheng et al. (2024), "Masked diffusion models are secretly time-agnostic masked models and exploit
inaccurate categorical sampling", found that MDLM's generative perplexity kept improving with more
sampling steps only because float32 Gumbel noise truncates its tail (u ≤ 1 - 2^-23 in JAX, so
g ≤ 15.94): tokens far below the leader are never drawn, which acts as a lower temperature, and
token entropy / diversity fall as steps grow. This benchmark reproduces that mechanism in isolation.

The setting
-----------
* "Model": every position has the same fixed distribution p over V = 50257 tokens (GPT-2's
  vocabulary), Zipf-like, p(rank r) ∝ 1/r (unigram text statistics). No network, so any change in
  the generated tokens' statistics is caused by the sampler alone. For speed the ranks are grouped
  into 58 geometric "levels" whose tokens share one logit (the level's mean probability, so the
  level masses are exactly Zipf's): a staircase Zipf with log p from -2.4 (rank 1) down to -13.3
  and exact entropy H(p) = 7.567 nats.
* Sampler: the MDLM / ancestral update on a uniform time grid with S steps. A position still masked
  with j steps to go (t = j/S → s = (j-1)/S) draws ONE categorical over V + 1 outcomes:
  token v with probability p(v)·(t-s)/t = p(v)/j, stay masked with probability (j-1)/j; it is drawn
  with the Gumbel-max trick on these log-probabilities, at every step, until the position is
  unmasked (at j = 1 the mask has probability 0). Exact sampling gives every position the law p for
  any S, so every statistic below must be flat in S.
* Why S matters: token v wins the race against the mask (the leader, log-prob ≈ 0) only if its
  noise beats the mask's by gap = log j - log p(v). The naive noise cannot exceed 15.94 and its top
  values are discrete (15.94 - log k, k = 1, 2, ...), so it realises only 93 / 82 / 56 / 17 / 0.3 %
  of the exact winning probability at gaps of 14 / 15 / 16 / 17 / 18 nats (and none beyond 18.7).
  A position unmasks at a j spread uniformly over 1..S, so with S = 16 only the deepest tail
  (log p < -11, at j near 16) is touched, while with S = 4096 the typical j ≈ 2000 puts every
  token with log p below about -6.5 (rank > ~50, 60 % of the mass) in the lossy range and the ranks
  beyond ~6000 (19 % of the mass) out of reach. Those tokens are not lost: the position stays
  masked and is redrawn later, at a smaller j, but by then the draw that unmasks it favours the
  head -- a lower effective temperature that grows with S, as in the paper.

Samplers (all see the same logits)
----------------------------------
* naive-f32: ``argmax(logits + g)`` with ``g = -log(-log u)`` and the float32 ``u`` of
  ``jax.random.uniform`` (categorical.naive_gumbel_noise; 2^23 values, g ≤ 15.94).
* ours: ``sample_categorical``'s rule, ``argmax((logits - max) + g)`` with the two-word float32
  noise of categorical.gumbel_noise (g up to 45).
* f64: ``argmax(logits + g)`` in float64 with a float64 uniform (g ≤ 36.7) -- LLaDA's choice.

Exact reduction (what makes V = 50257 × 4096 steps affordable)
---------------------------------------------------------------
Each noise is a non-decreasing function of its random word (23 bits for naive, 64 for ours, a
float64 uniform for f64). Within a level all n tokens share one logit, so the level's best score
is ``logit + noise(max of n words)``, and the winning token inside the level is uniform among its
n tokens. The maximum of n i.i.d. uniform words is drawn exactly by inversion,
``W^(1/n)`` with W uniform, computed in float64 from ``E = -log W`` (``1 - W^(1/n) =
-expm1(-E/n)``, full relative precision near 1), then turned into the word and passed through the
library's own noise maps (``_naive_gumbel_from_uniform``, ``_gumbel_from_words``). So each sampler's
law on this vocabulary is reproduced exactly (up to the float64 resolution of E, 2^-52: ours is
followed to g ≈ 36, far beyond the largest gap here, log 4096 + 13.3 ≈ 22 nats), with 58 + 1
entries per race instead of 50258. ``tests/test_precision_benchmark.py`` checks the inversion
against brute force.
All three samplers use the same E (common random numbers: paired comparisons), and one chain of
races from j = S_max down to 1 serves every S, since the race at j depends on j alone: an S-step
run is the chain from j = S, and its token is the first success at j ≤ S.

Metrics (N positions per cell, grouped into sequences of L = 1024 as in the paper)
------------------------------------------------------------------------------------
* entropy: mean of -log p(x) over generated tokens: an unbiased estimate of the cross-entropy
  of the generated distribution to p, equal to H(p) for exact sampling (it is also the log of the
  generative perplexity measured by the true model). ± is one standard error.
* T_eff: the temperature T at which softmax(log p / T) has that same mean -log p.
* unique: distinct tokens per sequence of 1024, divided by 1024 (a diversity measure);
  its exact expectation is shown in the "exact" row.
* seq-H: the entropy of each sequence's empirical token histogram (the per-sample entropy used
  to report diversity in the FHS / MDLM line of work); "exact" = i.i.d. numpy draws from p.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mdpo_jax.sampling.categorical import (  # noqa: E402
    _gumbel_from_words, _naive_gumbel_from_uniform)

SAMPLERS = ("naive-f32", "ours", "f64")
GPT2_VOCAB = 50257


class Vocab:
  """A staircase Zipf distribution over `vocab` tokens: ranks grouped in geometric levels."""

  def __init__(self, vocab: int = GPT2_VOCAB, exponent: float = 1.0, levels: int = 64):
    bounds = np.unique(np.round(np.geomspace(1, vocab + 1, levels + 1)).astype(np.int64))
    self.start = bounds[:-1]                       # first rank of each level (1-based)
    self.size = np.diff(bounds)                    # tokens per level
    ranks = np.arange(1, vocab + 1, dtype=np.float64)
    p = ranks ** -exponent
    p /= p.sum()
    mass = np.add.reduceat(p, self.start - 1)      # exact Zipf mass of each level
    self.logp = np.log(mass / self.size)           # per-token log-prob inside each level
    self.vocab = vocab

  @property
  def num_levels(self) -> int:
    return len(self.size)

  def entropy(self, temperature: float = 1.0) -> float:
    """E_{p_T}[-log p] with p_T ∝ p^(1/T) (= H(p) at T = 1)."""
    w = self.size * np.exp((self.logp - self.logp.max()) / temperature)
    w /= w.sum()
    return float(-(w * self.logp).sum())

  def expected_unique_rate(self, length: int) -> float:
    return float((self.size * -np.expm1(length * np.log1p(-np.exp(self.logp)))).sum() / length)

  def effective_temperature(self, mean_nll: float) -> float:
    lo, hi = 0.05, 20.0                            # entropy(T) increases with T
    if not self.entropy(lo) < mean_nll < self.entropy(hi):
      return float("nan")
    for _ in range(60):
      mid = math.sqrt(lo * hi)
      lo, hi = (mid, hi) if self.entropy(mid) < mean_nll else (lo, mid)
    return math.sqrt(lo * hi)


# ------------------------------------------------------------------------------------------------
# Max-of-n noise by inversion (float64 / uint64; call under `jax.enable_x64(True)`).
# ------------------------------------------------------------------------------------------------

_TINY32 = np.float32(np.finfo(np.float32).tiny)


def naive_max_noise(e, n):
  """Naive float32 Gumbel noise of the max of n i.i.d. `jax.random.uniform` draws (E = -log W).

  jax.random.uniform(float32) is u = max(tiny, f·(1 - tiny) + tiny) with f = k·2^-23, k uniform
  on [0, 2^23); the max of n k's is k* = 2^23 - 1 - floor(2^23 (1 - W^(1/n))).
  """
  d = -jnp.expm1(-e / n)                                   # 1 - W^(1/n), float64
  k = jnp.clip(2.0**23 - 1.0 - jnp.floor(d * 2.0**23), 0.0, 2.0**23 - 1.0)
  f = k.astype(jnp.float32) * jnp.float32(2.0**-23)        # exact: k < 2^23
  u = jnp.maximum(_TINY32, f * (jnp.float32(1.0) - _TINY32) + _TINY32)
  return _naive_gumbel_from_uniform(u)


def ours_max_noise(e, n):
  """`gumbel_noise` of the max of n i.i.d. 64-bit words K.

  K* = 2^64 - 1 - floor(2^64 (1 - W^(1/n))), or floor(2^64 W^(1/n)) where that is the more precise.
  """
  d = -jnp.expm1(-e / n)
  w = jnp.exp(-e / n)                                      # W^(1/n)
  top = jnp.uint64(2**64 - 1) - jnp.floor(jnp.minimum(d, 0.5) * 2.0**64).astype(jnp.uint64)
  bottom = jnp.floor(jnp.minimum(w, 0.5) * 2.0**64).astype(jnp.uint64)
  word = jnp.where(d < 0.5, top, bottom)
  hi = (word >> jnp.uint64(32)).astype(jnp.uint32)
  lo = (word & jnp.uint64(0xFFFFFFFF)).astype(jnp.uint32)
  return _gumbel_from_words(hi, lo)


def f64_max_noise(e, n):
  """-log(-log u) in float64 for u the max of n float64 uniforms (u < 1: at most 1 - 2^-53)."""
  u = jnp.minimum(jnp.exp(-e / n), 1.0 - 2.0**-53)
  return -jnp.log(-jnp.log(u))


def _race_winners(e_NxE, n_E, logp_K, j):
  """Winner index (K = the mask) of each sampler's Gumbel-max race at j steps to go."""
  jf = j.astype(jnp.float64)
  mask_logit = jnp.where(j > 1, jnp.log1p(-1.0 / jf), -jnp.inf)   # log((j-1)/j)
  logits64 = jnp.concatenate([logp_K - jnp.log(jf), mask_logit[None]])
  logits32 = logits64.astype(jnp.float32)
  naive = logits32 + naive_max_noise(e_NxE, n_E)
  ours = (logits32 - jnp.max(logits32)) + ours_max_noise(e_NxE, n_E)
  f64 = logits64 + f64_max_noise(e_NxE, n_E)
  return jnp.stack([jnp.argmax(s, axis=-1) for s in (naive, ours, f64)]).astype(jnp.int32)


def _simulate(key, logp_K, size_K, steps: tuple[int, ...], num_positions: int):
  """Level of each generated token: int32 [len(SAMPLERS), len(steps), num_positions]."""
  num_levels = logp_K.shape[0]
  n_E = jnp.concatenate([size_K.astype(jnp.float64), jnp.ones((1,), jnp.float64)])
  steps_S = jnp.asarray(steps, jnp.int32)
  shape = (len(SAMPLERS), len(steps), num_positions)

  def body(carry, j):
    done, level = carry
    e = jax.random.exponential(jax.random.fold_in(key, j), (num_positions, num_levels + 1),
                               jnp.float64)
    win_3xN = _race_winners(e, n_E, logp_K, j)
    new = (win_3xN[:, None, :] < num_levels) & (j <= steps_S)[None, :, None] & ~done
    return (done | new, jnp.where(new, win_3xN[:, None, :], level)), None

  init = (jnp.zeros(shape, bool), jnp.full(shape, -1, jnp.int32))
  (done, level), _ = jax.lax.scan(body, init, jnp.arange(max(steps), 0, -1, dtype=jnp.int32))
  return level, done


_simulate_jit = jax.jit(_simulate, static_argnames=("steps", "num_positions"))


def simulate(vocab: Vocab, steps, num_positions: int, seed: int = 0) -> np.ndarray:
  """Generated levels [sampler, S, position] (x64 enabled only inside this call)."""
  with jax.enable_x64(True):
    level, done = _simulate_jit(jax.random.key(seed), jnp.asarray(vocab.logp, jnp.float64),
                                jnp.asarray(vocab.size, jnp.float64), tuple(int(s) for s in steps),
                                int(num_positions))
    level, done = np.asarray(level), np.asarray(done)
  assert done.all(), "every position is unmasked at j = 1"
  return level


def metrics(vocab: Vocab, level_P: np.ndarray, seq_len: int, within_P: np.ndarray) -> dict:
  """Statistics of generated tokens given their levels; `within_P` ~ U[0, 1) picks the token
  inside its level (shared by the samplers, so equal levels give equal tokens)."""
  nll = -vocab.logp[level_P]
  tokens = vocab.start[level_P] + np.floor(within_P * vocab.size[level_P]).astype(np.int64)
  seqs = tokens[: len(tokens) // seq_len * seq_len].reshape(-1, seq_len)
  unique, seq_h = [], []
  for s in seqs:
    _, counts = np.unique(s, return_counts=True)
    unique.append(len(counts) / seq_len)
    q = counts / seq_len
    seq_h.append(float(-(q * np.log(q)).sum()))
  mean = float(nll.mean())
  return dict(entropy=mean, se=float(nll.std(ddof=1) / math.sqrt(len(nll))),
              t_eff=vocab.effective_temperature(mean), unique=float(np.mean(unique)),
              seq_h=float(np.mean(seq_h)))


def run(steps=(16, 64, 256, 1024, 4096), num_positions=4096, seq_len=1024, levels=64, seed=0,
        vocab_size=GPT2_VOCAB):
  vocab = Vocab(vocab_size, levels=levels)
  level = simulate(vocab, steps, num_positions, seed)
  rng = np.random.default_rng(seed)
  within_SxP = rng.random((len(steps), num_positions))
  rows = {(name, s): metrics(vocab, level[i, k], seq_len, within_SxP[k])
          for i, name in enumerate(SAMPLERS) for k, s in enumerate(steps)}
  # Reference without any sampler: i.i.d. draws from p (numpy float64 inverse-CDF sampling).
  n_ref = max(num_positions, 64 * seq_len)
  ref_level = rng.choice(vocab.num_levels, size=n_ref, p=vocab.size * np.exp(vocab.logp))
  rows[("iid", 0)] = metrics(vocab, ref_level, seq_len, rng.random(n_ref))
  ours, f64 = SAMPLERS.index("ours"), SAMPLERS.index("f64")
  rows[("agree", 0)] = (int((level[ours] == level[f64]).sum()), int(level[ours].size))
  return vocab, rows


def plot(vocab, rows, steps, seq_len, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
  style = {"naive-f32": dict(color="tab:red", marker="o", lw=1.8),
           "ours": dict(color="tab:blue", marker="s", lw=4, ms=9, alpha=0.45),
           "f64": dict(color="tab:green", marker="^", lw=1.2, ls="--")}
  exact = {"entropy": vocab.entropy(), "t_eff": 1.0, "unique": vocab.expected_unique_rate(seq_len),
           "seq_h": rows[("iid", 0)]["seq_h"]}
  titles = {"entropy": "token entropy  E[-log p(x)]  (nats)", "t_eff": "effective temperature",
            "unique": f"unique-token rate (per {seq_len} tokens)",
            "seq_h": f"unigram entropy of a {seq_len}-token sequence"}
  for ax, key in zip(axes, ("entropy", "t_eff", "unique", "seq_h")):
    ax.axhline(exact[key], color="k", lw=1, ls="--", label="exact")
    for name in SAMPLERS:
      ys = [rows[(name, s)][key] for s in steps]
      err = [1.96 * rows[(name, s)]["se"] for s in steps] if key == "entropy" else None
      label = name + (" (coincides with ours: same uniforms)" if name == "f64" else "")
      ax.errorbar(steps, ys, yerr=err, capsize=3, label=label, **style[name])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sampling steps S")
    ax.set_title(titles[key], fontsize=10)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle(f"Masked-diffusion ancestral sampling, Zipf p over V = {vocab.vocab}: "
               "float32 Gumbel noise cools the sampler as steps grow", fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", default=None,
                  help="PNG path (e.g. docs/precision.png); needs matplotlib")
  ap.add_argument("--positions", type=int, default=4096, help="tokens per (sampler, S) cell")
  ap.add_argument("--steps", type=int, nargs="+", default=[16, 64, 256, 1024, 4096])
  ap.add_argument("--seq-len", type=int, default=1024)
  ap.add_argument("--levels", type=int, default=64)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)
  t0 = time.time()
  steps = tuple(sorted(args.steps))
  vocab, rows = run(steps, args.positions, args.seq_len, args.levels, args.seed)
  print(f"device: {jax.devices()[0].device_kind}; V = {vocab.vocab} (Zipf, {vocab.num_levels} "
        f"levels), {args.positions} tokens per cell, sequences of {args.seq_len}")
  print("| sampler | S | entropy (nats) | Δ vs exact | T_eff | unique | seq-H |")
  print("|---|---|---|---|---|---|---|")
  h = vocab.entropy()
  iid = rows[("iid", 0)]
  print(f"| exact | any | {h:.3f} | 0 | 1.000 | {vocab.expected_unique_rate(args.seq_len):.3f} | "
        f"{iid['seq_h']:.3f} (i.i.d. draws) |")
  for name in SAMPLERS:
    for s in steps:
      r = rows[(name, s)]
      print(f"| {name} | {s} | {r['entropy']:.3f} ± {r['se']:.3f} | {r['entropy'] - h:+.3f} | "
            f"{r['t_eff']:.3f} | {r['unique']:.3f} | {r['seq_h']:.3f} |")
  same, total = rows[("agree", 0)]
  print(f"ours and f64 (same underlying uniforms) drew the same level at {same} of {total} "
        "positions")
  if args.out:
    plot(vocab, rows, steps, args.seq_len, args.out)
    print(f"wrote {args.out}")
  print(f"wall time: {time.time() - t0:.1f} s")


if __name__ == "__main__":
  main()
