"""`python -m mdpo_jax.generate` on a tiny Hugging Face folder built here (no downloads)."""

import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import app, flags
from tokenizers import Tokenizer, models, pre_tokenizers

from mdpo_jax import generate as generate_cli   # defines the CLI's flags in this process
from mdpo_jax.models import hf, llada
from mdpo_jax.sampling.sampler import SamplerConfig, generate
from run_helpers import cli_env

CHARS = list("abcdefghijklmnopqrstuvwxyz ?!.")
SPECIALS = ["<|start_header_id|>", "<|end_header_id|>", "<|startoftext|>", "<|endoftext|>",
            "<|eot_id|>", "<|mdm_mask|>"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  vocab = {c: i for i, c in enumerate(CHARS + ["\n"] + SPECIALS)}
  v = len(vocab)  # specials end at the top: BOS v-4, EOS v-3, EOT v-2, MASK v-1 (llada.tiny)
  tok = Tokenizer(models.WordLevel(vocab, unk_token="?"))
  tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
  tok.add_special_tokens(SPECIALS)
  cfg = llada.tiny(vocab_size=v, init_std=0.3)
  params = llada.init_params(cfg, jax.random.key(0))
  folder = tmp_path_factory.mktemp("ckpt") / "tiny-llada"
  src = tmp_path_factory.mktemp("tok") / "tokenizer.json"
  tok.save(str(src))
  hf.save_pretrained(folder, cfg, params, extra_files=[src])
  return folder, cfg, params, tok


def _run_cli(*args):
  env = cli_env()
  return subprocess.run([sys.executable, "-m", "mdpo_jax.generate", *args], capture_output=True,
                        text=True, env=env, timeout=300)


def test_cli_answer_equals_library_and_shows_steps(checkpoint):
  folder, cfg, params, tok = checkpoint
  prompt = "what is a?"
  res = _run_cli("--checkpoint", str(folder), "--prompt", prompt, "--gen_length", "8",
                 "--block_length", "4", "--steps", "4", "--remasking", "rcr", "--show_steps")
  assert res.returncode == 0, res.stderr
  lines = res.stdout.rstrip("\n").split("\n")
  # Independent path: template + encode here, sample with the library, cut at EOS/EOT, decode.
  ids = tok.encode(hf.apply_chat_template(prompt)).ids
  assert ids[0] == cfg.bos_token_id and cfg.eot_token_id in ids
  sc = SamplerConfig.for_model(cfg, gen_length=8, block_length=4, steps=4, remasking="rcr")
  out = np.asarray(generate(llada.forward_fn(cfg), params, np.asarray([ids], np.int32), sc,
                            jax.random.key(0)))[0, len(ids):].tolist()
  cut = min([out.index(s) for s in (cfg.eos_token_id, cfg.eot_token_id) if s in out] + [8])
  assert lines[-1] == tok.decode(out[:cut], skip_special_tokens=True)
  steps = [line for line in lines if line.startswith("[step")]
  assert len(steps) == 4
  assert steps[0].split("]")[1].strip().startswith("_" * 8)  # all masked before the first step


def _main(*args):
  """`generate.main` in this process (no JAX start-up per call): the UsageError's message, or
  None. (Never import `mdpo_jax.evaluate` into the test process as well: both CLIs define
  --checkpoint, and absl refuses a flag defined twice.)"""
  flags.FLAGS.unparse_flags()
  try:
    flags.FLAGS(["generate", *args])
    generate_cli.main(["generate"])
  except app.UsageError as e:
    return str(e)
  finally:
    flags.FLAGS.unparse_flags()
  return None


def test_cli_user_errors_are_one_line(checkpoint, tmp_path):
  """Was: every load error in `generate` was a traceback wall, an infinite temperature failed
  deep inside the sampler, and a prompt holding the mask token's text was silently infilled."""
  folder, *_ = checkpoint
  ok = ["--checkpoint", str(folder), "--prompt", "a", "--gen_length", "8", "--block_length", "8",
        "--steps", "4"]
  no_tokenizer = tmp_path / "no_tokenizer"
  no_tokenizer.mkdir()
  (no_tokenizer / "config.json").write_text((folder / "config.json").read_text())
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "config.json").write_text("{")
  (broken / "tokenizer.json").write_text((folder / "tokenizer.json").read_text())
  hf_folder = "allowed: a Hugging Face LLaDA folder (config.json, weights, tokenizer.json)"
  any_folder = (hf_folder + " or Dream folder (config.json, weights, tokenizer.json or "
                "vocab.json + merges.txt)")
  cases = [
      (["--block_length", "3"], "--block_length=3: allowed a divisor of gen_length=8"),
      (["--gen_length", "-8"], "--gen_length=-8: allowed a positive integer"),
      (["--temperature", "inf"], "--temperature=inf: allowed a finite number ≥ 0 (0 = argmax)"),
      (["--top_p", "0"], "--top_p=0.0: allowed None or a number in (0, 1] (1 = off)"),
      (["--checkpoint", str(tmp_path / "nope")],
       f"--checkpoint={tmp_path / 'nope'}: no such folder; {any_folder}"),
      (["--checkpoint", str(no_tokenizer)],
       f"--checkpoint={no_tokenizer}: no tokenizer.json in the folder; {hf_folder}"),
      (["--prompt", "x<|mdm_mask|>"],
       "--prompt: the mask token 36 at row 1, position 10 is in a prompt: allowed only in the "
       "generated part (infilling a prompt is not supported); row = the --prompt's 0-based "
       "index, position = the token's index after left padding"),
  ]
  for extra, message in cases:
    assert _main(*ok, *extra) == message, extra
  got = _main(*[a if a != str(folder) else str(broken) for a in ok])   # config.json not JSON
  assert got.startswith(f"--checkpoint={broken}: ") and "config.json" in got
  assert "\n" not in got
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["generate", *ok])
  try:
    with pytest.raises(app.UsageError, match=r"^unexpected arguments: \['extra'\]$"):
      generate_cli.main(["generate", "extra"])
  finally:
    flags.FLAGS.unparse_flags()
