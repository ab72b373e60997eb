r"""Training CLI: `python -m mdpo_jax.train --config configs/X.py --workdir DIR [--config.k=v]`.

The config file returns an `ml_collections.ConfigDict` (see configs/base.py for every key); it
is locked, so an unknown `--config.key` fails. Re-running the same command with the same
workdir resumes from the latest checkpoint (a config that changes what a step computes is an
error then; see `train.resume_allow`). `config.trainer` selects the trainer.

Exit status: 0 finished, or stopped by SIGTERM/SIGINT after saving a checkpoint (one line; the
same command resumes); 1 the run failed: `optim.max_skipped_steps` NaN/Inf steps in a row, or a
storage fault (one line naming the folder); 2 a usage error (one line naming the field or file).
"""

from __future__ import annotations

import json
import logging

import jax
from absl import flags
from ml_collections import config_flags

from mdpo_jax import cli
from mdpo_jax import config as config_lib
from mdpo_jax import parallel
from mdpo_jax.training import evaluation, ilm_loop, rl_loop, sft_loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (a Python file).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, logs.")


def main(argv):
  del argv
  parallel.initialize_distributed()
  raw = cli.config_value(_CONFIG)
  config = config_lib.parse(raw)   # every check, before anything is built
  logging.debug("config:\n%s", raw)   # saved with every checkpoint; -v 1 prints it
  loop = rl_loop if config.is_rl else ilm_loop if config.trainer == ilm_loop.TRAINER else sft_loop
  result = loop.train(config, _WORKDIR.value)
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
  cli.run(main, required=["config", "workdir"])
