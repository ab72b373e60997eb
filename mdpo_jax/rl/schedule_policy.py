"""Co-GRPO's schedule policy φ: the sampler's per-step knobs as stochastic, learnable actions.

Our own design (the Co-GRPO paper is text-to-image and has no public code; SPEC §6): for every
denoising step s of a rollout (S = `rl.steps`) and every knob k, an independent Gaussian over an
*unconstrained* action u[s, k] with a learnable mean and log-std, squashed to the knob's range:

  commit            f = sigmoid(u) ∈ (0, 1): the share of the block's still-masked tokens that
                    step s commits, n = clip(round(f·m), 1, m) with m the block's masked count
                    (`counts_from_fractions`). The last step of a block always commits all m
                    left, so every row's block finishes unmasked; that step's commit action is
                    unused and excluded from the log-prob.
  temperature       T = softplus(u) > 0: the sampling temperature (T → 0 is argmax).
  rank_temperature  τ = softplus(u) > 0: which candidates are committed is the top-n of
                    log(confidence) + τ·Gumbel, i.e. n positions drawn without replacement with
                    probability ∝ confidence^(1/τ) (Gumbel-top-k); τ → 0 is the hand rule
                    (top-n confidence). Without this knob the ranking is the hand rule exactly.
  cfg_scale         w = softplus(u) ≥ 0: unsupervised CFG weight (off by default: it doubles the
                    forward cost).

φ = {"mean_SxK", "log_std_SxK"} (float32), K = len(knobs) in the order of `spec.knobs`. The
log-prob is taken in the unconstrained space, `log N(u; mean, std)` summed over steps and knobs;
the squashing's Jacobian depends only on u (not on φ), so it cancels in every importance ratio
and adds nothing to ∇_φ. Knobs not in `spec.knobs` take the hand schedule's value (`ScheduleSpec`).

`sample` draws actions; `mode` is the deterministic schedule (std → 0: the mean);
`from_hand_schedule` builds φ whose mode *is* the hand schedule (LLaDA's per-step counts, the
rollout temperature). Everything here is pure and jit-able; the spec is static.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from mdpo_jax.sampling import remask

KNOBS = ("commit", "temperature", "rank_temperature", "cfg_scale")
_LOG_2PI = math.log(2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
  """The static shape of a schedule: steps, blocks, which knobs are learned, and the hand values
  of the knobs that are not (hashable: a static jit argument)."""

  gen_length: int
  block_length: int
  steps: int
  knobs: tuple[str, ...] = ("commit", "temperature", "rank_temperature")
  temperature: float = 1.0       # hand sampling temperature (> 0)
  rank_temperature: float = 0.0  # hand ranking temperature; 0 = plain confidence ranking
  cfg_scale: float = 0.0         # hand CFG weight

  def __post_init__(self):
    if self.gen_length % self.block_length or self.steps % (self.gen_length // self.block_length):
      raise ValueError(f"ScheduleSpec: block_length={self.block_length} must divide gen_length="
                       f"{self.gen_length} and the number of blocks must divide steps={self.steps}")
    bad = [k for k in self.knobs if k not in KNOBS]
    if bad or len(set(self.knobs)) != len(self.knobs):
      raise ValueError(f"rl.cogrpo_knobs={self.knobs!r}: allowed entries {KNOBS}, each once")

  @property
  def num_blocks(self) -> int:
    return self.gen_length // self.block_length

  @property
  def steps_per_block(self) -> int:
    return self.steps // self.num_blocks

  def hand_counts(self) -> np.ndarray:
    """LLaDA's tokens per step of every block, [S] (the hand schedule)."""
    return np.tile(remask.transfer_schedule(self.block_length, self.steps_per_block),
                   self.num_blocks)

  def used_SxK(self) -> np.ndarray:
    """Which actions matter: all but the commit action of each block's last step."""
    used = np.ones((self.steps, len(self.knobs)), bool)
    if "commit" in self.knobs:
      last = (np.arange(self.steps) % self.steps_per_block) == self.steps_per_block - 1
      used[last, self.knobs.index("commit")] = False
    return used


# ----------------------------------------------------------------------------- squashing

def _squash(knob: str, u):
  return jax.nn.sigmoid(u) if knob == "commit" else jax.nn.softplus(u)


def _unsquash64(knob: str, value: float) -> float:
  """The inverse of `_squash` in float64 (value inside the knob's open range)."""
  if knob == "commit":
    return math.log(value) - math.log1p(-value)
  return value + math.log(-math.expm1(-value))   # softplus⁻¹


def _exact_unsquash(knob: str, value: float) -> np.float32:
  """A float32 u whose float32 squash equals float32(value) exactly where one exists (searched
  among the neighbours of the float64 inverse), so a schedule built from hand values samples with
  exactly those values in its deterministic mode."""
  want = np.float32(value)
  u = np.float32(_unsquash64(knob, value))
  best, best_err = u, math.inf
  for _ in range(64):
    got = np.float32(_squash(knob, jnp.float32(u)))
    err = abs(float(got) - float(want))
    if err < best_err:
      best, best_err = u, err
    if got == want:
      return u
    u = np.nextafter(u, np.float32(np.inf) if got < want else np.float32(-np.inf))
  return best


def squash(spec: ScheduleSpec, actions_BxSxK) -> dict[str, jax.Array]:
  """Knob values {name: [B, S]} of the learned knobs (float32)."""
  return {k: _squash(k, actions_BxSxK[..., j].astype(jnp.float32))
          for j, k in enumerate(spec.knobs)}


def counts_from_fractions(fraction_BxS, spec: ScheduleSpec) -> jax.Array:
  """Tokens committed at each step, int32 [B, S]: n = clip(round(f·m), 1, m) with m the block's
  still-masked count before the step, and n = m at a block's last step (one scan per block)."""
  b = fraction_BxS.shape[0]
  spb = spec.steps_per_block
  frac_NbxSpbxB = jnp.transpose(fraction_BxS.reshape(b, spec.num_blocks, spb), (1, 2, 0))
  last_Spb = jnp.arange(spb) == spb - 1

  def step(left_B, xs):
    f_B, last = xs
    n_B = jnp.clip(jnp.round(f_B * left_B), jnp.minimum(left_B, 1.0), left_B)
    n_B = jnp.where(last, left_B, n_B)
    return left_B - n_B, n_B.astype(jnp.int32)

  def block(f_SpbxB):
    left_B = jnp.full((b,), spec.block_length, jnp.float32)
    return jax.lax.scan(step, left_B, (f_SpbxB, last_Spb))[1]

  n_NbxSpbxB = jax.vmap(block)(frac_NbxSpbxB.astype(jnp.float32))
  return jnp.transpose(n_NbxSpbxB, (2, 0, 1)).reshape(b, spec.steps)


def knob_values(spec: ScheduleSpec, actions_BxSxK) -> dict[str, jax.Array]:
  """Every knob as [B, S] arrays: `counts` (int32), `temperature`, `rank_temperature` and
  `cfg_scale` (float32; `rank_temperature`/`cfg_scale` None when neither learned nor set by hand)."""
  b = actions_BxSxK.shape[0]
  learned = squash(spec, actions_BxSxK)
  full = lambda v: jnp.full((b, spec.steps), v, jnp.float32)  # noqa: E731
  if "commit" in learned:
    counts = counts_from_fractions(learned["commit"], spec)
  else:
    counts = jnp.broadcast_to(jnp.asarray(spec.hand_counts(), jnp.int32), (b, spec.steps))
  out = {"counts": counts, "temperature": learned.get("temperature", full(spec.temperature))}
  for knob, hand in (("rank_temperature", spec.rank_temperature), ("cfg_scale", spec.cfg_scale)):
    out[knob] = learned.get(knob, full(hand) if hand > 0 else None)
  return out


# ----------------------------------------------------------------------------- the policy

def init(spec: ScheduleSpec, mean_SxK, init_std: float) -> dict[str, jax.Array]:
  """φ with the given unconstrained means and one std everywhere."""
  mean_SxK = jnp.asarray(mean_SxK, jnp.float32)
  if mean_SxK.shape != (spec.steps, len(spec.knobs)):
    raise ValueError(f"mean_SxK must have shape {(spec.steps, len(spec.knobs))}, "
                     f"got {mean_SxK.shape}")
  if not init_std > 0:
    raise ValueError(f"rl.cogrpo_init_std={init_std!r}: must be > 0")
  return {"mean_SxK": mean_SxK,
          "log_std_SxK": jnp.full(mean_SxK.shape, math.log(init_std), jnp.float32)}


def from_hand_schedule(spec: ScheduleSpec, init_std: float, *, rank_temperature: float = 0.05,
                       cfg_scale: float = 0.5) -> dict[str, jax.Array]:
  """φ whose mode is the hand schedule: LLaDA's counts per step (as the share of the block's
  masked tokens: n_i / m_i, which rounds back to n_i), `spec.temperature` (float32-exact), and
  for the knobs with no hand equivalent inside their open range the given starting values
  (ranking τ: the hand rule is the limit τ → 0; CFG w: the hand value 0 is the limit)."""
  counts = spec.hand_counts()
  spb = spec.steps_per_block
  mean = np.zeros((spec.steps, len(spec.knobs)), np.float32)
  for j, knob in enumerate(spec.knobs):
    for s in range(spec.steps):
      if knob == "commit":
        first = s - s % spb
        left = spec.block_length - counts[first:s].sum()
        frac = counts[s] / left if s % spb != spb - 1 else 0.5   # the last step: unused
        mean[s, j] = _exact_unsquash(knob, float(frac))
      else:
        value = {"temperature": spec.temperature, "rank_temperature": rank_temperature,
                 "cfg_scale": cfg_scale}[knob]
        mean[s, j] = _exact_unsquash(knob, float(value))
  return init(spec, mean, init_std)


def sample(phi, rng: jax.Array, batch: int) -> jax.Array:
  """Unconstrained actions [batch, S, K] ~ N(mean, std²) independently."""
  mean_SxK, log_std_SxK = phi["mean_SxK"], phi["log_std_SxK"]
  eps = jax.random.normal(rng, (batch,) + mean_SxK.shape, jnp.float32)
  return mean_SxK[None] + jnp.exp(log_std_SxK)[None] * eps


def mode(phi, batch: int) -> jax.Array:
  """The deterministic schedule (std → 0): the means, [batch, S, K]."""
  return jnp.broadcast_to(phi["mean_SxK"][None], (batch,) + phi["mean_SxK"].shape)


def log_prob(phi, actions_BxSxK, used_SxK) -> jax.Array:
  """log N(u; mean, std²) in the unconstrained space, summed over the used (step, knob), [B]."""
  mean_SxK, log_std_SxK = phi["mean_SxK"], phi["log_std_SxK"]
  z = (actions_BxSxK.astype(jnp.float32) - mean_SxK[None]) * jnp.exp(-log_std_SxK)[None]
  per_BxSxK = -0.5 * z * z - log_std_SxK[None] - 0.5 * _LOG_2PI
  return jnp.sum(jnp.where(jnp.asarray(used_SxK)[None], per_BxSxK, 0.0), axis=(1, 2))


def describe(spec: ScheduleSpec, phi) -> dict:
  """The deterministic (mean) schedule as plain numbers: per step counts and knob values, and
  each learned knob's std in the unconstrained space (for printing and the JSON report)."""
  values = jax.device_get(knob_values(spec, mode(phi, 1)))
  out = {"knobs": list(spec.knobs), "hand_counts": spec.hand_counts().tolist(),
         "hand_temperature": spec.temperature,
         "counts": np.asarray(values["counts"][0]).tolist()}
  for knob in ("temperature", "rank_temperature", "cfg_scale"):
    if values[knob] is not None:
      out[knob] = [round(float(v), 6) for v in np.asarray(values[knob][0])]
  std = np.exp(np.asarray(phi["log_std_SxK"]))
  out["std"] = {k: [round(float(v), 6) for v in std[:, j]] for j, k in enumerate(spec.knobs)}
  return out
