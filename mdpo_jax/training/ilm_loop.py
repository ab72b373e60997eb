"""The insertion language model's trainer (trainer = ilm): task rows → deletion loss → updates.

It reuses the run scaffold (`run.Run`: checkpoints with the config, metrics, deadline,
preemption, resume checks; `optim`; `state`; `steps`) and differs from `sft_loop` in three
places only: the model is `models/ilm.py` (LLaDA's encoder + a stop head; `model.family` must
be "llada", whose shape keys it reads), the rows are `data/ilm_rows.py`'s layout ([CLS] prompt
[BOS] answer), and the loss is `diffusion/insertion.py`'s deletion objective.

Sizes from the config: prompts are left-padded to `data.prompt_len`, answers may hold
`eval.gen_length` tokens (the sampler's insertions at most). Batches are drawn from the task's
SFT problems in a shuffled order that is a function of (seed, epoch) alone, so a resumed run
sees the batches an uninterrupted one would (nothing to checkpoint but the state). The run ends
with `ilm_eval.evaluate_ilm` on the held-out problems (joint selection at `eval.temperature`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from mdpo_jax import config as config_lib
from mdpo_jax import parallel, tasks
from mdpo_jax.data import ilm_rows
from mdpo_jax.data.tokenizer import encode_text
from mdpo_jax.diffusion import insertion
from mdpo_jax.models import ilm
from mdpo_jax.training import checkpoint, ilm_eval, metrics, optim, setup, steps
from mdpo_jax.training import run as run_lib
from mdpo_jax.training import state as state_lib
from mdpo_jax.training.policy import Policy

TRAINER = "ilm"
_LOGGED_AUX = ("insert_ce", "stop_bce", "stop_accuracy", "deleted")


def make_train_step(model_cfg, optimizer, schedule, *, bos_index: int, accum: int):
  """state, batch → state, metrics: the deletion loss over `accum` micro-batches, one update."""
  forward, token_ok = ilm.forward_fn(model_cfg), ilm.insertable_tokens(model_cfg)

  def loss_fn(params, batch, rng):
    return insertion.ilm_loss(forward, params, batch["tokens"], batch["mask"], rng,
                              bos_index=bos_index, token_ok_V=token_ok,
                              vocab_size=model_cfg.vocab_size, pad_id=model_cfg.pad_token_id)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state: state_lib.TrainState, batch):
    rng = state.step_key()
    micro_grad = lambda p, mb, i: grad_fn(p, mb, jax.random.fold_in(rng, i))  # noqa: E731
    grads, losses_m, aux_m = steps.mean_gradients(
        micro_grad, state.params, steps.split_micro(batch, accum), accum)
    loss_value = losses_m.mean()
    out = {"loss": loss_value, "lr": schedule(state.step)}
    state, norms = steps.apply_gradients(state, grads, optimizer, loss_value)
    out.update(norms)
    out.update({k: jnp.mean(v) for k, v in aux_m.items() if k in _LOGGED_AUX})
    return state, out

  return step


def training_rows(run: run_lib.Run) -> dict[str, np.ndarray]:
  """tokens / mask [N, W] of every SFT problem (`task.sft_extra_fresh` included)."""
  cfg = run.config
  problems = tasks.base.sft_problems(run.task, cfg.task.sft_extra_fresh)
  encode = lambda text: encode_text(run.tokenizer, text)  # noqa: E731
  tokens, mask = ilm_rows.ilm_rows(
      [encode(run.task.prompt(p)) for p in problems],
      [encode(run.task.sft_answer(p)) for p in problems],
      prompt_len=cfg.data.prompt_len, answer_len=cfg.eval.gen_length,
      cls_id=ilm.cls_token_id(run.model_cfg), bos_id=run.model_cfg.bos_token_id,
      pad_id=run.model_cfg.pad_token_id)
  return {"tokens": tokens, "mask": mask}


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> np.ndarray:
  """Rows of the batch at `step`: positions step·B … step·B + B − 1 of the concatenated
  per-epoch permutations (epoch e shuffled with NumPy's generator seeded by (seed, e))."""
  flat = np.arange(step * batch_size, (step + 1) * batch_size)
  epochs, within = flat // n, flat % n
  out = np.empty_like(flat)
  for e in np.unique(epochs):
    at = epochs == e
    out[at] = np.random.default_rng([seed, int(e)]).permutation(n)[within[at]]
  return out


def _params(config, model_cfg, mesh, rules):
  """Fresh ILM params, or those of `model.init_checkpoint` (an ILM run's checkpoints)."""
  init = config.model.init_checkpoint
  if not init:
    return ilm.init_sharded_params(model_cfg, jax.random.key(config.seed), mesh, rules)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          ilm.abstract_params(model_cfg), ilm.param_shardings(model_cfg, mesh,
                                                                                rules))
  try:
    return checkpoint.restore_params(init, abstract)[0]
  except FileNotFoundError as e:
    raise FileNotFoundError(f"model.init_checkpoint={init}: {e}") from e


def _check(config) -> None:
  m = config.model
  if m.family != "llada" or m.hf_checkpoint or m.lora_rank:
    raise ValueError(f"trainer='ilm': model.family={m.family!r}, model.hf_checkpoint="
                     f"{m.hf_checkpoint!r}, model.lora_rank={m.lora_rank}; allowed: 'llada' "
                     "(the ILM's encoder), '' and 0")


def setup_run(config, workdir: str | Path) -> tuple[run_lib.Run, state_lib.TrainState]:
  """`run.setup_run` for an ILM: the same scaffold around ILM params."""
  config = config_lib.ensure(config)
  _check(config)
  mesh, tokenizer = setup.make_mesh(config), setup.make_tokenizer(config)
  rules = setup.rules(config)
  model_cfg = setup.model_config(config, tokenizer)
  optimizer = optim.make_optimizer(config.optim, config.optimizer_steps)
  state = state_lib.create_sharded(_params(config, model_cfg, mesh, rules), optimizer,
                                   config.seed, mesh)
  t = config.train
  run = run_lib.Run(
      config=config, workdir=Path(workdir), mesh=mesh, rules=rules, tokenizer=tokenizer,
      model_cfg=model_cfg, policy=Policy(model_cfg, None, None), optimizer=optimizer,
      schedule=optim.learning_rate_schedule(config.optim, config.optimizer_steps),
      state_shardings=jax.tree.map(lambda x: x.sharding, state),
      task=tasks.build(config.task, config.seed),
      checkpointer=checkpoint.Checkpointer(Path(workdir) / "checkpoints",
                                           max_to_keep=t.keep_checkpoints,
                                           async_save=t.async_checkpoint,
                                           save_timeout_s=t.save_timeout_s),
      writer=metrics.MetricWriter(workdir, tensorboard=config.logging.tensorboard,
                                  wandb=config.logging.wandb,
                                  wandb_project=config.logging.wandb_project,
                                  run_config=config.to_json()),
      deadline=time.time() + 60 * t.max_minutes if t.max_minutes else None,
      preemption=run_lib.Preemption())
  return run, state


def evaluate(run: run_lib.Run, params, problems) -> list[dict]:
  """The run's held-out evaluation: joint selection at `eval.temperature`."""
  cfg = run.config
  return ilm_eval.evaluate_ilm(run.model_cfg, params, run.tokenizer, run.task,
                               problems[:cfg.eval.num_problems],
                               [ilm_eval.ILMSetting("joint", cfg.eval.temperature)],
                               prompt_len=cfg.data.prompt_len, answer_len=cfg.eval.gen_length,
                               batch_size=cfg.eval.batch_size, seed=cfg.seed)


def train(config, workdir: str | Path) -> dict:
  """Train an ILM per `config` (trainer = ilm); returns {'step', 'loss', 'eval', 'params',
  'model_config'} like the other trainers."""
  run, state = setup_run(config, workdir)
  try:
    cfg = run.config
    rows = training_rows(run)
    held_out = run.task.held_out()
    run.check_prompt_len(held_out[:cfg.eval.num_problems], "held-out")
    state = run.restore(state)
    step_fn = jax.jit(make_train_step(run.model_cfg, run.optimizer, run.schedule,
                                      bos_index=ilm_rows.bos_index(cfg.data.prompt_len),
                                      accum=cfg.optim.grad_accum_steps),
                      donate_argnums=0, out_shardings=(run.state_shardings, None))
    state, step, last, stop = _loop(run, state, step_fn, rows)
    out = {"step": step, "eval": [], "params": state.params, "model_config": run.model_cfg,
           "loss": last.get("loss"), "stopped": stop}
    if stop != "preempted" and held_out:
      out["eval"] = evaluate(run, state.params, held_out)
      run.log_eval(step, out["eval"])
    return out
  finally:
    run.close()


def _loop(run: run_lib.Run, state, step_fn, rows):
  """Steps until train.num_steps, the deadline or a signal; logs and checkpoints."""
  cfg = run.config
  num_steps, n = cfg.train.num_steps, len(rows["tokens"])
  step = int(state.step)
  history, last, stop = [], {}, None
  bar = tqdm(total=num_steps, initial=step, desc=TRAINER, unit="step",
             disable=jax.process_index() != 0)
  while step < num_steps and stop is None:
    pick = batch_indices(step, cfg.data.batch_size, n, cfg.seed)
    batch = parallel.shard_batch({k: v[pick] for k, v in rows.items()}, run.mesh, run.rules)
    state, out = step_fn(state, batch)
    step += 1
    history.append(out)
    bar.update(1)
    stop = run.stop_reason()
    if step % cfg.train.log_every == 0 or step == num_steps or stop:
      last = run.writer.write(step, run_lib.window_mean(history))
      history = []
      bar.set_postfix(loss=f"{last['loss']:.4f}")
      run_lib.check_skips(run, state, step)
    if step % cfg.train.checkpoint_every == 0 or step == num_steps or stop:
      run_lib.check_skips(run, state, step)
      run.save(step, state)
  if stop:
    logging.warning("stopped at step %d (%s); the checkpoint is saved, re-run to resume",
                    step, stop)
  bar.close()
  return state, step, last, stop
