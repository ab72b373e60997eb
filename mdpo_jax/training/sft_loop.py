"""The supervised loop (trainer = pretrain | sft): data → jitted step → logs/checkpoints.

Resumable by construction: the checkpoint holds params, optimiser state, step, the RNG key and
the grain iterator's position, and per-step randomness is `fold_in(key, step)`, so a run that is
stopped and restarted produces the same losses as one that never stopped.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from mdpo_jax import parallel, tasks
from mdpo_jax.data import generated, pipeline
from mdpo_jax.diffusion import losses
from mdpo_jax.models import ar
from mdpo_jax.training import run as run_lib
from mdpo_jax.training import state as state_lib
from mdpo_jax.training import steps
from mdpo_jax.training.policy import Policy

TRAINERS = ("pretrain", "sft")
_LOGGED_AUX = ("masked_fraction", "masked_ce", "next_token_ce")


def make_train_step(trainer: str, policy: Policy, optimizer, schedule, *, accum: int,
                    mask_eps: float):
  """state, batch, base → state, metrics: `accum` micro-batches (one scan), one optimiser update.

  `state.params` are what trains (full params, or LoRA adapters); `base` is the policy's frozen
  base (None for a full fine-tune), an argument of the step, never differentiated. A causal
  model (the AR baseline) trains with `models.ar`'s next-token twins of the diffusion losses.
  """
  mask_id = policy.model_cfg.mask_token_id
  objective = ar if policy.model_cfg.causal else losses   # the AR baseline: next-token losses
  loss = objective.sft_loss if trainer == "sft" else objective.pretrain_loss

  def loss_fn(params, batch, rng, base):
    extra = (batch["prompt_mask"],) if trainer == "sft" else ()
    return loss(policy.forward(base), params, batch["tokens"], *extra, rng, mask_id=mask_id,
                eps=mask_eps, attention_mask=batch.get("attention_mask"))

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state: state_lib.TrainState, batch, base=None):
    rng = state.step_key()
    if accum == 1:
      (loss_value, aux), grads = grad_fn(state.params, batch, rng, base)
    else:
      micro_grad = lambda p, mb, i: grad_fn(p, mb, jax.random.fold_in(rng, i), base)  # noqa: E731
      grads, losses_m, aux_m = steps.mean_gradients(
          micro_grad, state.params, steps.split_micro(batch, accum), accum)
      loss_value, aux = losses_m.mean(), jax.tree.map(jnp.mean, aux_m)
    out = {"loss": loss_value, "lr": schedule(state.step)}
    state, norms = steps.apply_gradients(state, grads, optimizer, loss_value)
    out.update(norms)
    out.update({k: v for k, v in aux.items() if k in _LOGGED_AUX})
    return state, out

  return step


def _batch_to_device(batch, mesh, rules=parallel.DEFAULT_RULES):
  sharding = lambda x: parallel.batch_sharding(mesh, np.ndim(x), rules)  # noqa: E731
  return {k: jax.make_array_from_process_local_data(sharding(v), np.asarray(v))
          for k, v in batch.items()}


def build_dataset(run: run_lib.Run, train_problems):
  """The run's grain dataset: the task's SFT examples, or packed pretraining documents."""
  config, model_cfg = run.config, run.model_cfg
  per_process = config.data.batch_size // jax.process_count()
  if config.trainer == "sft":
    examples = [{"prompt": run.task.prompt(p), "answer": run.task.sft_answer(p)}
                for p in train_problems]
    return pipeline.sft_dataset(examples, run.tokenizer, seq_len=config.data.seq_len,
                                eos_id=model_cfg.eos_token_id, seed=config.seed,
                                batch_size=per_process)
  return pipeline.pretrain_dataset(pretrain_source(config.data.pretrain_files), run.tokenizer,
                                   seq_len=config.data.seq_len, seed=config.seed,
                                   batch_size=per_process, eos_id=model_cfg.eos_token_id,
                                   text_key=config.data.text_key)


def pretrain_source(spec: str):
  """`data.pretrain_files`: one JSONL file, comma-separated ArrayRecord files,
  `tfds:NAME:SPLIT` (a TFDS data_source prepared in TFDS_DATA_DIR) or
  `generated:NAME[:DOCS[:SEED]]` (a procedural corpus made on demand: `data/generated.py`)."""
  if generated.is_generated(spec):
    return generated.parse_spec(spec)
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


def _problems(run: run_lib.Run) -> tuple[list, list]:
  """(SFT problems, held-out problems): the task's training split (+ the first
  `task.sft_extra_fresh` of RL's fresh prompts), none for pretraining."""
  if run.task is None:
    return [], []
  return (tasks.base.sft_problems(run.task, run.config.task.sft_extra_fresh),
          run.task.held_out())


def train(config, workdir: str | Path) -> dict:
  """Train per `config` (trainer pretrain|sft); returns {'step', 'loss', 'eval': rows,
  'params', 'model_config'} (+ 'adapters' with LoRA) of the final state."""
  run, state = run_lib.setup_run(config, workdir)
  try:
    cfg = run.config
    train_problems, held_out = _problems(run)
    run.check_prompt_len(held_out[: cfg.eval.num_problems], "held-out")
    data_iter = iter(build_dataset(run, train_problems))
    state = run.restore(state, data_iter)
    step_fn = jax.jit(make_train_step(cfg.trainer, run.policy, run.optimizer, run.schedule,
                                      accum=cfg.optim.grad_accum_steps,
                                      mask_eps=cfg.optim.mask_eps),
                      donate_argnums=0, out_shardings=(run.state_shardings, None))
    state, step, last, stop = _loop(run, state, step_fn, data_iter, held_out)
    return run_lib.result(run, state, step, held_out=() if stop == "preempted" else held_out,
                          loss=last.get("loss"), stopped=stop)
  finally:
    run.close()


def _loop(run: run_lib.Run, state, step_fn, data_iter, held_out):
  """Steps until train.num_steps, the deadline or SIGTERM; logs, checkpoints, periodic
  evaluation. Returns (state, step, last logged metrics, why it stopped early or None)."""
  cfg = run.config.train
  num_steps = cfg.num_steps
  step = int(state.step)
  history, last, stop = [], {}, None
  bar = tqdm(total=num_steps, initial=step, desc=run.config.trainer, unit="step",
             disable=jax.process_index() != 0)
  while step < num_steps and stop is None:
    batch = _batch_to_device(next(data_iter), run.mesh, run.rules)
    state, out = step_fn(state, batch, run.policy.base)
    step += 1
    history.append(out)
    bar.update(1)
    stop = run.stop_reason()
    if step % cfg.log_every == 0 or step == num_steps or stop:
      last = run.writer.write(step, run_lib.window_mean(history))
      history = []
      bar.set_postfix(loss=f"{last['loss']:.4f}")
      run_lib.check_skips(run, state, step)
    if step % cfg.checkpoint_every == 0 or step == num_steps or stop:
      run_lib.check_skips(run, state, step)
      run.save(step, state, data_iter)
    if cfg.eval_every and step % cfg.eval_every == 0 and step != num_steps and held_out:
      run.log_eval(step, run.evaluate(run.policy.merged(state.params), held_out))
  if stop:
    logging.warning("stopped at step %d (%s); the checkpoint is saved, re-run to resume",
                    step, stop)
  bar.close()
  return state, step, last, stop
