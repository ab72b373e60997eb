"""Co-GRPO: learn the inference schedule together with the model (SPEC §6; our own design — the
paper is text-to-image and has no public code).

A rollout is one trajectory of a joint MDP over tokens *and* schedule knobs: for every prompt, G
rollouts, each with its own schedule a ~ π_φ (`rl/schedule_policy.py`: per-step commit share,
sampling temperature, ranking temperature, optionally CFG weight), sampled by the scheduled scan
sampler (`sampling/scheduled.py`; one compilation for every schedule). The reward is the task's
final reward; the advantage is group-relative, `(r − mean_G) / (std_G + 1e-4)` (0 for groups
whose rewards are all equal). Per rollout n, the joint log-probability is

  log π(n) = Σ_s Σ_{i committed at step s} log softmax(logits_θ(x_s)/T_s)[x̂0_s,i]   (θ)
           + Σ_{s,k} log N(u_{s,k}; μ_{s,k}, σ_{s,k})                              (φ)

with x_s the state before step s, T_s the row's sampled temperature and the logits those the
sampler used (mask token impossible, guided when the CFG knob is on). Which positions were
committed (the ranking draw) is part of the environment: no log-prob term. The loss is
PPO-clipped on the joint ratio ρ_n = exp(log π_new(n) − log π_old(n)), where π_old is what the
sampler recorded at rollout time (its own token log-probs and the schedule's):

  loss = −mean_n min(ρ_n·A_n, clip(ρ_n, 1−ε, 1+ε)·A_n) + β·mean_tokens ½(logp_θ − logp_ref)²

(k2 KL on the committed tokens, both log-probs of the plain conditional model at temperature 1,
as the loop computes the reference's). No gradient flows through sampling.

Modes (`rl.cogrpo_mode`): `joint` trains θ and φ; `model_only` samples with φ's deterministic
schedule (the hand one unless φ was trained) and trains θ only; `schedule_only` freezes θ (no
forward pass in the loss) and trains φ only. φ has its own Adam (`rl.cogrpo_schedule_lr`, clip
1.0); φ and its optimiser state are the algorithm's extra trainable state (hooks
`extra_params`/`extra_optimizer`; the RL loop keeps them in the checkpointed
`ExtraTrainState.extra`), so a resumed run is exact. At the end of a run the learned schedule is printed and written to
`WORKDIR/cogrpo_schedule.json`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mdpo_jax.rl import advantages, rollout
from mdpo_jax.rl import schedule_policy as sp
from mdpo_jax.rl.common import check_clip_eps, check_nonnegative_real, token_logprobs
from mdpo_jax.sampling import scheduled
from mdpo_jax.sampling.sampler import SamplerConfig

MODES = ("joint", "model_only", "schedule_only")


@dataclasses.dataclass
class ScheduledBatch(rollout.RolloutBatch):
  """A rollout batch with the schedule each row was sampled with."""

  actions_NxSxK: np.ndarray     # unconstrained schedule actions
  sched_logp_N: np.ndarray      # their log-prob under φ at rollout time
  logp_TxNxL: np.ndarray        # the sampler's log-prob of every candidate
  temperature_NxS: np.ndarray
  cfg_NxS: np.ndarray | None
  counts_NxS: np.ndarray


def spec_for(rl, block_length: int) -> sp.ScheduleSpec:
  return sp.ScheduleSpec(rl.gen_length, block_length, rl.steps, tuple(rl.cogrpo_knobs),
                         temperature=rl.temperature)


def schedule_optimizer(rl) -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(rl.cogrpo_schedule_lr))


# ----------------------------------------------------------------------------- rollouts

def sample(forward_fn, params, phi, prompts_BxP, prompt_mask_BxP, problems, config: SamplerConfig,
           rng, *, spec: sp.ScheduleSpec, group_size: int, deterministic: bool
           ) -> ScheduledBatch:
  """G rollouts per prompt, each with its own schedule (φ's mode when `deterministic`)."""
  prompts = np.repeat(np.asarray(prompts_BxP), group_size, axis=0)
  mask = np.repeat(np.asarray(prompt_mask_BxP), group_size, axis=0)
  n = prompts.shape[0]
  actions = sp.mode(phi, n) if deterministic else sp.sample(phi, jax.random.fold_in(rng, 2), n)
  knobs = sp.knob_values(spec, actions)
  schedule = scheduled.Schedule(knobs["counts"], knobs["temperature"],
                                knobs["rank_temperature"], knobs["cfg_scale"])
  tokens, traj, logp = scheduled.generate(forward_fn, params, prompts, config, rng, schedule,
                                          prompt_mask=mask)
  host = lambda x: None if x is None else np.asarray(x)  # noqa: E731
  return ScheduledBatch(
      prompts, mask, np.asarray(tokens), jax.tree.map(np.asarray, traj),
      [p for p in problems for _ in range(group_size)], group_size,
      actions_NxSxK=np.asarray(actions),
      sched_logp_N=np.asarray(sp.log_prob(phi, actions, spec.used_SxK())),
      logp_TxNxL=np.asarray(logp), temperature_NxS=np.asarray(knobs["temperature"]),
      cfg_NxS=host(knobs["cfg_scale"]), counts_NxS=np.asarray(knobs["counts"]))


def training_rows(batch: ScheduledBatch, final_N: np.ndarray) -> dict[str, np.ndarray]:
  """One row per rollout: its S steps ([N, S, L] states, candidates, commits, log-probs), its
  schedule and its group-relative advantage."""
  n, p = batch.tokens_NxL.shape[0], batch.prompts_NxP.shape[1]
  per_row = lambda a: np.swapaxes(np.asarray(a), 0, 1)  # noqa: E731  [S, N, ...] → [N, S, ...]
  adv = advantages.group_advantages(final_N.reshape(-1, batch.group_size), scale_by_std=True)
  gen = batch.tokens_NxL.shape[1] - p
  rows = {"x": per_row(batch.traj.x).astype(np.int32),
          "target": per_row(batch.traj.x0).astype(np.int32),
          "committed": per_row(batch.traj.committed),
          "old_logp": per_row(batch.logp_TxNxL).astype(np.float32),
          "attention_mask": np.concatenate([batch.prompt_mask_NxP, np.ones((n, gen))],
                                           1).astype(np.int32),
          "prompt": np.concatenate([batch.prompt_mask_NxP.astype(bool), np.zeros((n, gen), bool)],
                                   1),
          "temperature": batch.temperature_NxS.astype(np.float32),
          "actions": batch.actions_NxSxK.astype(np.float32),
          "old_sched_logp": batch.sched_logp_N.astype(np.float32),
          "adv": np.asarray(adv, np.float32).reshape(-1)}
  if batch.cfg_NxS is not None:
    rows["cfg"] = batch.cfg_NxS.astype(np.float32)
  return rows


# ----------------------------------------------------------------------------- the loss

def token_logp(forward_fn, theta, rows, config: SamplerConfig) -> jax.Array:
  """log softmax(logits_θ(x_s)/T_s)[x̂0_s] at every position of every step, [N, S, L]: one
  forward over the N·S step inputs, with the sampler's logits (`scheduled.step_logits`)."""
  n, s, length = rows["x"].shape
  flat = lambda a: a.reshape((n * s,) + a.shape[2:])  # noqa: E731
  rep = lambda a: flat(jnp.broadcast_to(a[:, None], (n, s) + a.shape[1:]))  # noqa: E731
  cfg = rows.get("cfg")
  logits = scheduled.step_logits(forward_fn, theta, flat(rows["x"]), rep(rows["attention_mask"]),
                                 rep(rows["prompt"]), None if cfg is None else flat(cfg), config)
  logp = scheduled.tempered_logprob(logits, flat(rows["target"]), flat(rows["temperature"]))
  return logp.reshape(n, s, length)


def joint_logp(forward_fn, theta, phi, rows, *, spec: sp.ScheduleSpec, mode: str,
               config: SamplerConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(new, old, token log-probs [N, S, L] or None): the joint log-prob of each rollout under
  (θ, φ) and at rollout time, restricted to the parts `mode` trains."""
  committed = jnp.asarray(rows["committed"]).astype(bool)
  n = committed.shape[0]
  new, old, logp = jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.float32), None
  if mode != "schedule_only":
    logp = token_logp(forward_fn, theta, rows, config)
    new = new + jnp.sum(jnp.where(committed, logp, 0.0), axis=(1, 2))
    old = old + jnp.sum(jnp.where(committed, rows["old_logp"], 0.0), axis=(1, 2))
  if mode != "model_only":
    new = new + sp.log_prob(phi, rows["actions"], spec.used_SxK())
    old = old + rows["old_sched_logp"]
  return new, old, logp


def cogrpo_loss(forward_fn, theta, phi, rows, *, spec: sp.ScheduleSpec, mode: str,
                config: SamplerConfig, clip_eps: float = 0.2, beta: float = 0.0):
  """The Co-GRPO loss (module docstring) and its metrics."""
  check_clip_eps(clip_eps)
  check_nonnegative_real("beta", beta)
  if mode not in MODES:
    raise ValueError(f"rl.cogrpo_mode={mode!r}: allowed {MODES}")
  new, old, _ = joint_logp(forward_fn, theta, phi, rows, spec=spec, mode=mode, config=config)
  adv = jax.lax.stop_gradient(jnp.asarray(rows["adv"], jnp.float32))
  ratio = jnp.exp(new - jax.lax.stop_gradient(old))
  unclipped, clipped = ratio * adv, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
  loss = -jnp.mean(jnp.minimum(unclipped, clipped))
  committed = jnp.asarray(rows["committed"]).astype(bool)
  kl = jnp.zeros((), jnp.float32)
  if beta > 0 and mode != "schedule_only":
    n, s, length = committed.shape
    plain = token_logprobs(forward_fn, theta, rows["x"].reshape(n * s, length),
                           rows["target"].reshape(n * s, length), temperature=1.0,
                           attention_mask=jnp.repeat(rows["attention_mask"], s, axis=0))
    d = plain.reshape(n, s, length) - rows["ref_logp"]
    kl = jnp.sum(jnp.where(committed, 0.5 * d * d, 0.0)) / jnp.maximum(committed.sum(), 1)
    loss = loss + float(beta) * kl
  metrics = {"ratio_mean": jnp.mean(ratio), "clip_frac": jnp.mean((clipped < unclipped)
                                                                   .astype(jnp.float32)),
             "kl": kl, "adv_abs_mean": jnp.mean(jnp.abs(adv)),
             "sched_std_mean": jnp.mean(jnp.exp(phi["log_std_SxK"]))}
  return loss, jax.tree.map(jax.lax.stop_gradient, metrics)


# ----------------------------------------------------------------------------- the plug-in

class CoGRPO:
  """Co-GRPO as an RL algorithm (`rl/algorithms.py`), with the optional hooks for extra
  trainable state (`extra_params`, `extra_optimizer`, `trains`), `loss_context`, `rollout` and
  `finish`."""

  name = "cogrpo"
  extra_name = "schedule"   # φ's metrics: schedule/...
  uses_trajectory = True

  def rows_per_rollout(self, rl) -> int:
    del rl
    return 1

  def extra_params(self, rl):
    """φ at its start: the hand schedule as the mode (`schedule_policy.from_hand_schedule`)."""
    return sp.from_hand_schedule(spec_for(rl, rl.block_lengths[0]), rl.cogrpo_init_std,
                                 rank_temperature=rl.cogrpo_rank_temperature,
                                 cfg_scale=rl.cogrpo_cfg_scale)

  def extra_optimizer(self, rl) -> optax.GradientTransformation:
    return schedule_optimizer(rl)

  def trains(self, rl) -> tuple[bool, bool]:
    """(θ steps, φ steps) in `rl.cogrpo_mode`."""
    return rl.cogrpo_mode != "schedule_only", rl.cogrpo_mode != "model_only"

  def loss_context(self, run) -> dict:
    """The sampler's static settings (mask/EOS ids and rules) for the loss's logits."""
    rl = run.config.rl
    return {"config": SamplerConfig.for_model(run.model_cfg, gen_length=rl.gen_length,
                                              block_length=rl.block_lengths[0], steps=rl.steps)}

  def rollout(self, sample_fn, params, state, prompts_BxP, prompt_mask_BxP, problems,
              config: SamplerConfig, rng, rl) -> ScheduledBatch:
    return sample(sample_fn, params, state.extra["params"], prompts_BxP, prompt_mask_BxP,
                  problems, config, rng, spec=spec_for(rl, config.block_length),
                  group_size=rl.group_size, deterministic=rl.cogrpo_mode == "model_only")

  def rows(self, batch: ScheduledBatch, scorer, rng, rl, *, mask_id: int, eos_id: int):
    del rng, mask_id, eos_id
    final, stats = scorer.final_rewards(batch)
    rows = training_rows(batch, final)
    metrics = {f"schedule/counts_{s}": float(batch.counts_NxS[:, s].mean())
               for s in range(batch.counts_NxS.shape[1])}
    metrics.update({f"schedule/temperature_{s}": float(batch.temperature_NxS[:, s].mean())
                    for s in range(batch.temperature_NxS.shape[1])})
    return rollout.Rows(rows, final, stats, metrics)

  def logprob_io(self, rows):
    return rows["x"], rows["target"]     # [N, S, L]: the loop flattens the steps

  def logp_temperature(self, rl) -> float:
    del rl
    return 1.0   # the KL's log-probs: the plain model at temperature 1

  def needs_old_logp(self, rl) -> bool:
    del rl
    return False   # the sampler records the behaviour policy's log-probs

  def loss(self, forward_fn, params, rows, rl, *, config: SamplerConfig):
    """`params` = (θ, φ); `config` gives the sampler's ids (mask, EOS) for its logits."""
    theta, phi = params
    spec = spec_for(rl, rl.block_lengths[0])
    return cogrpo_loss(forward_fn, theta, phi, rows, spec=spec, mode=rl.cogrpo_mode,
                       config=config, clip_eps=rl.clip_eps, beta=rl.beta)

  def finish(self, run, state) -> dict:
    """Print the learned (deterministic) schedule against the hand one; write it as JSON."""
    rl = run.config.rl
    spec = spec_for(rl, rl.block_lengths[0])
    report = sp.describe(spec, state.extra["params"])
    report["mode"] = rl.cogrpo_mode
    report["phi"] = {k: np.asarray(v).tolist() for k, v in state.extra["params"].items()}
    path = run.workdir / "cogrpo_schedule.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    lines = [f"Co-GRPO learned schedule ({rl.cogrpo_mode}), per step:",
             f"  tokens committed  hand {report['hand_counts']}  learned {report['counts']}",
             f"  temperature       hand {spec.temperature:g}  learned {report['temperature']}"]
    for knob in ("rank_temperature", "cfg_scale"):
      if knob in report:
        lines.append(f"  {knob:<17} learned {report[knob]}")
    print("\n".join(lines))
    logging.info("learned schedule written to %s", path)
    return report
