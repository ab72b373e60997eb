r"""Training CLI: `python -m mdpo_jax.train --config configs/X.py --workdir DIR [--config.k=v]`.

The config file returns an `ml_collections.ConfigDict` (see configs/base.py for every key); it
is locked, so an unknown `--config.key` fails. Re-running the same command with the same
workdir resumes from the latest checkpoint. `config.trainer` selects the trainer. SIGTERM
(preemption) or SIGINT saves a checkpoint and exits with status 0 and one line; a NaN/Inf loss or gradient norm ends
the run with one error line and status 1, without saving the diverged state.
"""

from __future__ import annotations

import json
import logging

import jax
from absl import app, flags
from ml_collections import config_flags

from mdpo_jax import config as config_lib
from mdpo_jax import parallel
from mdpo_jax.training import evaluation, rl_loop, sft_loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (a Python file).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, logs.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  parallel.initialize_distributed()
  try:
    config = config_lib.parse(_CONFIG.value)   # every check, before anything is built
  except ValueError as e:  # configuration errors: one line, no traceback wall
    raise app.UsageError(str(e)) from e
  logging.info("config:\n%s", _CONFIG.value)
  try:
    loop = rl_loop if config.is_rl else sft_loop
    result = loop.train(config, _WORKDIR.value)
  except ValueError as e:  # errors found while building the run (files, shapes, devices)
    raise app.UsageError(str(e)) from e
  except FloatingPointError as e:   # diverged: one line, a failing exit status
    raise SystemExit(f"error: {e}") from None
  if result.get("stopped") == "preempted":   # a clean stop: status 0, one line
    print(f"stopped by a signal at step {result['step']}: checkpoint saved; run the same "
          "command to resume")
    return
  if jax.process_index() == 0:
    print(f"finished at step {result['step']}; last loss {result['loss']}")
    if result["eval"]:
      print(evaluation.markdown_table(result["eval"]))
      with open(f"{_WORKDIR.value}/eval.json", "w", encoding="utf-8") as f:
        json.dump(result["eval"], f, indent=1)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
