"""The RL loop (trainer = any algorithm in `rl.algorithms`: mdpo, diffu_grpo, ...).

One *update* = one rollout batch (B prompts × G samples) → rewards → the algorithm's training
rows → `rl.inner_iters` optimiser steps over all of them (gradients averaged over micro-batches,
one optimiser step per pass, SPEC §4.6). Prompts for update u are drawn with
`default_rng([seed, u])` and all randomness is `fold_in(key, u)`, so a resumed run repeats exactly
what an uninterrupted one would do; the checkpoint holds params, optimiser state, the optimiser
step and the RNG key.

With LoRA the trainable params are the adapters (see `training/policy.py`); the KL reference is
the frozen base, and for a full fine-tune a copy of the starting params (none when β = 0).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from mdpo_jax import parallel
from mdpo_jax.data import pipeline
from mdpo_jax.models import families
from mdpo_jax.rl import algorithms, rollout
from mdpo_jax.rl.common import token_logprobs
from mdpo_jax.rl.scoring import RewardPool
from mdpo_jax.sampling.sampler import SamplerConfig
from mdpo_jax.training import policy as policy_lib
from mdpo_jax.training import run as run_lib
from mdpo_jax.training import state as state_lib
from mdpo_jax.training import steps


def make_update(algorithm, run: run_lib.Run):
  """state, rows, base → state, metrics: the mean gradient of the algorithm's loss over
  `rl.micro_batch`-row micro-batches, one optimiser step.

  An algorithm with its own trainable state (optional hooks `extra_params`, `extra_optimizer`)
  is differentiated w.r.t. (model params, extra params); its `trains(rl)` says which of the two
  step (default both), and `loss_context(run)` gives static keyword arguments of its loss."""
  rl, policy = run.config.rl, run.policy
  extra = extra_state(algorithm, rl)
  trains_model, trains_extra = (algorithm.trains(rl) if hasattr(algorithm, "trains")
                                else (True, True))
  context = algorithm.loss_context(run) if hasattr(algorithm, "loss_context") else {}

  def loss_fn(params, rows, base):
    return algorithm.loss(policy.forward(base), params, rows, rl, **context)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def update(state, rows, base=None):
    n = jax.tree.leaves(rows)[0].shape[0]
    num_micro = n // rl.micro_batch
    params = state.params if extra is None else (state.params, state.extra["params"])
    grads, losses_m, aux_m = steps.mean_gradients(
        lambda p, mb, i: grad_fn(p, mb, base), params, steps.split_micro(rows, num_micro),
        num_micro)
    grads, extra_grads = (grads, None) if extra is None else grads
    loss = losses_m.mean()
    if trains_model:
      state, out = steps.apply_gradients(state, grads, run.optimizer, loss)
    else:
      state, out = state.replace(step=state.step + 1), {"grad_norm": 0.0, "skipped": 0.0}
    if extra is not None:
      out[f"{algorithm.extra_name}/grad_norm"] = optax.tree.norm(extra_grads)
      if trains_extra:
        state = _step_extra(state, extra_grads, extra[1], loss)
    out = {"loss": loss, **out, **{k: jnp.mean(v) for k, v in aux_m.items()}}
    return state, out

  shardings = run.state_shardings
  if extra is not None:
    shardings = state_lib.with_extra(shardings, _extra_shardings(run, extra))
  return jax.jit(update, donate_argnums=0, out_shardings=(shardings, None))


def extra_state(algorithm, rl):
  """(fresh extra params, their optimiser) of an algorithm with its own trainable state, or
  None (optional hooks `extra_params(rl)`, `extra_optimizer(rl)`)."""
  if not hasattr(algorithm, "extra_params"):
    return None
  return algorithm.extra_params(rl), algorithm.extra_optimizer(rl)


def _step_extra(state, grads, optimizer, loss):
  """One optimiser step on the extra params; none when the loss is not finite."""
  params, opt_state = state.extra["params"], state.extra["opt_state"]
  updates, new_opt = optimizer.update(grads, opt_state, params)
  new = {"params": optax.apply_updates(params, updates), "opt_state": new_opt}
  keep = jnp.isfinite(loss)
  return state.replace(extra=jax.tree.map(lambda a, b: jnp.where(keep, a, b), new,
                                          state.extra))


def _extra_shardings(run: run_lib.Run, extra) -> dict:
  """The extra state's shardings: replicated (it is small)."""
  replicated = jax.sharding.NamedSharding(run.mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(lambda _: replicated, jax.eval_shape(
      lambda p: state_lib.fresh_extra(p, extra[1]), extra[0]))


def logprob_fn(forward_fn, temperature: float, micro_batch: int):
  """Jitted log-probs of targets for many rows, micro-batched (old policy / reference)."""
  def run(params, tokens, targets, attention_mask):
    n = tokens.shape[0]
    split = lambda x: x.reshape(n // micro_batch, micro_batch, *x.shape[1:])  # noqa: E731
    out = jax.lax.map(lambda xs: token_logprobs(forward_fn, params, xs[0], xs[1],
                                                temperature=temperature, attention_mask=xs[2]),
                      (split(tokens), split(targets), split(attention_mask)))
    return out.reshape(n, -1)
  return jax.jit(run)


class _Learner:
  """The per-update work of the RL loop: rollouts → rows → (old/ref log-probs) → updates."""

  def __init__(self, run: run_lib.Run, algorithm, prompts, state_params):
    self.run, self.algorithm = run, algorithm
    rl = run.config.rl
    self.rl = rl
    self.problems, self.prompts_all, self.pmask_all = prompts
    self.pool = RewardPool(run.task.reward, num_workers=rl.reward_workers,
                           timeout_s=rl.reward_timeout_s, key_fn=run.task.key)
    self.scorer = rollout.Scorer(run.tokenizer, self.pool, run.stop_ids)
    self.update_fn = make_update(algorithm, run)
    temperature = algorithm.logp_temperature(rl)
    self.logprobs = logprob_fn(run.policy.sample_fn, temperature, rl.micro_batch)
    lora_on = run.policy.lora_cfg is not None   # the reference is the plain model either way
    self.ref_logprobs = (logprob_fn(families.forward_fn(run.model_cfg), temperature,
                                    rl.micro_batch) if lora_on else self.logprobs)
    self.ref_params = None
    if rl.beta > 0:   # full fine-tune: a copy of the start; LoRA: the frozen base
      self.ref_params = (run.policy.base if lora_on
                         else policy_lib.frozen_copy(jax.tree.map(jnp.copy, state_params),
                                                     run.model_cfg))
    self.candidates = np.arange(len(self.problems))
    self.filter_epoch = -1

  def sampler_config(self, block: int, temperature: float | None = None) -> SamplerConfig:
    kw = {} if temperature is None else {"temperature": temperature}
    return SamplerConfig.for_model(self.run.model_cfg, gen_length=self.rl.gen_length,
                                   block_length=block, steps=self.rl.steps,
                                   remasking=self.rl.remasking, cache=self.rl.cache,
                                   head_chunk=self.rl.head_chunk, **kw)

  def refresh_filter(self, update: int, params) -> None:
    """MDPO's over-denoising filter (SPEC §4.7), recomputed every `rl.filter_refresh_updates`."""
    epoch = update // self.rl.filter_refresh_updates
    if self.rl.filter != "over_denoising" or epoch == self.filter_epoch:
      return
    self.candidates = over_denoising_candidates(self, params, seed=self.run.config.seed + epoch)
    self.filter_epoch = epoch
    self.run.writer.write(update, {"filter/kept": len(self.candidates)})

  def one_update(self, state, update: int, key):
    """Rollouts, rows and `rl.inner_iters` optimiser steps; returns (state, logged metrics)."""
    rl, seed, policy = self.rl, self.run.config.seed, self.run.policy
    started = time.time()
    ukey = jax.random.fold_in(key, update)
    self.refresh_filter(update, policy.sample_params(state.params))
    pick = np.random.default_rng([seed, update]).choice(
        self.candidates, rl.prompts_per_update,
        replace=len(self.candidates) < rl.prompts_per_update)
    block = int(np.random.default_rng([seed, update, 1]).choice(list(rl.block_lengths)))
    batch = self._rollout(state, pick, self.sampler_config(block, rl.temperature), ukey)
    made = self.algorithm.rows(batch, self.scorer, ukey, rl,
                               mask_id=self.run.model_cfg.mask_token_id,
                               eos_id=self.run.model_cfg.eos_token_id)
    rows = self._with_logprobs(made.rows, state)
    outs = []
    for _ in range(rl.inner_iters):
      state, out = self.update_fn(state, rows, policy.base)
      outs.append(out)
    out = run_lib.window_mean(outs)
    if rl.inner_iters > 1:   # how the policy moves away from the rollouts' within an update
      out.update({f"inner/{i}/{k}": float(o[k]) for i, o in enumerate(outs)
                  for k in ("loss", "ratio_mean", "clip_frac") if k in o})
    groups = made.final_rewards.reshape(-1, rl.group_size)
    out.update({"reward/final_mean": float(made.final_rewards.mean()),
                # groups whose rewards differ (binary: some right, some wrong): a learning signal
                "reward/mixed_groups": float((groups.max(1) > groups.min(1)).mean()),
                **{f"reward/{k}": made.stats[k] for k in ("timeouts", "errors", "crashes")},
                "block_length": block, "seconds": time.time() - started, **made.metrics})
    return state, out

  def _rollout(self, state, pick, config: SamplerConfig, key):
    """The rollout batch of the prompts `pick`: the plain sampler, or the algorithm's own
    (optional hook `rollout`, e.g. Co-GRPO's sampled schedules)."""
    policy, rl = self.run.policy, self.rl
    args = (policy.sample_params(state.params), self.prompts_all[pick], self.pmask_all[pick],
            [self.problems[i] for i in pick])
    custom = getattr(self.algorithm, "rollout", None)
    if custom is not None:
      return custom(policy.sample_fn, args[0], state, *args[1:], config, key, rl)
    return rollout.sample(policy.sample_fn, *args, config, key, group_size=rl.group_size,
                          with_trajectory=self.algorithm.uses_trajectory, place=self.place_rows)

  def place_rows(self, x):
    """Rollout prompts split over the data axes (each device samples its share of the rows)."""
    return parallel.shard_rows(x, self.run.mesh, self.run.rules)

  def _with_logprobs(self, rows, state):
    """The rows on the mesh, with old-policy / reference log-probs where the loss needs them."""
    tokens_in, targets = self.algorithm.logprob_io(rows)
    if self.algorithm.needs_old_logp(self.rl):
      rows["old_logp"] = _per_row_logprobs(self.logprobs, self.run.policy.sample_params(
          state.params), tokens_in, targets, rows["attention_mask"])
    if self.rl.beta > 0:
      rows["ref_logp"] = _per_row_logprobs(self.ref_logprobs, self.ref_params, tokens_in, targets,
                                           rows["attention_mask"])
    return parallel.shard_batch(rows, self.run.mesh, self.run.rules)


def _per_row_logprobs(fn, params, tokens, targets, attention_NxL):
  """`fn`'s log-probs of [N, L] inputs, or of [N, S, L] ones (several inputs per training row,
  e.g. Co-GRPO's steps: flattened, the row's attention mask repeated), shaped like `tokens`."""
  shape = tokens.shape
  if len(shape) == 2:
    return fn(params, tokens, targets, attention_NxL)
  flat = lambda a: a.reshape(-1, shape[-1])  # noqa: E731
  attention = np.broadcast_to(np.asarray(attention_NxL)[:, None], shape)
  return fn(params, flat(tokens), flat(targets), flat(attention)).reshape(shape)


def rl_prompts(run: run_lib.Run):
  """(problems, prompt ids, prompt masks) RL samples from (`rl.prompt_source`)."""
  rl = run.config.rl
  problems = (run.task.train() if rl.prompt_source == "train"
              else run.task.fresh(rl.fresh_size, "rl.fresh_size"))
  run.check_prompt_len(problems, "RL")
  run.check_prompt_len(run.task.held_out()[: run.config.eval.num_problems], "held-out")
  logging.info("RL prompts: %d (rl.prompt_source=%s)", len(problems), rl.prompt_source)
  prompts, mask = pipeline.eval_prompts([run.task.prompt(p) for p in problems], run.tokenizer,
                                        prompt_len=run.config.data.prompt_len,
                                        pad_id=run.model_cfg.pad_token_id)
  return problems, prompts, mask


def train(config, workdir: str | Path) -> dict:
  """Run the RL algorithm `config.trainer`; returns {'step', 'update', 'loss', 'eval',
  'history', 'params', 'model_config'} (+ 'adapters' with LoRA) of the final state."""
  run, state = run_lib.setup_run(config, workdir)
  learner = None
  try:
    algorithm = algorithms.get(run.config.trainer)
    learner = _Learner(run, algorithm, rl_prompts(run), state.params)
    extra = extra_state(algorithm, run.config.rl)
    if extra is not None:   # the algorithm's own trainable state (Co-GRPO's schedule policy)
      state = state_lib.with_extra(state, jax.device_put(state_lib.fresh_extra(*extra),
                                                         _extra_shardings(run, extra)))
    state = run.restore(state)
    state, update, history, stop = _loop(run, learner, state)
    if hasattr(algorithm, "finish"):       # optional hook: the algorithm's end-of-run report
      algorithm.finish(run, state)
    held_out = () if stop == "preempted" else run.task.held_out()
    return run_lib.result(run, state, update, held_out=held_out, update=update,
                          history=history, loss=None, stopped=stop)
  finally:
    if learner is not None:
      learner.pool.close()
    run.close()


def _loop(run: run_lib.Run, learner: _Learner, state):
  """Updates until rl.num_updates, the deadline or SIGTERM; logs and checkpoints. Returns
  (state, updates done, logged rows, why it stopped early or None)."""
  rl, train_cfg = run.config.rl, run.config.train
  update = int(state.step) // rl.inner_iters
  key = jax.random.key(run.config.seed + 17)
  history, stop = [], None
  bar = tqdm(total=rl.num_updates, initial=update, desc=run.config.trainer, unit="update",
             disable=jax.process_index() != 0)
  while update < rl.num_updates and stop is None:
    state, out = learner.one_update(state, update, key)
    update += 1
    logged = run.writer.write(update, out)
    run_lib.check_skips(run, state, update, "update")
    history.append(logged)
    bar.update(1)
    bar.set_postfix(reward=f"{logged['reward/final_mean']:.3f}")
    stop = run.stop_reason()
    if update % train_cfg.checkpoint_every == 0 or update == rl.num_updates or stop:
      run.save(int(state.step), state)
  if stop:
    logging.warning("stopped after update %d (%s); the checkpoint is saved, re-run to resume",
                    update, stop)
  bar.close()
  return state, update, history, stop


def over_denoising_candidates(learner: _Learner, params, *, seed: int) -> np.ndarray:
  """Indices of RL prompts whose greedy trajectory (of the current policy, `params`) has a right
  intermediate prediction but a wrong final answer (MDPO's data filter, SPEC §4.7); all scanned
  prompts if none qualify."""
  rl, run = learner.rl, learner.run
  n = min(rl.filter_pool_size, len(learner.problems))
  idx = np.random.default_rng(seed).choice(len(learner.problems), n, replace=False)
  sc = learner.sampler_config(rl.block_lengths[0])
  keep = []
  bs = run.config.eval.batch_size
  for start in range(0, n, bs):
    sl = idx[start:start + bs]
    batch = rollout.sample(run.policy.sample_fn, params, learner.prompts_all[sl],
                           learner.pmask_all[sl], [learner.problems[i] for i in sl], sc,
                           jax.random.key(0), group_size=1, place=learner.place_rows)
    r_NxT, _ = learner.scorer.step_rewards(batch)
    keep.extend(sl[rollout.over_denoised(r_NxT, r_NxT[:, -1])].tolist())
  return np.asarray(keep if keep else idx.tolist())
