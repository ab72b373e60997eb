"""Orbax checkpoints: training state, data iterator and resolved config saved together.

One `CheckpointManager` per run directory (`WORKDIR/checkpoints/<step>/{state,data,config}`).
Saves are asynchronous (training continues while the previous step is written) and atomic (orbax
writes into a temporary folder and renames it when complete), so a preemption never leaves a
half-written checkpoint that a restart would pick up. Restores go against an abstract target
carrying the current shardings, so a run may resume on a different topology.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Save/restore (state, data iterator, config) under `directory`."""

  def __init__(self, directory: str | Path, *, max_to_keep: int = 3, async_save: bool = True):
    if max_to_keep < 1:
      raise ValueError(f"train.keep_checkpoints={max_to_keep}: must be ≥ 1")
    self.directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_iterator=None, config: dict | None = None, *,
           force: bool = False) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    if config is not None:
      items["config"] = ocp.args.JsonSave(config)
    saved = self._manager.save(step, args=ocp.args.Composite(**items), force=force)
    if saved:
      logging.info("checkpoint: saving step %d to %s", step, self.directory)
    return saved

  def restore(self, abstract_state, data_iterator=None, step: int | None = None):
    """Restore the state (into `abstract_state`'s shapes/shardings) and, when given, the
    iterator's position in place. Returns (step, state)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return step, restored["state"]

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(tree) -> Any:
  """ShapeDtypeStructs (with shardings) of a concrete pytree: a restore target."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)


def restore_params(directory: str | Path, abstract_params, step: int | None = None):
  """Only the parameters of a run's checkpoint (e.g. an SFT run to start RL or evaluation from).

  `directory` is a run's checkpoint folder (WORKDIR/checkpoints); the rest of the saved state
  (optimiser, data position) is not read.
  """
  directory = Path(directory).absolute()
  manager = ocp.CheckpointManager(directory, item_handlers={
      "state": ocp.PyTreeCheckpointHandler(), "config": ocp.JsonCheckpointHandler()})
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {directory}")
  # Partial restore: only the params subtree is read (the optimiser state of an 8B run would
  # not fit where evaluation or RL runs), into the caller's shardings.
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
          {"params": abstract_params},
          restore_args={"params": ocp.checkpoint_utils.construct_restore_args(abstract_params)},
          partial_restore=True),
      config=ocp.args.JsonRestore()))
  manager.close()
  return restored["state"]["params"], restored["config"], step


def saved_config(directory: str | Path, step: int | None = None) -> tuple[dict, int]:
  """(config, step): the resolved config a run saved with its checkpoint at `step` (the latest
  when None), {} if that checkpoint has none. Reads nothing else, so a caller can decide how to
  read the params (full weights, or a LoRA run's adapters) before touching them."""
  directory = Path(directory).absolute()
  manager = ocp.CheckpointManager(directory, item_handlers={"config": ocp.JsonCheckpointHandler()})
  step = manager.latest_step() if step is None else step
  if step is None:
    manager.close()
    raise FileNotFoundError(f"no checkpoint in {directory}")
  config = {}
  if (directory / str(step) / "config").exists():
    config = manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))["config"]
  manager.close()
  return config, step
