r"""Generate an answer from a Hugging Face LLaDA or Dream folder with the jitted scan sampler.

  python -m mdpo_jax.generate --checkpoint /path/to/LLaDA-8B-Instruct \
      --prompt "What is 12 * 7?" --gen_length 128 --block_length 32 --steps 64 --remasking rcr

  python -m mdpo_jax.generate --checkpoint ... --prompt "..." --sampler fhs --temperature 1

  python -m mdpo_jax.generate --checkpoint ... --prompt "..." --gen_length 256 --block_length 32 \
      --steps 256 --cache dual --threshold 0.9      # Fast-dLLM-style: KV cache + parallel decoding

--sampler fhs is the first-hitting sampler (`sampling/fhs.py`): one uniformly chosen masked
position per network call, gen_length calls, an exact sample of the model (--steps and
--remasking do not apply).

The folder must hold config.json, the safetensors weights and the tokenizer: tokenizer.json,
or for Dream the published vocab.json + merges.txt. The family comes from config.json's
`model_type` ("llada" or absent: LLaDA; "Dream": Dream, whose logits `dream.forward` shifts,
so the sampler is the same). The prompt is wrapped in the family's Instruct chat template
(LLaDA's, or Dream's Qwen2.5 template with its default system turn; --nochat for raw text),
and answers stop at EOS or the end-of-turn token (`<|eot_id|>`, Dream's `<|im_end|>`). With
--show_steps the whole trajectory is printed: per step the state before the step (masks as `_`)
and, at the positions committed in that step, the chosen tokens.

Exit status 2 with one `error: ...` line for a user error (a flag value, a folder that is not a
LLaDA or Dream checkpoint, a prompt holding the mask token's text), checked before the model is
loaded where possible; a traceback only for a bug.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
from absl import app, flags

from mdpo_jax import cli, parallel, plots
from mdpo_jax.data import pipeline
from mdpo_jax.data.tokenizer import decode_completions
from mdpo_jax.models import families
from mdpo_jax.sampling import fhs, guards, sampler

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Hugging Face LLaDA or Dream folder.")
_PROMPT = flags.DEFINE_multi_string("prompt", None, "Prompt text; repeat for a batch.")
_CHAT = flags.DEFINE_boolean("chat", True, "Wrap the prompt in the model's Instruct chat template.")
_GEN = flags.DEFINE_integer("gen_length", 128, "Tokens to generate.")
_BLOCK = flags.DEFINE_integer("block_length", 32, "Semi-autoregressive block length.")
_SAMPLER = flags.DEFINE_enum(
    # "ar" (the causal baseline's decoder) is not offered: that family has no Hugging Face folder.
    "sampler", "llada", ["llada", "fhs"], "llada: the scan sampler (--steps, --remasking); "
    "fhs: first-hitting, one token per network call (gen_length calls; exact).")
_STEPS = flags.DEFINE_integer("steps", 128, "Denoising steps (network calls).")
_TEMP = flags.DEFINE_float("temperature", 0.0, "Sampling temperature (0 = argmax).")
_REMASK = flags.DEFINE_enum("remasking", "low_confidence", list(sampler.REMASKING),
                            "Remasking rule (rcr = running confidence remasking).")
_CONF = flags.DEFINE_enum("confidence_from", "logits", list(sampler.CONFIDENCE_FROM),
                          "Confidence from softmax(logits) or softmax(logits/T).")
_CFG = flags.DEFINE_float("cfg_scale", 0.0, "Unsupervised classifier-free guidance weight.")
_TOP_K = flags.DEFINE_integer("top_k", None, "Top-k filter for sampling.")
_TOP_P = flags.DEFINE_float("top_p", None, "Nucleus filter for sampling.")
_SCHEDULE = flags.DEFINE_enum("schedule", "llada", list(sampler.SCHEDULES), "Commit schedule.")
_EOS_LOGIT = flags.DEFINE_boolean("eos_logit_neg_inf", False, "Never sample EOS.")
_EOS_CONF = flags.DEFINE_boolean("eos_confidence_neg_inf", False, "Commit EOS/EOT last.")
_CACHE = flags.DEFINE_enum("cache", "none", list(sampler.CACHES),
                           "KV cache: prefix (prompt + finished blocks) or dual (also the suffix).")
_CACHE_REFRESH = flags.DEFINE_integer("cache_refresh", 0, "Also refresh the cache every k steps "
                                      "inside a block (0: only when a block starts).")
_THRESHOLD = flags.DEFINE_float("threshold", None, "Also commit every token of the block whose "
                                "confidence is ≥ this (parallel decoding; --steps is the cap).")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Cast weights (default: as stored).")
_ORIGINAL_PADDING = flags.DEFINE_boolean(
    "original_padding", False, "Reproduce the checkpoint code's padding (pads attended to).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_SHOW_STEPS = flags.DEFINE_boolean("show_steps", False, "Print the denoising trajectory.")
_PLOT = flags.DEFINE_string("plot", None, "With --show_steps: also draw the trajectory as a PNG "
                            "here (plots.trajectory_figure; several prompts: NAME-<i>.png).")
flags.register_multi_flags_validator(["plot", "show_steps"], plots.check_plot_flag)
_SKIP_SPECIAL = flags.DEFINE_boolean("skip_special_tokens", True, "Hide special tokens.")


def encode_prompts(tokenizer, prompts: list[str], chat: bool, pad_id: int,
                   family: str = families.DEFAULT):
  """Left-padded [B, P] ids and mask for a batch of prompts (P = the longest); `chat` wraps each
  in `family`'s chat template."""
  encode_chat = families.get(family).hf.encode_chat
  encoded = [encode_chat(tokenizer, p) if chat else tokenizer.encode(p).ids for p in prompts]
  return pipeline.left_padded(encoded, max(len(ids) for ids in encoded), pad_id)


def answer_text(tokenizer, ids, config: families.ModelConfig, skip_special: bool) -> str:
  """Decode an answer, cutting at the first EOS/EOT (the rest is padding)."""
  return decode_completions(tokenizer, [ids], (config.eos_token_id, config.eot_token_id),
                            skip_special_tokens=skip_special)[0]


def render_state(tokenizer, ids, mask_id: int) -> str:
  """One trajectory state: decoded tokens with masks shown as `_`."""
  return "".join("_" if int(i) == mask_id else tokenizer.decode([int(i)]) for i in ids)


def _sampler_settings() -> dict:
  steps = _GEN.value if _SAMPLER.value == "fhs" else _STEPS.value   # FHS: one call per token
  return dict(gen_length=_GEN.value, block_length=_BLOCK.value, steps=steps,
              temperature=_TEMP.value, remasking=_REMASK.value, confidence_from=_CONF.value,
              cfg_scale=_CFG.value, top_k=_TOP_K.value, top_p=_TOP_P.value,
              schedule=_SCHEDULE.value, eos_logit_neg_inf=_EOS_LOGIT.value,
              eos_confidence_neg_inf=_EOS_CONF.value, cache=_CACHE.value,
              cache_refresh=_CACHE_REFRESH.value, threshold=_THRESHOLD.value)


def _check_flags(argv) -> families.Family:
  """Every flag error, before anything is loaded: one `app.UsageError` line naming the flag.
  Returns the checkpoint's family (config.json's `model_type`)."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _CHECKPOINT.value:
    raise app.UsageError(f"--checkpoint is required ({families.folder_text()})")
  if not _PROMPT.value:
    raise app.UsageError("--prompt is required")
  if _SAMPLER.value == "fhs" and (_CACHE.value != "none" or _THRESHOLD.value is not None):
    raise app.UsageError("--cache/--threshold apply to --sampler=llada (FHS makes one call "
                         "per token by design)")
  try:   # the model's token ids come later; every other setting is checked here
    sampler.SamplerConfig(**_sampler_settings())
  except ValueError as e:
    raise app.UsageError(str(e).replace("SamplerConfig.", "--")) from e
  return _check_folder(_CHECKPOINT.value)


def _check_folder(checkpoint: str) -> families.Family:
  """The folder's family, from its config.json; its tokenizer files are there."""
  folder = Path(checkpoint)
  if not folder.is_dir():
    raise app.UsageError(f"--checkpoint={checkpoint}: no such folder; allowed: "
                         f"{families.folder_text()}")
  if not (folder / families.CONFIG_FILE).is_file():
    raise app.UsageError(f"--checkpoint={checkpoint}: no {families.CONFIG_FILE} in the "
                         f"folder; allowed: {families.folder_text()}")
  try:
    family = families.detect(folder)
  except (OSError, ValueError) as e:
    raise app.UsageError(f"--checkpoint={checkpoint}: {e}") from e
  missing = families.missing_tokenizer(family, folder)
  if missing:
    raise app.UsageError(f"--checkpoint={checkpoint}: no {missing} in the folder; allowed: "
                         f"{families.folder_text(family)}")
  return family


def load(folder: str, dtype, original_padding: bool, family: str = families.DEFAULT):
  """(config, params, tokenizer) of a Hugging Face folder of `family`; a file error (a broken
  config.json, missing or malformed weights or tokenizer) is one `app.UsageError` naming
  --checkpoint."""
  overrides = {"honor_padding": False} if original_padding else {}
  loader = families.get(family).hf
  try:
    config, params = loader.load_pretrained(folder, dtype=dtype, **overrides)
    tokenizer = loader.load_tokenizer(folder)
  except (OSError, ValueError) as e:   # hf turns unreadable files into ValueError too
    raise app.UsageError(f"--checkpoint={folder}: {e}") from e
  return config, params, tokenizer


def main(argv):
  family = _check_flags(argv)
  parallel.initialize_distributed()
  config, params, tokenizer = load(_CHECKPOINT.value, _DTYPE.value, _ORIGINAL_PADDING.value,
                                   family.name)
  try:
    sc = sampler.SamplerConfig.for_model(config, **_sampler_settings())
  except ValueError as e:
    raise app.UsageError(str(e).replace("SamplerConfig.", "--")) from e
  try:   # Dream's template needs <|im_start|>/<|im_end|> in the tokenizer
    tokens, mask = encode_prompts(tokenizer, _PROMPT.value, _CHAT.value, config.pad_token_id,
                                  family.name)
  except ValueError as e:
    raise app.UsageError(f"--chat: {e}; allowed: --nochat for raw prompts") from e
  try:   # e.g. the mask token's text in a prompt, or a tokenizer.json larger than the model
    guards.check_prompts(tokens, mask, mask_id=sc.mask_id, vocab_size=sc.vocab_size,
                         name="--prompt", hint="row = the --prompt's 0-based index, position "
                         "= the token's index after left padding")
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  sample = fhs.generate if _SAMPLER.value == "fhs" else sampler.generate
  out, traj = sample(families.forward_fn(config), params, tokens, sc, jax.random.key(_SEED.value),
                     prompt_mask=mask, return_trajectory=True)
  _print_answers(tokenizer, config, sc, tokens.shape[1], np.asarray(out), traj)
  if _PLOT.value:
    for path in plots.write_trajectories(
        _PLOT.value, traj, np.asarray(out), tokens.shape[1], tokenizer, config,
        titles=[f"{p}  ({sc.gen_length} tokens, {sc.steps} steps)" for p in _PROMPT.value]):
      print(f"trajectory picture: {path}", file=sys.stderr)


def _print_answers(tokenizer, config, sc, p: int, out, traj) -> None:
  for row, prompt in enumerate(_PROMPT.value):
    if len(_PROMPT.value) > 1:
      print(f"### prompt {row}: {prompt}")
    if _SHOW_STEPS.value:
      xs, committed = np.asarray(traj.x[:, row, p:]), np.asarray(traj.committed[:, row, p:])
      x0 = np.asarray(traj.x0[:, row, p:])
      for t in range(sc.steps):
        new = [tokenizer.decode([int(i)]) for i in x0[t][committed[t]]]
        print(f"[step {t:3d}] {render_state(tokenizer, xs[t], sc.mask_id)}  +{new}")
    print(answer_text(tokenizer, out[row, p:], config, _SKIP_SPECIAL.value))
  sys.stdout.flush()


if __name__ == "__main__":
  cli.run(main, required=["checkpoint"])
