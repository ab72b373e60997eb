"""Orbax checkpoints: training state, data iterator and resolved config saved together.

One `CheckpointManager` per run directory (`WORKDIR/checkpoints/<step>/{state,data,config}`).
Saves are asynchronous (training continues while the previous step is written) and atomic (orbax
writes into a temporary folder and renames it when complete), so a preemption never leaves a
half-written checkpoint that a restart would pick up. Restores go against an abstract target
carrying the current shardings, so a run may resume on a different topology.

Storage faults fail fast and name the folder (`StorageError`): before each save a probe file is
written and the free space compared with the state's size, so a read-only or full disk is an
error at that step, not an exception in orbax's background thread that leaves the trainer
waiting; an asynchronous save's outcome is polled at every step (`poll`) and awaited with a
deadline (`save_timeout_s`) before the next save and at `close`, so a stalled write ends the run
instead of hanging it. A failed save never touches the checkpoints already finished.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import grain
import jax
import orbax.checkpoint as ocp


class StorageError(OSError):
  """A checkpoint could not be written (read-only or full disk, a stalled write): the run stops;
  the checkpoints finished before stay intact."""


def _bounded(fn: Callable[[], Any], timeout_s: float, what: str) -> None:
  """Run `fn` in a daemon thread and wait at most `timeout_s`: a hung storage call must not hang
  the caller (the thread is abandoned; the CLI exits the process)."""
  box = {}

  def target():
    try:
      fn()
    except BaseException as e:  # noqa: BLE001  (re-raised in the caller's thread)
      box["error"] = e
  thread = threading.Thread(target=target, daemon=True, name="checkpoint-wait")
  thread.start()
  thread.join(timeout_s)
  if thread.is_alive():
    raise StorageError(f"{what} did not finish within train.save_timeout_s={timeout_s:g} s")
  if "error" in box:
    raise StorageError(f"{what} failed: {one_line(box['error'])}") from box["error"]


# tensorstore reports I/O failures as ValueError with a status code and often an errno.
_IO_STATUS = ("os_error_code", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "UNAVAILABLE",
              "DEADLINE_EXCEEDED", "DATA_LOSS", "Failed writing", "Error writing")


def _is_io_error(error: ValueError) -> bool:
  return any(marker in str(error) for marker in _IO_STATUS)


def one_line(error: BaseException) -> str:
  """The error on one line, its OS cause first (tensorstore reports ENOSPC/EROFS deep inside a
  long ValueError), cut to a readable length."""
  text = " ".join(str(error).split()) or type(error).__name__
  code = re.search(r"os_error_code='(\d+)'", text)
  cause = (os.strerror(int(code.group(1))) if code else
           getattr(error, "strerror", None) if isinstance(error, OSError) else None)
  text = text if len(text) < 300 else text[:300] + " …"
  return f"{cause} ({text})" if cause and cause not in text[:120] else text


class Checkpointer:
  """Save/restore (state, data iterator, config) under `directory`."""

  def __init__(self, directory: str | Path, *, max_to_keep: int = 3, async_save: bool = True,
               save_timeout_s: float = 600.0):
    if max_to_keep < 1:
      raise ValueError(f"train.keep_checkpoints={max_to_keep}: must be ≥ 1")
    self.directory = Path(directory).absolute()
    self.save_timeout_s = float(save_timeout_s)
    self._pending = None   # (step, monotonic start) of an asynchronous save in flight
    if self.directory.exists() and not self.directory.is_dir():
      raise StorageError(f"checkpoint folder {self.directory} is a file, not a folder")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save,
        async_options=ocp.AsyncOptions(timeout_secs=max(int(save_timeout_s), 1)))
    try:
      self._manager = ocp.CheckpointManager(
          self.directory, options=options,
          item_handlers={"state": ocp.StandardCheckpointHandler(),
                         "data": grain.checkpoint.CheckpointHandler(),
                         "config": ocp.JsonCheckpointHandler()})
    except OSError as e:
      raise StorageError(f"checkpoint folder {self.directory}: {one_line(e)}") from e

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_iterator=None, config: dict | None = None, *,
           force: bool = False) -> bool:
    """Start saving `step` (asynchronously unless disabled) after the previous save finished
    and the folder proved writable with room for the state; StorageError otherwise."""
    self.wait()
    self._preflight(step, _nbytes(state))
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    if config is not None:
      items["config"] = ocp.args.JsonSave(config)
    try:
      saved = self._manager.save(step, args=ocp.args.Composite(**items), force=force)
    except (OSError, ValueError, TimeoutError) as e:
      if isinstance(e, ValueError) and not _is_io_error(e):
        raise   # not storage: a bug keeps its traceback
      raise StorageError(f"saving step {step} to {self.directory} failed: {one_line(e)}") from e
    if saved:
      logging.info("checkpoint: saving step %d to %s", step, self.directory)
      self._pending = (step, time.monotonic())   # a synchronous save is already finished
    return saved

  def poll(self) -> None:
    """Raise StorageError if the save in flight failed or overran its deadline (cheap: no wait
    while it is still running in time)."""
    if self._pending is None:
      return
    step, started = self._pending
    if not self._manager.is_saving_in_progress():
      self.wait()
    elif time.monotonic() - started > self.save_timeout_s:
      self._pending = None
      raise StorageError(f"saving step {step} to {self.directory} did not finish within "
                         f"train.save_timeout_s={self.save_timeout_s:g} s")

  def wait(self) -> None:
    """Wait (at most `save_timeout_s`) for the save in flight; StorageError if it failed."""
    if self._pending is None:
      return
    step, _ = self._pending
    self._pending = None
    _bounded(self._manager.wait_until_finished, self.save_timeout_s,
             f"saving step {step} to {self.directory}")

  def _preflight(self, step: int, nbytes: int) -> None:
    """A read-only or full folder is an error now, naming it (not a background failure)."""
    probe = self.directory / f".write-probe-{uuid.uuid4().hex}"
    try:
      self.directory.mkdir(parents=True, exist_ok=True)
      with open(probe, "wb") as f:
        f.write(b"0" * 4096)
        f.flush()
        os.fsync(f.fileno())
      probe.unlink()
    except OSError as e:
      raise StorageError(f"cannot save step {step}: checkpoint folder {self.directory} is not "
                         f"writable ({e.strerror or one_line(e)})") from e
    free = shutil.disk_usage(self.directory).free
    if free < nbytes * 1.05 + (1 << 16):
      raise StorageError(f"cannot save step {step}: {free / 2**20:.1f} MiB free in "
                         f"{self.directory}, the checkpoint needs ~{nbytes / 2**20:.1f} MiB")

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
    """Wait (bounded) for the last save, then release the manager (bounded too)."""
    try:
      self.wait()
    finally:
      _bounded(self._manager.close, self.save_timeout_s, f"closing {self.directory}")


def _nbytes(tree) -> int:
  """Bytes of the arrays of `tree` (a process writes only its shards, but a bound is enough)."""
  return sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(tree))


def abstract_like(tree) -> Any:
  """ShapeDtypeStructs (with shardings) of a concrete pytree: a restore target."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)


def _existing(directory: str | Path) -> Path:
  """`directory` as an absolute path; FileNotFoundError if it is not a folder (orbax would
  create it, so a mistyped path would read as an empty run)."""
  directory = Path(directory).absolute()
  if not directory.is_dir():
    raise FileNotFoundError(f"no checkpoint folder {directory}")
  return directory


def restore_params(directory: str | Path, abstract_params, step: int | None = None):
  """Only the parameters of a run's checkpoint (e.g. an SFT run to start RL or evaluation from).

  `directory` is a run's checkpoint folder (WORKDIR/checkpoints); the rest of the saved state
  (optimiser, data position) is not read.
  """
  directory = _existing(directory)
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


def saved_steps(directory: str | Path) -> list[int]:
  """The steps a run's checkpoint folder holds, ascending."""
  manager = ocp.CheckpointManager(_existing(directory))
  steps = sorted(manager.all_steps())
  manager.close()
  return steps


def saved_config(directory: str | Path, step: int | None = None) -> tuple[dict, int]:
  """(config, step): the resolved config a run saved with its checkpoint at `step` (the latest
  when None), {} if that checkpoint has none. Reads nothing else, so a caller can decide how to
  read the params (full weights, or a LoRA run's adapters) before touching them."""
  directory = _existing(directory)
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
