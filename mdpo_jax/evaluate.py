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
from mdpo_jax.training import evaluation, loop, setup, task_data

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
  config = _CONFIG.value
  with config.unlocked():
    if _HF.value:
      config.model.hf_checkpoint = _HF.value
    else:
      config.model.init_checkpoint = _CHECKPOINT.value
    # Evaluation trains nothing: a LoRA run's checkpoint is merged with its base on load (from the
    # config saved with it), so this config's model.lora_rank does not apply here.
    config.model.lora_rank = 0
  try:
    mesh = parallel.mesh_from_config(config.mesh)
    tokenizer = setup.make_tokenizer(config)
    model_cfg, params = setup.load_model(config, tokenizer, mesh, jax.random.key(config.seed))
    _, held_out = task_data.splits(config)
    rows = loop.run_eval(config, model_cfg, params, tokenizer, held_out)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from e
  if jax.process_index() == 0:
    print(f"{len(held_out[: config.eval.num_problems])} held-out problems, seed {config.seed}, "
          f"gen_length {config.eval.gen_length}, block_length {config.eval.block_length}")
    print(evaluation.markdown_table(rows))
    if _OUT.value:
      with open(_OUT.value, "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
