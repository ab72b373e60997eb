"""One run setup for every trainer: mesh, tokenizer, model, policy, sharded state, task,
checkpointer, metrics writer and deadline, built from a validated config.

The SFT/pretrain loop (`sft_loop.py`) and the RL loop (`rl_loop.py`) each hold only their step
function and loop body; everything they share is built here, the same way, so a checkpoint of
either can be read back by the other and by `python -m mdpo_jax.evaluate`.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mdpo_jax import config as config_lib
from mdpo_jax import parallel
from mdpo_jax import tasks
from mdpo_jax.data import tokenizer as tokenizer_lib
from mdpo_jax.models import families
from mdpo_jax.training import checkpoint, evaluation, metrics, optim, setup
from mdpo_jax.training import state as state_lib
from mdpo_jax.training import policy as policy_lib
from mdpo_jax.training.policy import Policy


class Preemption:
  """SIGTERM (a TPU/GCE preemption, SLURM's notice, `kill`) or SIGINT (Ctrl-C) becomes a flag that
  the loops read at step boundaries: they save a checkpoint and return instead of dying with the
  work since the last one. Installed only from the main thread (Python delivers signals there);
  `restore()` puts the previous handlers back."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received = None
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name
    logging.warning("%s: saving a checkpoint at the end of this step, then stopping",
                    self.received)

  def restore(self) -> None:
    for s, previous in self._previous.items():
      signal.signal(s, previous)
    self._previous = {}


def window_mean(history: list[dict]) -> dict[str, float]:
  """Each metric's mean over the steps of a logging window, of its finite values only (NaN when
  there are none), so a skipped step's NaN loss does not hide the others; `skipped` becomes the
  number of skipped steps in the window."""
  values = jax.device_get(history)
  out = {}
  for key in values[0]:
    xs = np.asarray([float(np.asarray(v[key])) for v in values])
    finite = xs[np.isfinite(xs)]
    out[key] = float(finite.mean()) if finite.size else float("nan")
  if "skipped" in out:
    out["skipped"] = float(sum(float(np.asarray(v["skipped"])) for v in values))
  return out


def check_skips(run: "Run", state, step: int, what: str = "step") -> None:
  """Stop the run once `optim.max_skipped_steps` optimiser steps in a row had a NaN/Inf loss or
  gradient (each was skipped, so the state and every checkpoint stay finite)."""
  limit = run.config.optim.max_skipped_steps
  streak = int(optim.skipped_in_a_row(state.opt_state))
  if streak >= limit:
    latest = run.checkpointer.latest_step()
    raise FloatingPointError(
        f"training diverged at {what} {step}: the last {streak} optimiser steps had a NaN/Inf "
        f"loss or gradient and were skipped (optim.max_skipped_steps={limit}); the latest "
        f"checkpoint ({'none' if latest is None else f'step {latest}'}) holds finite parameters;"
        " lower optim.lr or keep optim.clip_norm > 0")


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything a loop needs besides its step function (built once by `setup_run`)."""

  config: config_lib.RunConfig
  workdir: Path
  mesh: jax.sharding.Mesh
  rules: tuple                  # logical-axis rules (`mesh.rules` over the default table)
  tokenizer: Any
  model_cfg: families.ModelConfig
  policy: Policy
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  state_shardings: Any
  task: Any                     # a tasks.Task, or None for pretraining
  checkpointer: checkpoint.Checkpointer
  writer: metrics.MetricWriter
  deadline: float | None        # wall-clock time after which the loop saves and stops
  preemption: Preemption

  def __post_init__(self):
    # The run's programs are traced with its mesh in context, so the model can split its
    # activations' rows over the data axes (`parallel.constrain_rows`); `close` leaves it.
    scope = parallel.mesh_context(self.mesh, self.config.mesh.constrain_rows)
    scope.__enter__()
    object.__setattr__(self, "_mesh_scope", scope)

  def stop_reason(self) -> str | None:
    """Why the loop should save and stop now: "preempted" (SIGTERM), "max_minutes" or None.
    Called at every step, it also raises `checkpoint.StorageError` as soon as a save in flight
    has failed or overrun `train.save_timeout_s`."""
    self.checkpointer.poll()
    if self.preemption.received:
      return "preempted"
    if self.deadline is not None and time.time() > self.deadline:
      return "max_minutes"
    return None

  @property
  def stop_ids(self) -> tuple[int, int]:
    return (self.model_cfg.eos_token_id, self.model_cfg.eot_token_id)

  def restore(self, state, data_iterator=None):
    """`state` resumed from the latest checkpoint in the workdir, if there is one (and the data
    iterator's position restored in place). A checkpoint whose config differs from this run's
    in a key that changes what a step computes is an error (`config.resume_differences`)."""
    step = self.checkpointer.latest_step()
    if step is None:
      return state
    where = self.checkpointer.directory / str(step)
    saved, _ = checkpoint.saved_config(self.checkpointer.directory, step)
    if saved:
      try:
        differences = config_lib.resume_differences(config_lib.saved(saved), self.config)
      except ValueError as e:
        raise ValueError(f"{where}/config: the saved config is not valid today ({e})") from e
      if differences:
        keys = ",".join(d.split(":")[0] for d in differences)
        raise ValueError(f"resuming {where}: the config differs from the checkpoint's in "
                         f"{'; '.join(differences)}; use another --workdir, or allow it with "
                         f"--config.train.resume_allow={keys}")
    try:
      step, state = self.checkpointer.restore(checkpoint.abstract_like(state), data_iterator)
    except (ValueError, TypeError, KeyError, RuntimeError) as e:
      raise ValueError(f"cannot resume from {where}: {checkpoint.one_line(e)} (was it written "
                       "with another model shape or version?)") from e
    logging.info("resumed from checkpoint %d", step)
    return state

  def save(self, step: int, state, data_iterator=None) -> None:
    """Checkpoint `state` as `step`; params holding a NaN/Inf are never saved (an error)."""
    if not bool(_all_finite(state.params)):
      raise FloatingPointError(f"the parameters at {step} hold NaN/Inf: not saved (the latest "
                               "checkpoint stays the last finite state); lower optim.lr")
    self.checkpointer.save(step, state, data_iterator, self.config.to_json(), force=True)

  def evaluate(self, params, problems) -> list[dict]:
    """The run's `eval` settings on the first `eval.num_problems` of `problems`."""
    return evaluation.evaluate_task(self.config, self.model_cfg, params, self.tokenizer,
                                    self.task, problems[: self.config.eval.num_problems])

  def check_prompt_len(self, problems, what: str) -> None:
    """Fail before training when a prompt that will be sampled from (evaluation, rollouts) is
    longer than `data.prompt_len` (prompts are never truncated), not after the run."""
    lengths = [len(tokenizer_lib.encode_text(self.tokenizer, self.task.prompt(p)))
               for p in problems]
    limit = self.config.data.prompt_len
    if lengths and max(lengths) > limit:
      i = int(np.argmax(lengths))
      raise ValueError(f"data.prompt_len={limit}: {what} prompt {i} has {lengths[i]} tokens; "
                       f"allowed: data.prompt_len ≥ {max(lengths)} (prompts are never truncated)")

  def log_eval(self, step: int, rows: list[dict]) -> None:
    self.writer.write(step, {f"eval/{r['setting']}/accuracy": r["accuracy"] for r in rows})

  def close(self) -> None:
    """Wait for the last checkpoint to be written, then close it and the writer. While another
    error is propagating (the caller's `finally`), a storage error here is logged, not raised,
    so that it does not hide the first one."""
    failing = sys.exc_info()[0] is not None
    try:
      self.checkpointer.close()
    except checkpoint.StorageError as e:
      if not failing:
        raise
      logging.error("while stopping after an error: %s", e)
    finally:
      self.writer.close()
      self.preemption.restore()
      self._mesh_scope.__exit__(None, None, None)


def _policy_and_params(config, model_cfg, params, mesh) -> tuple[Policy, Any]:
  """(policy, trainable params): the loaded params, or fresh adapters on them as frozen base."""
  lora_cfg = setup.lora_config(config, model_cfg)
  if lora_cfg is None:
    return Policy(model_cfg, None, None), params
  return (Policy(model_cfg, lora_cfg, policy_lib.frozen_copy(params, model_cfg)),
          setup.init_adapters(config, model_cfg, lora_cfg, mesh))


def setup_run(config, workdir: str | Path) -> tuple[Run, state_lib.TrainState]:
  """(run, initial state) for a validated `config` (a RunConfig, or a ConfigDict to validate).

  The state is fresh (step 0, placed on the mesh); `run.restore(state)` resumes it. The
  checkpointer and writer are made last, so the caller's `try: ... finally: run.close()` is
  the only place they are closed."""
  config = config_lib.ensure(config)
  if Path(workdir).exists() and not Path(workdir).is_dir():
    raise ValueError(f"--workdir={workdir}: is a file; allowed: a folder (made if missing)")
  mesh = setup.make_mesh(config)
  tokenizer = setup.make_tokenizer(config)
  model_cfg, params = setup.load_model(config, tokenizer, mesh, jax.random.key(config.seed),
                                       lora_supported=True)
  policy, params = _policy_and_params(config, model_cfg, params, mesh)
  num_steps = config.optimizer_steps
  optimizer = optim.make_optimizer(config.optim, num_steps)
  state = state_lib.create_sharded(params, optimizer, config.seed, mesh)
  shardings = jax.tree.map(lambda x: x.sharding, state)
  workdir = Path(workdir)
  train_cfg = config.train
  task = None if config.trainer == "pretrain" else tasks.build(config.task, config.seed)
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", max_to_keep=train_cfg.keep_checkpoints,
                                 async_save=train_cfg.async_checkpoint,
                                 save_timeout_s=train_cfg.save_timeout_s)
  writer = metrics.MetricWriter(workdir, tensorboard=config.logging.tensorboard,
                                wandb=config.logging.wandb,
                                wandb_project=config.logging.wandb_project,
                                run_config=config.to_json())
  deadline = time.time() + 60 * train_cfg.max_minutes if train_cfg.max_minutes else None
  run = Run(config=config, workdir=workdir, mesh=mesh, rules=setup.rules(config),
            tokenizer=tokenizer, model_cfg=model_cfg,
            policy=policy, optimizer=optimizer,
            schedule=optim.learning_rate_schedule(config.optim, num_steps),
            state_shardings=shardings, task=task, checkpointer=ckpt, writer=writer,
            deadline=deadline, preemption=Preemption())
  return run, state


def result(run: Run, state, step: int, *, held_out=(), **extra) -> dict:
  """The loops' return value: final step, merged params (the family's plain forward), the trained
  adapters with LoRA, and the end-of-run evaluation on `held_out` (logged too)."""
  out = {"step": step, "eval": [], "params": run.policy.merged(state.params),
         "model_config": run.model_cfg, **extra}
  if run.policy.lora_cfg is not None:
    out["adapters"] = state.params
  if held_out:
    out["eval"] = run.evaluate(out["params"], held_out)
    run.log_eval(step, out["eval"])
  return out
