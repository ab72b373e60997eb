"""The sampler with a per-row, per-step schedule given as *arrays* (Co-GRPO's rollouts).

`sampler.generate` takes every knob from the static `SamplerConfig`, so each schedule would be a
new compilation. Here the knobs of step t are data: `counts_BxS[:, t]` tokens committed per row,
`temperature_BxS[:, t]`, optionally a ranking temperature and a CFG weight per row and step.
Shapes stay static (a commit count is the `n` of a fixed-size `lax.top_k`), so one compilation
serves every sampled schedule. The loop is the scan sampler's (`sampler._Sampling`: blocks in a
scan, a block's steps in a scan); only the step itself differs:

* candidates: `categorical.gumbel_max` — `sample_categorical`'s draw with a traced per-row T
  (same noise, same arithmetic: a schedule equal to the hand one gives the plain sampler's
  tokens exactly);
* ranking: the confidence p(x0) (LLaDA's low_confidence), or with a ranking temperature τ_b,
  `log p(x0) + τ_b·Gumbel` (Gumbel-top-k: the n committed positions are drawn without
  replacement with probability ∝ p(x0)^(1/τ_b));
* the record adds `logp`: log softmax(logits/T_b)[x0] of every candidate — the behaviour
  policy's log-probability of the tokens committed at that step, what Co-GRPO's ratio needs.

Supported: remasking='low_confidence', confidence_from='logits', no KV cache, no threshold
(one-line errors otherwise). The last step of each block must commit everything left (the
schedule's `counts` guarantee it); a count above the block's masked count is clipped to it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mdpo_jax.diffusion import guidance
from mdpo_jax.sampling import categorical, remask
from mdpo_jax.sampling.sampler import (SamplerConfig, Trajectory, _Sampling, checked_inputs,
                                       static_callable)


class Schedule(NamedTuple):
  """Per-row, per-step knobs ([B, S] arrays, S = config.steps)."""

  counts: jax.Array                     # int32 tokens committed at each step
  temperature: jax.Array                # float32 sampling temperature (> 0)
  rank_temperature: jax.Array | None = None   # float32 τ > 0; None: plain confidence ranking
  cfg_scale: jax.Array | None = None          # float32 w ≥ 0; None: no guidance


def check_config(config: SamplerConfig) -> None:
  """The sampler settings a scheduled rollout supports (one-line errors)."""
  for name, want in (("remasking", "low_confidence"), ("confidence_from", "logits"),
                     ("cache", "none"), ("threshold", None), ("head_chunk", 0)):
    if getattr(config, name) != want:
      raise ValueError(f"SamplerConfig.{name}={getattr(config, name)!r}: the scheduled sampler "
                       f"(Co-GRPO) allows {want!r}")


def step_logits(forward_fn, params, x_BxL, attn_BxL, prompt_BxL, cfg_B, config: SamplerConfig):
  """Float32 logits of one step with the mask token (and EOS, if configured) impossible, guided
  per row when `cfg_B` is given — shared by the sampler and the Co-GRPO loss, so the loss's
  log-probs are those of the distribution actually sampled."""
  if cfg_B is None:
    logits = forward_fn(params, x_BxL, attention_mask=attn_BxL)
  else:
    logits = guidance.guided_logits(forward_fn, params, x_BxL, prompt_BxL, cfg_scale=cfg_B,
                                    mask_id=config.mask_id, attention_mask=attn_BxL)
  logits = logits.astype(jnp.float32).at[..., config.mask_id].set(-jnp.inf)
  if config.eos_logit_neg_inf:
    logits = logits.at[..., config.eos_id].set(-jnp.inf)
  return logits


def tempered_logprob(logits_BxLxV, tokens_BxL, temperature_B):
  """log softmax(logits / T_b)[token] per position, float32 [B, L]."""
  z = logits_BxLxV / temperature_B[:, None, None]
  chosen = jnp.take_along_axis(z, tokens_BxL[..., None], axis=-1)[..., 0]
  return chosen - jax.nn.logsumexp(z, axis=-1)


class _ScheduledSampling(_Sampling):
  """`_Sampling` whose step reads its knobs from the schedule arrays at the global step t."""

  def __init__(self, forward_fn, params, prompt_BxP, prompt_mask_BxP, rng, config, schedule):
    super().__init__(forward_fn, params, prompt_BxP, prompt_mask_BxP, rng, config, True)
    self.schedule = schedule

  def step(self, state, t, in_reach_L):
    config, sch = self.config, self.schedule
    cfg_B = None if sch.cfg_scale is None else sch.cfg_scale[:, t]
    logits = step_logits(self.forward_fn, self.params, state.x_BxL, self.attn_BxL,
                         self.prompt_BxL, cfg_B, config)
    temp_B = sch.temperature[:, t]
    step_rng, noise_rng = jax.random.split(jax.random.fold_in(self.rng, t))
    cand_BxL = categorical.gumbel_max(step_rng, logits, temp_B[:, None, None],
                                      top_k=config.top_k, top_p=config.top_p)
    conf_BxL = remask.confidence("low_confidence", logits, cand_BxL)
    rank_BxL = conf_BxL
    if sch.rank_temperature is not None:
      gumbel_BxL = categorical.gumbel_noise(noise_rng, conf_BxL.shape)
      rank_BxL = jnp.log(conf_BxL) + sch.rank_temperature[:, t, None] * gumbel_BxL
    if config.eos_confidence_neg_inf:
      is_end = (cand_BxL == config.eos_id) | (cand_BxL == config.eot_id)
      rank_BxL = jnp.where(is_end, -jnp.inf, rank_BxL)
    x_BxL = state.x_BxL
    masked_BxL = x_BxL == config.mask_id
    x0_BxL = jnp.where(masked_BxL, cand_BxL, x_BxL)
    eligible_BxL = self.todo_BxL(x_BxL, in_reach_L)
    n_B = jnp.minimum(sch.counts[:, t], eligible_BxL.sum(-1))
    new_x_BxL, committed_BxL = remask.commit_low_confidence(
        x_BxL, x0_BxL, rank_BxL, eligible_BxL, n_B, config.block_length)
    logp_BxL = jnp.where(masked_BxL, tempered_logprob(logits, cand_BxL, temp_B), 0.0)
    record = (Trajectory(x_BxL, x0_BxL, conf_BxL, committed_BxL, eligible_BxL.any(-1)), logp_BxL)
    return state._replace(x_BxL=new_x_BxL, nfe=state.nfe + 1), record

  def run_block(self, state, b, start, width: int):
    del start, width   # no cache: the whole sequence every step
    spb = self.config.steps_per_block
    in_reach_L = self.pos_L < self.prompt_len + (b + 1) * self.config.block_length
    return jax.lax.scan(lambda s, i: self.step(s, b * spb + i, in_reach_L), state,
                        jnp.arange(spb))


def _generate(forward_fn, params, prompt_BxP, prompt_mask_BxP, rng, schedule, config):
  run = _ScheduledSampling(forward_fn, params, prompt_BxP, prompt_mask_BxP, rng, config, schedule)
  state, (traj, logp) = jax.lax.scan(lambda s, b: run.run_block(s, b, 0, run.total),
                                     run.initial_state(), jnp.arange(config.num_blocks))
  flat = lambda r: r.reshape((-1,) + r.shape[2:])  # noqa: E731  [blocks, spb, ...] → [T, ...]
  return state.x_BxL, jax.tree.map(flat, traj), flat(logp)


_generate_jit = jax.jit(_generate, static_argnames=("forward_fn", "config"))


def generate(forward_fn, params, prompt_BxP, config: SamplerConfig, rng: jax.Array,
             schedule: Schedule, *, prompt_mask=None):
  """Sample with per-row, per-step knobs. Returns (tokens [B, P+G], Trajectory [T, B, ...],
  logp_TxBxL: the candidates' log-probs under the sampled distribution, 0 where not masked).

  `config` supplies the static settings (lengths, steps, ids, top-k/p, EOS options); its
  `temperature` and `cfg_scale` are ignored (the schedule's are used).
  """
  check_config(config)
  prompt_mask = checked_inputs(prompt_BxP, prompt_mask, config)
  want = (prompt_BxP.shape[0], config.steps)
  for name, value in schedule._asdict().items():
    if value is not None and tuple(value.shape) != want:
      raise ValueError(f"Schedule.{name} must have shape {want} ([batch, steps]), "
                       f"got {tuple(value.shape)}")
  schedule = schedule._replace(counts=jnp.asarray(schedule.counts, jnp.int32))
  return _generate_jit(static_callable(forward_fn), params, prompt_BxP, prompt_mask, rng,
                       schedule, config=config)
