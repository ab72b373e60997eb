r"""Evaluation CLI: held-out accuracy of a run's checkpoint for any sampler settings.

  python -m mdpo_jax.evaluate --config configs/countdown_tiny_sft.py \
      --checkpoint /tmp/countdown_sft/checkpoints \
      --config.eval.steps=64,16 --config.eval.remasking=low_confidence,rcr

Prints one row per (steps, remasking) setting: accuracy with its 95% interval and, with
`eval.trajectory_stats`, how often some intermediate prediction x̂0_t was right and how often it
was right while the final answer was wrong (over-denoising). `--checkpoint` is a run's
checkpoint folder (a LoRA run's adapters are merged into its base, rebuilt from the config saved
with the checkpoint); `--hf_checkpoint` evaluates a Hugging Face folder instead.

Exit status 2 with one `error: ...` line for a user error (a config file or value, a missing
folder, an --output that cannot be written: all checked before anything is evaluated); a
traceback only for a bug.
"""

from __future__ import annotations

import json
import os

import jax
from absl import app, flags
from ml_collections import config_flags

from mdpo_jax import cli, parallel
from mdpo_jax.training import evaluation

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file of the run.",
                                          lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A run's WORKDIR/checkpoints folder.")
_HF = flags.DEFINE_string("hf_checkpoint", None, "Or a Hugging Face folder of the config's "
                          "model.family (LLaDA, or Dream with --config.model.family=dream).")
_OUT = flags.DEFINE_string("output", None, "Also write the rows as JSON here.")


def _check_paths(checkpoint: str | None, hf_checkpoint: str | None, output: str | None) -> None:
  """Flag errors found without loading anything, each one UsageError line naming the flag."""
  if bool(checkpoint) == bool(hf_checkpoint):
    raise app.UsageError("give exactly one of --checkpoint and --hf_checkpoint")
  hf_folder = "a Hugging Face LLaDA or Dream folder"
  for flag, value, allowed in (("checkpoint", checkpoint, "a run's WORKDIR/checkpoints folder"),
                               ("hf_checkpoint", hf_checkpoint, hf_folder)):
    if value and not os.path.isdir(value):
      raise app.UsageError(f"--{flag}={value}: no such folder; allowed: {allowed}")
  if output:
    folder = os.path.dirname(os.path.abspath(output))
    if os.path.isdir(output) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
      raise app.UsageError(f"--output={output}: cannot write it; allowed: a file path in an "
                           "existing, writable folder")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = cli.config_value(_CONFIG)   # a config file that does not load: one line
  _check_paths(_CHECKPOINT.value, _HF.value, _OUT.value)
  parallel.initialize_distributed()
  try:
    rows, n = evaluation.evaluate_checkpoint(config, checkpoint=_CHECKPOINT.value,
                                             hf_checkpoint=_HF.value)
  except (ValueError, FileNotFoundError) as e:   # config, file and prompt errors: one line
    raise app.UsageError(str(e)) from e
  if jax.process_index() == 0:
    print(f"{n} held-out problems, seed {config.seed}, gen_length {config.eval.gen_length}, "
          f"block_length {config.eval.block_length}")
    print(evaluation.markdown_table(rows))
    if _OUT.value:
      with open(_OUT.value, "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
  cli.run(main, required=["config"])
