"""RL trainers: MDPO (trainer = mdpo) and the diffu-GRPO baseline (trainer = diffu_grpo).

One *update* = one rollout batch (B prompts × G samples) → rewards → examples → `rl.inner_iters`
optimiser steps over all its examples (gradients accumulated over micro-batches, one optimiser
step per pass, SPEC §4.6). Prompts for update u are drawn with `default_rng([seed, u])` and
all randomness is `fold_in(key, u)`, so a resumed run repeats exactly what an uninterrupted one
would do; the checkpoint holds params, optimiser state, the update counter and the RNG key.

With LoRA (`model.lora_rank` > 0) the trainable params are the adapters and the loaded params the
frozen base, an argument of the jitted update (as in `training/loop.py`). Rollouts and old-policy
log-probs run the policy itself, the LoRA forward on {"base", "adapters"}, not merged weights: it
is exactly the function the loss differentiates (so the importance ratio is 1 on-policy even with
bf16 weights, where a merged W + ΔW would round small updates away) and needs no second copy of
the weights. The KL reference is the base alone.
"""

from __future__ import annotations

import functools
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
from mdpo_jax.models import llada, lora
from mdpo_jax.rl import advantages as adv_lib
from mdpo_jax.rl import diffu_grpo, mdpo, rollout
from mdpo_jax.rl.scoring import RewardPool
from mdpo_jax.sampling.sampler import SamplerConfig
from mdpo_jax.training import checkpoint, evaluation, loop, metrics, optim, setup
from mdpo_jax.training import state as state_lib
from mdpo_jax.training import task_data

TRAINERS = ("mdpo", "diffu_grpo")
FILTERS = ("none", "over_denoising")


def _global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def validate(config) -> None:
  rl = config.rl
  if config.trainer not in TRAINERS:
    raise ValueError(f"trainer={config.trainer!r}: allowed {TRAINERS}")
  for name in ("prompts_per_update", "group_size", "top_k", "inner_iters", "micro_batch",
               "num_updates"):
    if int(rl[name]) < 1:
      raise ValueError(f"rl.{name}={rl[name]}: must be ≥ 1")
  if rl.group_size < 2:
    raise ValueError(f"rl.group_size={rl.group_size}: group-relative advantages need ≥ 2")
  if rl.temperature <= 0:
    raise ValueError(f"rl.temperature={rl.temperature}: rollouts must sample (T > 0)")
  evaluation.validate_config(config)
  if rl.filter not in FILTERS:
    raise ValueError(f"rl.filter={rl.filter!r}: allowed {FILTERS}")
  if rl.prompt_source not in task_data.PROMPT_SOURCES:
    raise ValueError(f"rl.prompt_source={rl.prompt_source!r}: allowed {task_data.PROMPT_SOURCES}")
  for block in evaluation.config_list(rl.block_lengths):
    SamplerConfig(gen_length=rl.gen_length, block_length=int(block), steps=rl.steps)
  if config.trainer == "mdpo" and rl.top_k > rl.steps:
    raise ValueError(f"rl.top_k={rl.top_k} must be ≤ rl.steps={rl.steps}")
  n_rows = rl.prompts_per_update * rl.group_size * (rl.top_k if config.trainer == "mdpo" else 1)
  if n_rows % rl.micro_batch:
    raise ValueError(f"rl.micro_batch={rl.micro_batch} must divide the {n_rows} training rows "
                     "of an update (prompts_per_update × group_size [× top_k for mdpo])")


def _accumulated_update(loss_fn, optimizer, micro_batch: int):
  """state, rows[, base] → state, metrics: mean gradient over micro-batches, one optimiser step.
  `loss_fn(params, rows, base)`; `base` (frozen LoRA base, or None) is never differentiated."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def update(state: state_lib.TrainState, rows, base=None):
    n = jax.tree.leaves(rows)[0].shape[0]
    micro = jax.tree.map(lambda x: x.reshape(n // micro_batch, micro_batch, *x.shape[1:]), rows)

    def body(grads, mb):
      (loss, aux), g = grad_fn(state.params, mb, base)
      return jax.tree.map(jnp.add, grads, g), (loss, aux)

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    grads, (losses, aux) = jax.lax.scan(body, zeros, micro)
    grads = jax.tree.map(lambda g: g / (n // micro_batch), grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    out = {"loss": losses.mean(), "grad_norm": _global_norm(grads)}
    out.update({k: jnp.mean(v) for k, v in aux.items()})
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state), out

  return update


def _logprob_fn(fwd, temperature: float, micro_batch: int):
  """Jitted log-probs of targets for many rows, micro-batched (old policy / reference)."""
  def run(params, tokens, targets, attention_mask):
    n = tokens.shape[0]
    split = lambda x: x.reshape(n // micro_batch, micro_batch, *x.shape[1:])  # noqa: E731
    out = jax.lax.map(lambda xs: mdpo.token_logprobs(fwd, params, xs[0], xs[1],
                                                     temperature=temperature,
                                                     attention_mask=xs[2]),
                      (split(tokens), split(targets), split(attention_mask)))
    return out.reshape(n, -1)
  return jax.jit(run)


class _Policy:
  """How the trainer runs the policy: full params, or LoRA adapters on a frozen base.

  `forward(base)` is the loss's forward of the trainable params (built inside the jitted update,
  where `base` is a traced argument); `sample_fn` on `sample_params(params)` runs the policy
  outside the gradient (rollouts, the over-denoising filter, old-policy log-probs); `merged` gives
  plain-forward params (evaluation). `base` is None for a full fine-tune.
  """

  def __init__(self, model_cfg, lora_cfg, base):
    self.model_cfg, self.lora_cfg, self.base = model_cfg, lora_cfg, base
    self.sample_fn = (llada.forward_fn(model_cfg) if lora_cfg is None
                      else lora.policy_forward_fn(model_cfg, lora_cfg))

  def forward(self, base):
    if self.lora_cfg is None:
      return llada.forward_fn(self.model_cfg)
    return lora.forward_fn(self.model_cfg, self.lora_cfg, base)

  def sample_params(self, params):
    return params if self.lora_cfg is None else {"base": self.base, "adapters": params}

  def merged(self, params):
    if self.lora_cfg is None:
      return params
    return jax.jit(lora.merge, static_argnums=0)(self.lora_cfg, self.base, params)


def train(config, workdir: str | Path) -> dict:
  """Run MDPO or diffu-GRPO per `config`; returns {'update', 'eval', 'history', 'params',
  'model_config'} (+ 'adapters' with LoRA) of the final state."""
  validate(config)
  rl = config.rl
  workdir = Path(workdir)
  mesh = parallel.mesh_from_config(config.mesh)
  tokenizer = setup.make_tokenizer(config)
  model_cfg, params = setup.load_model(config, tokenizer, mesh, jax.random.key(config.seed),
                                       lora_supported=True)
  lora_cfg = setup.lora_config(config, model_cfg)
  if lora_cfg is None:   # full fine-tune: the reference is a copy of the start (β = 0: none)
    policy = _Policy(model_cfg, None, None)
    ref_params = jax.tree.map(jnp.copy, params) if rl.beta > 0 else None
  else:                  # adapters train; the loaded params are the frozen base and the reference
    policy = _Policy(model_cfg, lora_cfg, params)
    ref_params = params if rl.beta > 0 else None
    params = setup.init_adapters(config, model_cfg, lora_cfg, mesh)
  optimizer = optim.make_optimizer(config.optim, rl.num_updates * rl.inner_iters)
  state = jax.jit(functools.partial(state_lib.create, optimizer=optimizer, seed=config.seed))(
      params)
  shardings = parallel.tree_shardings(state, mesh)
  state = jax.device_put(state, shardings)

  sft_problems, held_out = task_data.splits(config)
  train_problems = task_data.rl_problems(config, sft_problems, held_out)
  logging.info("RL prompts: %d (rl.prompt_source=%s)", len(train_problems), rl.prompt_source)
  prompts_all, pmask_all = pipeline.eval_prompts(
      [task_data.prompt_text(config, p) for p in train_problems], tokenizer,
      prompt_len=config.data.prompt_len, pad_id=model_cfg.pad_token_id)
  stops = (model_cfg.eos_token_id, model_cfg.eot_token_id)
  reward = task_data.reward_fn(config)
  pool = RewardPool(reward, num_workers=rl.reward_workers, timeout_s=rl.reward_timeout_s,
                    key_fn=task_data.problem_key)

  if config.trainer == "mdpo":
    def loss_fn(params, rows, base):
      return mdpo.mdpo_loss(policy.forward(base), params, rows, temperature=rl.temperature,
                            gen_length=rl.gen_length, clip_eps=rl.clip_eps, beta=rl.beta)
  else:
    def loss_fn(params, rows, base):
      return diffu_grpo.diffu_grpo_loss(policy.forward(base), params, rows, clip_eps=rl.clip_eps,
                                        beta=rl.beta)
  update_fn = jax.jit(_accumulated_update(loss_fn, optimizer, rl.micro_batch), donate_argnums=0,
                      out_shardings=(shardings, None))
  logp_temperature = rl.temperature if config.trainer == "mdpo" else 1.0
  logprobs = _logprob_fn(policy.sample_fn, logp_temperature, rl.micro_batch)
  ref_logprobs = (logprobs if lora_cfg is None   # the reference is the plain model either way
                  else _logprob_fn(llada.forward_fn(model_cfg), logp_temperature, rl.micro_batch))

  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", max_to_keep=config.train.keep_checkpoints,
                                 async_save=config.train.async_checkpoint)
  if ckpt.latest_step() is not None:
    _, state = ckpt.restore(checkpoint.abstract_like(state))
    logging.info("resumed at optimiser step %d", int(state.step))
  start_update = int(state.step) // rl.inner_iters
  config_json = checkpoint.config_json(config)
  writer = metrics.MetricWriter(workdir, tensorboard=config.logging.tensorboard,
                                wandb=config.logging.wandb,
                                wandb_project=config.logging.wandb_project, run_config=config_json)

  candidates = np.arange(len(train_problems))
  filter_epoch = -1
  key = jax.random.key(config.seed + 17)
  history = []
  deadline = (time.time() + 60 * config.train.max_minutes) if config.train.max_minutes else None
  bar = tqdm(range(start_update, rl.num_updates), desc=config.trainer, unit="update",
             disable=jax.process_index() != 0)
  update = start_update
  try:
    for update in bar:
      started = time.time()
      ukey = jax.random.fold_in(key, update)
      if rl.filter == "over_denoising":
        epoch = update // max(rl.filter_refresh_updates, 1)
        if epoch != filter_epoch:
          candidates = over_denoising_candidates(
              config, model_cfg, policy.sample_fn, policy.sample_params(state.params), tokenizer,
              prompts_all, pmask_all, train_problems, pool, stops, seed=config.seed + epoch)
          filter_epoch = epoch
          writer.write(update, {"filter/kept": len(candidates)})
      pick = np.random.default_rng([config.seed, update]).choice(
          candidates, rl.prompts_per_update, replace=len(candidates) < rl.prompts_per_update)
      block = int(np.random.default_rng([config.seed, update, 1]).choice(
          [int(b) for b in evaluation.config_list(rl.block_lengths)]))
      sc = SamplerConfig.for_model(model_cfg, gen_length=rl.gen_length, block_length=block,
                                   steps=rl.steps, temperature=rl.temperature,
                                   remasking=rl.remasking)
      is_mdpo = config.trainer == "mdpo"
      batch = rollout.sample(policy.sample_fn, policy.sample_params(state.params),
                             prompts_all[pick], pmask_all[pick],
                             [train_problems[i] for i in pick], sc, ukey,
                             group_size=rl.group_size, with_trajectory=is_mdpo)
      if is_mdpo:
        rewards_NxT, stats = rollout.step_rewards(batch, tokenizer, pool, stops)
        final = rewards_NxT[:, -1]
        rows = rollout.mdpo_examples(batch, rewards_NxT, top_k=rl.top_k,
                                     mask_id=model_cfg.mask_token_id)
        tokens_in, targets = rows["x_t"], rows["target"]
        extra = {"reward/step_mean": float(rewards_NxT.mean()),
                 "reward/over_denoised": float(rollout.over_denoised(rewards_NxT, final).mean())}
      else:
        final, stats = rollout.final_rewards(batch, tokenizer, pool, stops)
        p = batch.prompts_NxP.shape[1]
        generated = np.zeros(batch.tokens_NxL.shape, bool)
        generated[:, p:] = True
        # Loss on tokens up to and including the first EOS (d1); the input masks every
        # generated position, padding after EOS included.
        completion = diffu_grpo.completion_loss_mask(batch.tokens_NxL, generated,
                                                     eos_id=model_cfg.eos_token_id)
        attention = np.concatenate(
            [batch.prompt_mask_NxP, np.ones_like(batch.tokens_NxL[:, p:])], 1).astype(np.int32)
        prompt_pos = np.zeros_like(generated)
        prompt_pos[:, :p] = batch.prompt_mask_NxP.astype(bool)
        inputs = diffu_grpo.one_step_inputs(
            jax.random.fold_in(ukey, 1), batch.tokens_NxL, prompt_pos, generated,
            mask_id=model_cfg.mask_token_id, prompt_mask_prob=rl.prompt_mask_prob)
        adv = np.asarray(adv_lib.group_advantages(final.reshape(-1, rl.group_size))).reshape(-1)
        rows = {"inputs": np.asarray(inputs), "tokens": batch.tokens_NxL.astype(np.int32),
                "completion_mask": completion, "adv": adv.astype(np.float32),
                "attention_mask": attention}
        tokens_in, targets = rows["inputs"], rows["tokens"]
        extra = {}
      groups = final.reshape(-1, rl.group_size)
      mixed = float(((groups > 0).any(1) & (groups <= 0).any(1)).mean())
      needs_old = rl.inner_iters > 1 or config.trainer == "diffu_grpo"
      if needs_old:
        rows["old_logp"] = logprobs(policy.sample_params(state.params), tokens_in, targets,
                                    rows["attention_mask"])
      if rl.beta > 0:
        rows["ref_logp"] = ref_logprobs(ref_params, tokens_in, targets, rows["attention_mask"])
      rows = parallel.shard_batch(rows, mesh)
      outs = []
      for _ in range(rl.inner_iters):
        state, out = update_fn(state, rows, policy.base)
        outs.append(out)
      out = jax.tree.map(lambda *xs: float(np.mean(xs)), *outs)
      out.update({"reward/final_mean": float(final.mean()), "reward/mixed_groups": mixed,
                  "reward/timeouts": stats["timeouts"], "reward/errors": stats["errors"],
                  "reward/crashes": stats["crashes"], "block_length": block,
                  "seconds": time.time() - started, **extra})
      logged = writer.write(update + 1, out)
      history.append(logged)
      bar.set_postfix(reward=f"{logged['reward/final_mean']:.3f}")
      done = update + 1 == rl.num_updates
      timed_out = deadline is not None and time.time() > deadline
      if (update + 1) % config.train.checkpoint_every == 0 or done or timed_out:
        ckpt.save(int(state.step), state, config=config_json, force=True)
      if timed_out:
        logging.warning("train.max_minutes reached after update %d", update + 1)
        update += 1
        break
    else:
      update = rl.num_updates
  finally:
    bar.close()
    ckpt.close()
    pool.close()
  # With LoRA, "params" are the merged weights (plain `llada.forward`), "adapters" the trained ones.
  result = {"update": update, "history": history, "eval": [],
            "params": policy.merged(state.params), "model_config": model_cfg}
  if lora_cfg is not None:
    result["adapters"] = state.params
  if held_out:
    result["eval"] = loop.run_eval(config, model_cfg, result["params"], tokenizer, held_out)
    writer.write(update, {f"eval/{r['setting']}/accuracy": r["accuracy"] for r in result["eval"]})
  writer.close()
  return result


def over_denoising_candidates(config, model_cfg, forward_fn, params, tokenizer, prompts_all,
                              pmask_all, problems, pool, stops, *, seed: int) -> np.ndarray:
  """Indices of training prompts whose greedy trajectory (of `forward_fn` on `params`: the
  current policy) has a right intermediate prediction but a wrong final answer (MDPO's data
  filter, SPEC §4.7); all prompts if none qualify."""
  rl = config.rl
  n = min(rl.filter_pool_size, len(problems))
  idx = np.random.default_rng(seed).choice(len(problems), n, replace=False)
  sc = SamplerConfig.for_model(model_cfg, gen_length=rl.gen_length,
                               block_length=int(evaluation.config_list(rl.block_lengths)[0]),
                               steps=rl.steps,
                               remasking=rl.remasking)
  keep = []
  bs = config.eval.batch_size
  for start in range(0, n, bs):
    sl = idx[start:start + bs]
    batch = rollout.sample(forward_fn, params, prompts_all[sl], pmask_all[sl],
                           [problems[i] for i in sl], sc, jax.random.key(0), group_size=1)
    r_NxT, _ = rollout.step_rewards(batch, tokenizer, pool, stops)
    keep.extend(sl[rollout.over_denoised(r_NxT, r_NxT[:, -1])].tolist())
  return np.asarray(keep if keep else idx.tolist())
