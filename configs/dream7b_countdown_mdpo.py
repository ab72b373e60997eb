"""MDPO on Dream-v0-Instruct-7B for Countdown, the LLaDA recipe's hyper-parameters — TPU/GPU.

  python -m mdpo_jax.train --config configs/dream7b_countdown_mdpo.py --workdir gs://BUCKET/dream_countdown \
      --config.model.hf_checkpoint=/path/to/Dream-v0-Instruct-7B

Not run in CI. Everything but the model is configs/llada8b_countdown_mdpo.py (MDPO's reference
hyper-parameters, Countdown with 3 numbers ≤ 100, targets ≤ 1000). The model: `model.family =
"dream"`, preset `dream_7b` (Qwen2.5-style blocks, GQA 28/4 heads, q/k/v biases, RoPE θ 1e6,
152064-row vocabulary; `dream.forward` shifts its logits so sampler, losses and MDPO read
"prediction for position i at i" exactly as for LLaDA). The folder is the published one
(config.json `model_type` "Dream", sharded safetensors, the slow tokenizer files vocab.json +
merges.txt + tokenizer_config.json, read as a fast tokenizer); the special ids come from it:
mask `<|mask|>` 151666, EOS `<|endoftext|>` 151643, end of turn `<|im_end|>` 151645 (rollouts
and evaluation stop at either). Prompts are the task's plain prompts, as in the LLaDA recipes
(no chat template in training); `python -m mdpo_jax.generate` applies Dream's Qwen2.5 template.
Slice: the same as the LLaDA 8B recipe's (configs/llada8b_math500_mdpo.py): policy + reference
bf16 (2 × 15 GB) + float32 Adam moments (61 GB) + activations of micro-batches of 640-token rows
(the larger vocabulary makes the logits ~1.2× LLaDA's) → a v5p-32 / v4-64 slice or 2 nodes of
8×H100 80 GB, FSDP (`mesh.fsdp = -1`).
"""

from configs import llada8b_countdown_mdpo


def get_config():
  c = llada8b_countdown_mdpo.get_config()   # the same task, RL and evaluation settings
  c.model.family = "dream"
  c.model.preset = "dream_7b"
  c.model.hf_checkpoint = ""   # on the command line: a Dream-v0-Instruct-7B folder
  c.data.tokenizer = ""        # the checkpoint's own tokenizer (Dream's ids)
  return c
