r"""Evaluation CLI: held-out accuracy of a run's checkpoint for any sampler settings.

  python -m mdpo_jax.evaluate --config configs/countdown_tiny_sft.py \
      --checkpoint /tmp/countdown_sft/checkpoints \
      --config.eval.steps=64,16 --config.eval.remasking=low_confidence,rcr

Prints one row per (steps, remasking) setting: accuracy with its 95% interval and, with
`eval.trajectory_stats`, how often some intermediate prediction x̂0_t was right and how often it
was right while the final answer was wrong (over-denoising). `--checkpoint` is a run's
checkpoint folder (a LoRA run's adapters are merged into its base, rebuilt from the config saved
with the checkpoint); `--hf_checkpoint` evaluates a Hugging Face folder instead.
"""

from __future__ import annotations

import json

import jax
from absl import app, flags
from ml_collections import config_flags

from mdpo_jax import parallel
from mdpo_jax.training import evaluation

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file of the run.",
                                          lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A run's WORKDIR/checkpoints folder.")
_HF = flags.DEFINE_string("hf_checkpoint", None, "Or a Hugging Face LLaDA folder.")
_OUT = flags.DEFINE_string("output", None, "Also write the rows as JSON here.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if bool(_CHECKPOINT.value) == bool(_HF.value):
    raise app.UsageError("give exactly one of --checkpoint and --hf_checkpoint")
  parallel.initialize_distributed()
  try:
    rows, n = evaluation.evaluate_checkpoint(_CONFIG.value, checkpoint=_CHECKPOINT.value,
                                             hf_checkpoint=_HF.value)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from e
  if jax.process_index() == 0:
    config = _CONFIG.value
    print(f"{n} held-out problems, seed {config.seed}, gen_length {config.eval.gen_length}, "
          f"block_length {config.eval.block_length}")
    print(evaluation.markdown_table(rows))
    if _OUT.value:
      with open(_OUT.value, "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
