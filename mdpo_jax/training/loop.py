"""The supervised training loop (trainer = pretrain | sft): data → jitted step → logs/checkpoints.

Resumable by construction: the checkpoint holds params, optimiser state, step, the RNG key and
the grain iterator's position, and per-step randomness is `fold_in(key, step)`, so a run that is
stopped and restarted produces the same losses as one that never stopped.
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
from mdpo_jax.diffusion import losses
from mdpo_jax.models import llada, lora
from mdpo_jax.training import checkpoint, evaluation, metrics, optim, setup, state as state_lib
from mdpo_jax.training import task_data

TRAINERS = ("pretrain", "sft")


def _global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def _micro_batches(batch, accum: int):
  return jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)


def make_train_step(trainer: str, model_cfg: llada.LLaDAConfig,
                    optimizer: optax.GradientTransformation, schedule, *, accum: int,
                    mask_eps: float, lora_cfg: lora.LoraConfig | None = None):
  """state, batch[, base] → state, metrics: `accum` micro-batches (lax.scan), one optimiser update.

  With `lora_cfg`, `state.params` are the LoRA adapters (the only trainable pytree) and `base`
  is the frozen base params: an argument of the step, never differentiated or updated.
  """

  def loss_fn(params, batch, rng, base):
    fwd = (llada.forward_fn(model_cfg) if lora_cfg is None
           else lora.forward_fn(model_cfg, lora_cfg, base))
    if trainer == "sft":
      return losses.sft_loss(fwd, params, batch["tokens"], batch["prompt_mask"], rng,
                             mask_id=model_cfg.mask_token_id, eps=mask_eps,
                             attention_mask=batch.get("attention_mask"))
    return losses.pretrain_loss(fwd, params, batch["tokens"], rng,
                                mask_id=model_cfg.mask_token_id, eps=mask_eps,
                                attention_mask=batch.get("attention_mask"))

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state: state_lib.TrainState, batch, base=None):
    rng = state.step_key()
    if accum == 1:
      (loss, aux), grads = grad_fn(state.params, batch, rng, base)
    else:
      def body(carry, xs):
        i, micro = xs
        (loss_i, aux_i), g = grad_fn(state.params, micro, jax.random.fold_in(rng, i), base)
        return jax.tree.map(jnp.add, carry, g), (loss_i, aux_i)
      zeros = jax.tree.map(jnp.zeros_like, state.params)
      grads, (losses_a, aux_a) = jax.lax.scan(
          body, zeros, (jnp.arange(accum), _micro_batches(batch, accum)))
      grads = jax.tree.map(lambda g: g / accum, grads)
      loss, aux = losses_a.mean(), jax.tree.map(jnp.mean, aux_a)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    out = {"loss": loss, "grad_norm": _global_norm(grads), "lr": schedule(state.step)}
    out.update({k: v for k, v in aux.items() if k in ("masked_fraction", "masked_ce")})
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), out

  return step


def _batch_to_device(batch, mesh):
  sharding = lambda x: parallel.batch_sharding(mesh, np.ndim(x))  # noqa: E731
  return {k: jax.make_array_from_process_local_data(sharding(v), np.asarray(v))
          for k, v in batch.items()}


def build_dataset(config, tokenizer, model_cfg, train_problems):
  per_process = config.data.batch_size // jax.process_count()
  if config.trainer == "sft":
    return pipeline.sft_dataset(task_data.sft_examples(config, train_problems), tokenizer,
                                seq_len=config.data.seq_len, eos_id=model_cfg.eos_token_id,
                                seed=config.seed, batch_size=per_process)
  return pipeline.pretrain_dataset(pretrain_source(config.data.pretrain_files), tokenizer,
                                   seq_len=config.data.seq_len, seed=config.seed,
                                   batch_size=per_process, eos_id=model_cfg.eos_token_id,
                                   text_key=config.data.text_key)


def pretrain_source(spec: str):
  """`data.pretrain_files`: one JSONL file, comma-separated ArrayRecord files, or
  `tfds:NAME:SPLIT` (a TFDS data_source prepared in TFDS_DATA_DIR)."""
  files = [f for f in spec.split(",") if f]
  if not files:
    raise ValueError("data.pretrain_files is empty: trainer=pretrain needs a JSONL file, "
                     "ArrayRecord files or tfds:NAME:SPLIT")
  if files[0].startswith("tfds:"):
    _, name, split = (files[0].split(":") + [""])[:3]
    return pipeline.tfds_source(name, split=split or "train")
  if all(f.endswith(".jsonl") for f in files):
    if len(files) > 1:
      raise ValueError(f"data.pretrain_files: one JSONL file at a time, got {len(files)}")
    return pipeline.jsonl_source(files[0], text_key=None)
  if all(".array_record" in f or ".arrayrecord" in f for f in files):
    return pipeline.array_record_source(files)
  raise ValueError(f"data.pretrain_files={spec!r}: expected *.jsonl, *.array_record* files or "
                   "tfds:NAME:SPLIT")


def validate(config) -> None:
  if config.trainer not in TRAINERS:
    raise ValueError(f"trainer={config.trainer!r}: allowed {TRAINERS}")
  accum = config.optim.grad_accum_steps
  if accum < 1 or config.data.batch_size % accum:
    raise ValueError(f"optim.grad_accum_steps={accum} must be ≥ 1 and divide "
                     f"data.batch_size={config.data.batch_size}")
  if config.data.batch_size % jax.process_count():
    raise ValueError(f"data.batch_size={config.data.batch_size} must be divisible by the "
                     f"{jax.process_count()} processes")
  if config.train.num_steps < 1:
    raise ValueError(f"train.num_steps={config.train.num_steps}: must be ≥ 1")
  if config.train.checkpoint_every < 1 or config.train.log_every < 1:
    raise ValueError("train.checkpoint_every and train.log_every must be ≥ 1")
  evaluation.validate_config(config)


def run_eval(config, model_cfg, params, tokenizer, problems) -> list[dict]:
  ev = config.eval
  problems = problems[: ev.num_problems]
  prompts, mask = pipeline.eval_prompts([task_data.prompt_text(config, p) for p in problems],
                                        tokenizer, prompt_len=config.data.prompt_len,
                                        pad_id=model_cfg.pad_token_id)
  return evaluation.evaluate(model_cfg, params, tokenizer, prompts, mask, problems,
                             task_data.reward_fn(config), evaluation.settings_from_config(ev),
                             gen_length=ev.gen_length, block_length=ev.block_length,
                             batch_size=ev.batch_size, seed=config.seed,
                             trajectory_stats=ev.trajectory_stats)


def train(config, workdir: str | Path) -> dict:
  """Train per `config`; returns {'step', 'loss', 'eval': rows, 'params', 'model_config'} of the
  final state."""
  validate(config)
  workdir = Path(workdir)
  mesh = parallel.mesh_from_config(config.mesh)
  tokenizer = setup.make_tokenizer(config)
  model_cfg, params = setup.load_model(config, tokenizer, mesh, jax.random.key(config.seed),
                                       lora_supported=True)
  lora_cfg = setup.lora_config(config, model_cfg)
  base = None
  if lora_cfg is not None:   # train adapters only; the loaded params become the frozen base
    base = params
    params = setup.init_adapters(config, model_cfg, lora_cfg, mesh)
  full_params = (lambda p: p) if lora_cfg is None else (
      lambda p: jax.jit(lora.merge, static_argnums=0)(lora_cfg, base, p))
  num_steps = config.train.num_steps
  schedule = optim.learning_rate_schedule(config.optim, num_steps)
  optimizer = optim.make_optimizer(config.optim, num_steps)
  state = jax.jit(functools.partial(state_lib.create, optimizer=optimizer, seed=config.seed))(
      params)
  shardings = parallel.tree_shardings(state, mesh)
  state = jax.device_put(state, shardings)

  train_problems, held_out = (task_data.splits(config) if config.trainer == "sft"
                              else ([], []))
  if config.trainer == "sft":
    train_problems = task_data.sft_problems(config, train_problems, held_out)
  dataset = build_dataset(config, tokenizer, model_cfg, train_problems)
  data_iter = iter(dataset)

  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", max_to_keep=config.train.keep_checkpoints,
                                 async_save=config.train.async_checkpoint)
  if ckpt.latest_step() is not None:
    start, state = ckpt.restore(checkpoint.abstract_like(state), data_iter)
    logging.info("resumed from step %d", start)
  config_json = checkpoint.config_json(config)

  step_fn = jax.jit(make_train_step(config.trainer, model_cfg, optimizer, schedule,
                                    accum=config.optim.grad_accum_steps,
                                    mask_eps=config.optim.mask_eps, lora_cfg=lora_cfg),
                    donate_argnums=0, out_shardings=(shardings, None))
  writer = metrics.MetricWriter(workdir, tensorboard=config.logging.tensorboard,
                                wandb=config.logging.wandb,
                                wandb_project=config.logging.wandb_project, run_config=config_json)
  start_step = int(state.step)
  deadline = (time.time() + 60 * config.train.max_minutes) if config.train.max_minutes else None
  history, last = [], {}
  bar = tqdm(total=num_steps, initial=start_step, desc=config.trainer, unit="step",
             disable=jax.process_index() != 0)
  step = start_step
  while step < num_steps:
    batch = _batch_to_device(next(data_iter), mesh)
    state, out = step_fn(state, batch, base)
    step += 1
    history.append(out)
    bar.update(1)
    timed_out = deadline is not None and time.time() > deadline
    if step % config.train.log_every == 0 or step == num_steps or timed_out:
      mean = jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *history)
      last = writer.write(step, mean)
      history = []
      bar.set_postfix(loss=f"{last['loss']:.4f}")
    if step % config.train.checkpoint_every == 0 or step == num_steps or timed_out:
      ckpt.save(step, state, data_iter, config_json, force=True)
    if (config.train.eval_every and step % config.train.eval_every == 0
        and step != num_steps and held_out):
      rows = run_eval(config, model_cfg, full_params(state.params), tokenizer, held_out)
      writer.write(step, {f"eval/{r['setting']}/accuracy": r["accuracy"] for r in rows})
    if timed_out:
      logging.warning("train.max_minutes=%s reached at step %d", config.train.max_minutes, step)
      break
  bar.close()
  ckpt.close()
  # With LoRA, "params" are the merged weights (plain `llada.forward`), "adapters" the trained ones.
  result = {"step": step, "loss": last.get("loss"), "eval": [],
            "params": full_params(state.params), "model_config": model_cfg}
  if lora_cfg is not None:
    result["adapters"] = state.params
  if held_out:
    result["eval"] = run_eval(config, model_cfg, result["params"], tokenizer, held_out)
    writer.write(step, {f"eval/{r['setting']}/accuracy": r["accuracy"] for r in result["eval"]})
  writer.close()
  return result
