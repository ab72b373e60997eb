"""What every command-line entry point shares: a user error is one line on stderr, never a
traceback wall or a help dump.

`run(main)` replaces `absl.app.run(main)`. Flag parsing errors (an unknown `--config.key`, a
config file that does not load, a value of the wrong type) and errors raised by `main` print
`error: <message>` and exit with:

  2  a usage error: a bad flag, config value or input file (ValueError, FileNotFoundError)
  1  the run failed: it diverged (FloatingPointError) or storage failed (`StorageError`, after
     which the process exits at once, since a storage call may still hang in a thread)

Anything else is a bug and keeps its traceback. The traceback of a reported error is logged at
verbosity 1 (`--verbosity=1`).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Callable, Sequence

from absl import app, flags

from mdpo_jax.training.checkpoint import StorageError

def fail(message: str, status: int = 2) -> None:
  """Print `error: message` on stderr and exit with `status`."""
  logging.debug("error traceback", exc_info=True)
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
  sys.exit(status)


def _flag_error(error: BaseException, argv: Sequence[str]) -> str:
  """One line for a flag-parsing failure, naming the argument that caused it."""
  root = error
  while root.__cause__ is not None or root.__context__ is not None:
    root = root.__cause__ or root.__context__
  if isinstance(error, (AttributeError, KeyError)):   # ml_collections: unknown locked key
    key = re.sub(r"[\"'\\]", "", str(error)).split()[0] if str(error) else "?"
    culprit = [a for a in argv if a.startswith("--config.") and key in a.split("=")[0]]
    where = culprit[0] if culprit else "a --config override"
    return (f"{where}: no config key {key!r} there (configs/base.py lists every key; the config "
            "is locked so that a typo is not silently ignored)")
  if isinstance(root, OSError) and "--config" in " ".join(argv):
    config = next((a for a in argv if a.startswith("--config=") or a == "--config"), "--config")
    return f"{config}: cannot load the config file: {root.strerror or root}"
  if isinstance(error, SyntaxError) and "--config" in " ".join(argv):
    return f"--config={error.filename}: {error.msg} (line {error.lineno})"
  if isinstance(root, ValueError) and "Error whilst parsing config file" in str(error):
    return str(root)   # a config file's own check of its argument (`--config=FILE:ARG`)
  return str(error).split("\n")[0] if str(error) else type(error).__name__


def config_value(holder):
  """The value of a `config_flags` flag; a config file that did not load is one line naming it
  (ml_collections defers that error to the first access)."""
  try:
    value = holder.value
    value.keys()   # a deferred load error raises here
    return value
  except OSError as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    fail(f"--{holder.name}={flags.FLAGS[holder.name].config_filename}: cannot load the config "
         f"file: {lines[-1] if lines else e}")


def _parse_flags(argv: Sequence[str]):
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, OSError, ValueError, SyntaxError,
          TypeError) as e:
    fail(_flag_error(e, argv))


def _quiet_libraries() -> None:
  """Library INFO chatter (orbax's checkpoint manager, JAX's backend probing) off unless
  `--verbosity` is given: what a run logs by default is its own progress."""
  if "verbosity" in flags.FLAGS and not flags.FLAGS["verbosity"].present:
    for name in ("absl", "jax", "orbax", "tensorboardX"):
      logging.getLogger(name).setLevel(logging.WARNING)


def guarded(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  """`main` with user errors and run failures turned into one line and an exit status."""
  def wrapped(argv):
    _quiet_libraries()
    if len(argv) > 1:
      fail(f"unexpected arguments: {' '.join(argv[1:])} (every option is a --flag)")
    try:
      main(argv)
    except StorageError as e:
      logging.debug("storage error", exc_info=True)
      print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
      sys.stdout.flush()
      os._exit(1)   # a write may still hang in a background thread: do not wait for it
    except FloatingPointError as e:
      fail(str(e), 1)
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
            app.UsageError) as e:
      fail(str(e), 2)
  return wrapped


def run(main: Callable[[list[str]], None], *, required: Sequence[str] = ()) -> None:
  """`absl.app.run(main)` with one-line user errors; `required` flags must be given."""
  if required:
    flags.mark_flags_as_required(list(required))
  app.run(guarded(main), flags_parser=_parse_flags)
