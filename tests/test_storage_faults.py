"""Storage faults fail fast and name the folder: a checkpoint folder that turns read-only, or a
disk that fills, mid-run. As root (CI) the faults are real: a small tmpfs mounted on the run's
checkpoint folder, remounted read-only or filled with ballast; elsewhere the folder is made
read-only with chmod and the full disk is an injected ENOSPC from the writer."""

import errno
import os
import subprocess
import time
import types

import jax
import numpy as np
import pytest

import orbax.checkpoint as ocp
from configs import countdown_tiny_sft
from mdpo_jax import cli
from mdpo_jax.models import llada
from mdpo_jax.training import checkpoint, setup, sft_loop
from run_helpers import tiny_run


def _config(num_steps=6):
  c = tiny_run(countdown_tiny_sft.get_config())
  c.train.num_steps, c.train.log_every, c.train.checkpoint_every = num_steps, 1, 2
  c.optim.warmup_steps = 0
  c.train.async_checkpoint = True     # the hang was an async save failing in the background
  c.train.save_timeout_s = 20.0
  return c


def _can_mount(folder) -> bool:
  if os.geteuid() != 0:
    return False
  folder.mkdir(parents=True, exist_ok=True)
  return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)],
                        capture_output=True).returncode == 0


@pytest.fixture
def checkpoint_folder(tmp_path):
  """(workdir, its checkpoint folder, whether that folder is a tmpfs of our own)."""
  folder = tmp_path / "run" / "checkpoints"
  mounted = _can_mount(folder)
  yield tmp_path / "run", folder, mounted
  if mounted:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)
  else:
    os.chmod(folder, 0o755)


def _last_good(folder, c):
  """The latest finished step in `folder` and whether its params restore (finite)."""
  cfg = setup.model_config(c, setup.make_tokenizer(c))
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                          llada.abstract_params(cfg))
  params, _, step = checkpoint.restore_params(folder, abstract)
  return step, all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_a_folder_turning_read_only_mid_run_fails_at_once(checkpoint_folder, monkeypatch):
  """The folder turns read-only between the step-2 save and the step-4 one: the run raises a
  StorageError naming the folder within seconds (it used to wait forever), and step 2 restores."""
  workdir, folder, mounted = checkpoint_folder
  real = checkpoint.Checkpointer.save

  def save(self, step, *args, **kw):
    if step == 4:
      self.wait()   # step 2 is safely on disk
      if mounted:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
      else:
        os.chmod(folder, 0o555)
    return real(self, step, *args, **kw)

  monkeypatch.setattr(checkpoint.Checkpointer, "save", save)
  started = time.monotonic()
  with pytest.raises(checkpoint.StorageError, match=f"cannot save step 4: checkpoint folder "
                     f"{folder} is not writable"):
    sft_loop.train(_config(), workdir)
  assert time.monotonic() - started < 60
  assert _last_good(folder, _config()) == (2, True)


def test_a_full_disk_mid_write_fails_at_the_next_step(checkpoint_folder, monkeypatch):
  """The disk fills while step 4 is written (ballast leaves room for the arrays, not orbax's
  files): the error surfaces within a step, names the folder, and step 2 stays intact."""
  workdir, folder, mounted = checkpoint_folder
  real_save = ocp.CheckpointManager.save

  def save(self, step, *args, **kw):
    if step == 4:
      if mounted:   # leave ~40 KiB: the probe and the free-space check pass, the write does not
        free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
        with open(folder / "ballast", "wb") as f:
          f.write(b"\0" * max(free - 40 * 1024, 0))
      else:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
    return real_save(self, step, *args, **kw)

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  monkeypatch.setattr(checkpoint, "_nbytes", lambda tree: 1024)   # the preflight lets it through
  started = time.monotonic()
  with pytest.raises(checkpoint.StorageError, match=f"step 4 to {folder}.*(No space|space left)"):
    sft_loop.train(_config(), workdir)
  assert time.monotonic() - started < 60
  if mounted:
    (folder / "ballast").unlink()
  assert _last_good(folder, _config()) == (2, True)


def test_too_little_free_space_is_an_error_before_writing(tmp_path, monkeypatch):
  """The free-space check names the folder and both sizes, and writes nothing."""
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", async_save=False)
  monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: types.SimpleNamespace(free=1000))
  state = {"w": np.zeros((1000,), np.float32)}
  with pytest.raises(checkpoint.StorageError, match=r"cannot save step 1: 0.0 MiB free in "
                     f"{tmp_path / 'ckpt'}, the checkpoint needs"):
    ckpt.save(1, state)
  assert ckpt.latest_step() is None
  ckpt.close()


def test_a_stalled_save_hits_its_deadline(tmp_path, monkeypatch):
  """A save that never completes (a hung network disk) is a StorageError after
  `save_timeout_s`, from `poll` (at every step) and from the wait before the next save."""
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", async_save=True, save_timeout_s=0.5)
  ckpt.save(1, {"w": np.zeros(4, np.float32)})
  ckpt._manager.wait_until_finished()   # written; from now on the storage "hangs"
  monkeypatch.setattr(ocp.CheckpointManager, "is_saving_in_progress", lambda self: True)
  monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished",
                      lambda self: time.sleep(3600))
  ckpt.poll()   # still within the deadline: no error, no wait
  time.sleep(0.6)
  with pytest.raises(checkpoint.StorageError, match=r"saving step 1 to .* did not finish within "
                     r"train.save_timeout_s=0.5 s"):
    ckpt.poll()
  ckpt._pending = (1, time.monotonic())
  started = time.monotonic()
  with pytest.raises(checkpoint.StorageError, match="did not finish within"):
    ckpt.save(2, {"w": np.zeros(4, np.float32)})
  assert time.monotonic() - started < 5


def test_the_cli_exits_at_once_with_status_1_on_a_storage_error(monkeypatch, capsys):
  """`cli.guarded` prints one line and leaves through os._exit (a hung writer thread cannot
  keep the process alive)."""
  exits = []
  monkeypatch.setattr(cli.os, "_exit", lambda status: exits.append(status) or
                      (_ for _ in ()).throw(SystemExit(status)))

  def main(argv):
    raise checkpoint.StorageError("cannot save step 4: checkpoint folder /x is not writable")
  with pytest.raises(SystemExit):
    cli.guarded(main)(["train"])
  assert exits == [1]
  assert capsys.readouterr().err == ("error: cannot save step 4: checkpoint folder /x is not "
                                     "writable\n")


@pytest.mark.parametrize("message,storage", [
    ("RESOURCE_EXHAUSTED: Failed to write 216 bytes [os_error_code='28']", True),
    ("PERMISSION_DENIED: Error writing local file", True),
    ("Unsupported type for item 'state'", False)])   # a bug, not the disk: keeps its traceback
def test_only_io_errors_from_the_writer_become_storage_errors(tmp_path, monkeypatch, message,
                                                              storage):
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", async_save=False)

  def failing_save(self, step, *args, **kw):
    raise ValueError(message)
  monkeypatch.setattr(ocp.CheckpointManager, "save", failing_save)
  expected = checkpoint.StorageError if storage else ValueError
  with pytest.raises(expected) as e:
    ckpt.save(1, {"w": np.zeros(4, np.float32)})
  assert isinstance(e.value, checkpoint.StorageError) == storage
  if storage:
    assert str(e.value).startswith(f"saving step 1 to {tmp_path / 'ckpt'} failed: ")
