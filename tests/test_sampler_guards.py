"""Input guards of the sampler and the evaluate CLI (the "Reliability" issue).

Each test first names the failure it reproduces. Prompt checks run on the host before the jitted
scan, so the rejecting tests compile nothing; two tests compile one tiny sampler each.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from mdpo_jax import parallel
from mdpo_jax.data import tokenizer as tokenizer_lib
from mdpo_jax.models import llada
from mdpo_jax.rl import rollout
from mdpo_jax.sampling import guards
from mdpo_jax.sampling.sampler import SamplerConfig, generate
from mdpo_jax.training import evaluation
from run_helpers import cli_env

VOCAB = 40   # llada.tiny: BOS 36, EOS = pad 37, EOT 38, MASK 39


@pytest.fixture(scope="module")
def model():
  cfg = llada.tiny(vocab_size=VOCAB, init_std=0.3)
  return cfg, llada.init_params(cfg, jax.random.key(7))


def _sc(cfg, **kw):
  return SamplerConfig.for_model(cfg, **{"gen_length": 8, "block_length": 8, "steps": 4, **kw})


def _raises(message, fn, *args, **kwargs):
  with pytest.raises(ValueError) as info:
    fn(*args, **kwargs)
  assert str(info.value) == message
  return info


@pytest.mark.parametrize("remasking", ["low_confidence", "random", "rcr"])
def test_out_of_vocabulary_ids_are_rejected_everywhere(model, remasking):
  """Was: an id ≥ vocab_size (prompt or padding) embedded as NaN; the answer came out all 0."""
  cfg, params = model
  fwd, sc = llada.forward_fn(cfg), _sc(cfg, remasking=remasking)
  prompt = np.array([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]], np.int32)
  bad = prompt.copy()
  bad[1, 3] = 45
  _raises("prompt_BxP: id 45 at row 1, position 3 is outside the vocabulary [0, 40)",
          generate, fwd, params, bad, sc, jax.random.key(0))
  bad = prompt.copy()
  bad[0, 0] = 45   # in the padding: still embedded, still NaN
  _raises("prompt_BxP: id 45 at row 0, position 0 is outside the vocabulary [0, 40)",
          generate, fwd, params, bad, sc, jax.random.key(0),
          prompt_mask=np.array([[0, 1, 1, 1, 1]] * 2))
  bad[0, 0] = -1
  _raises("prompt_BxP: id -1 at row 0, position 0 is outside the vocabulary [0, 40)",
          generate, fwd, params, bad, sc, jax.random.key(0))


@pytest.mark.parametrize("remasking", ["low_confidence", "random", "margin", "entropy", "rcr"])
def test_mask_token_in_a_prompt_is_rejected_for_every_kind(model, remasking):
  """Was: low-confidence/random remasking filled the prompt's mask and left one in the answer."""
  cfg, params = model
  prompt = np.array([[1, 2, 3, 4, 5], [1, 2, 3, cfg.mask_token_id, 5]], np.int32)
  _raises("prompt_BxP: the mask token 39 at row 1, position 3 is in a prompt: allowed only in "
          "the generated part (infilling a prompt is not supported)",
          generate, llada.forward_fn(cfg), params, prompt, _sc(cfg, remasking=remasking),
          jax.random.key(0))


def test_prompt_mask_values_and_sharded_prompts(model):
  cfg, params = model
  fwd, sc = llada.forward_fn(cfg), _sc(cfg)
  prompt = np.array([[1, 2, 3, 4]] * 8, np.int32)
  _raises("prompt_mask: value 2 at row 0, position 1: allowed 0 (padding) or 1 (prompt token)",
          generate, fwd, params, prompt, sc, jax.random.key(0),
          prompt_mask=np.array([[0, 2, 1, 1]] * 8))
  prompt[5, 2] = 99   # a batch sharded over 8 devices: the row is the global one
  sharded = parallel.shard_batch({"p": prompt}, parallel.make_mesh(data=8))["p"]
  _raises("prompt_BxP: id 99 at row 5, position 2 is outside the vocabulary [0, 40)",
          generate, fwd, params, sharded, sc, jax.random.key(0))


def test_guard_is_skipped_under_a_trace_and_prompts_stay_untouched(model):
  """Under jit nothing is concrete: no error, and no remasking kind writes a prompt position, so
  a mask in a prompt (row 0) or in the padding (row 1) stays and the answer is complete."""
  cfg, params = model
  m = cfg.mask_token_id
  prompt = np.array([[1, m, 3, 4], [m, m, 3, 4]], np.int32)
  pmask = np.array([[1, 1, 1, 1], [0, 0, 1, 1]], np.int32)
  seen = []
  jax.jit(lambda p: seen.append(guards.check_prompts(p, mask_id=m)) or p)(prompt)
  assert seen == [False]   # traced: skipped
  sc = _sc(cfg, remasking="random")   # low_confidence/margin/entropy: the same commit rule
  out = np.asarray(jax.jit(lambda p, pm: generate(llada.forward_fn(cfg), params, p, sc,
                                                  jax.random.key(0), prompt_mask=pm))(prompt,
                                                                                      pmask))
  np.testing.assert_array_equal(out[:, :4], prompt)
  assert (out[:, 4:] != m).all()


def test_rollouts_and_evaluation_go_through_the_guard(model):
  cfg, params = model
  m = cfg.mask_token_id
  prompts = np.array([[1, 2, 3], [4, m, 6]], np.int32)
  _raises("prompt_BxP: the mask token 39 at row 2, position 1 is in a prompt: allowed only in "
          "the generated part (infilling a prompt is not supported)",
          rollout.sample, llada.forward_fn(cfg), params, prompts, np.ones_like(prompts),
          ["a", "b"], _sc(cfg), jax.random.key(0), group_size=2)
  tok = tokenizer_lib.build_char_tokenizer("abcdefghijklmnopqrstuvwxyz 0123456789")
  _raises("eval prompts: the mask token 39 at row 1, position 1 is in a prompt: allowed only in "
          "the generated part (infilling a prompt is not supported); row = the problem's index "
          "in the evaluated split",
          evaluation.evaluate, cfg, params, tok, prompts, np.ones_like(prompts), ["a", "b"],
          lambda a, p: 0.0, [evaluation.Setting(4, "rcr")], gen_length=8, block_length=8,
          batch_size=2, progress=False)


_CONFIG_ERRORS = [
    (dict(temperature=float("inf")), "temperature=inf: allowed a finite number ≥ 0 (0 = argmax)"),
    (dict(temperature=float("nan")), "temperature=nan: allowed a finite number ≥ 0 (0 = argmax)"),
    (dict(temperature=True), "temperature=True: allowed a finite number ≥ 0 (0 = argmax)"),
    (dict(cfg_scale=float("inf")),
     "cfg_scale=inf: allowed a finite number ≥ 0 (0 = no guidance)"),
    (dict(cfg_scale=-1.0), "cfg_scale=-1.0: allowed a finite number ≥ 0 (0 = no guidance)"),
    (dict(gen_length=8.0), "gen_length=8.0: allowed a positive integer"),
    (dict(steps=0), "steps=0: allowed a positive integer"),
    (dict(steps=3, block_length=4), "steps=3: allowed a multiple of the number of blocks "
     "gen_length/block_length=2 and at most one step per token (steps ≤ gen_length=8)"),
    (dict(remasking=None), "remasking=None: allowed one of ('low_confidence', 'random', "
     "'margin', 'entropy', 'rcr')"),
    (dict(top_k=True), "top_k=True: allowed None or an integer ≥ 0 (0 = off)"),
    (dict(top_p=float("nan")), "top_p=nan: allowed None or a number in (0, 1] (1 = off)"),
    (dict(eos_logit_neg_inf="yes"), "eos_logit_neg_inf='yes': allowed True or False"),
    (dict(mask_id=40, vocab_size=40), "mask_id=40: allowed a token id in [0, vocab_size=40)"),
    (dict(vocab_size=0), "vocab_size=0: allowed None or a positive integer"),
    (dict(mask_id=7, eos_id=7), "mask_id=7: allowed an id other than eos_id=7 and eot_id=126348"),
    (dict(cache="full"), "cache='full': allowed one of ('none', 'prefix', 'dual')"),
    (dict(threshold=0.0), "threshold=0.0: allowed None (off) or a confidence in (0, 1]"),
    (dict(threshold=float("nan")), "threshold=nan: allowed None (off) or a confidence in (0, 1]"),
    (dict(cache="dual", cache_refresh=-1),
     "cache_refresh=-1: allowed an integer ≥ 0 (0 = refresh the cache only when a block starts)"),
    (dict(cache_refresh=2), "cache_refresh=2: allowed 0 when cache='none' (nothing to refresh)"),
]


@pytest.mark.parametrize("changes,message", _CONFIG_ERRORS, ids=[m.split(":")[0] for _, m in
                                                                  _CONFIG_ERRORS])
def test_sampler_config_rejects_every_bad_field(changes, message):
  """Was: SamplerConfig accepted an infinite temperature and CFG scale (they failed, or gave
  NaN, deep inside the jitted sampler)."""
  _raises("SamplerConfig." + message, SamplerConfig,
          **{"gen_length": 8, "block_length": 8, "steps": 8, **changes})


def test_sampler_config_normalises_numbers():
  a = SamplerConfig(gen_length=np.int64(8), block_length=8, steps=8, temperature=np.float32(0.5))
  b = SamplerConfig(gen_length=8, block_length=8, steps=8, temperature=0.5)
  assert a == b and hash(a) == hash(b) and type(a.gen_length) is int


# ------------------------------------------------------------- python -m mdpo_jax.evaluate


_EVAL_CHILD = r"""
import contextlib, io, json, sys
cases = json.loads(sys.argv[1])
sys.argv = ["evaluate", "--config", "no/such/config.py", "--checkpoint", "x"]
from absl import app, flags
from configs import countdown_tiny_sft
from mdpo_jax import cli, evaluate
out = {}
err = io.StringIO()
with contextlib.redirect_stderr(err):   # exactly what `python -m mdpo_jax.evaluate` runs
  try:
    cli.run(evaluate.main, required=["config"])
  except SystemExit as e:
    out["exit"] = e.code
out["stderr"] = err.getvalue()
flags.FLAGS.mark_as_parsed()   # --config cannot be parsed twice in one process: set values
for name, case in cases.items():
  cfg = countdown_tiny_sft.get_config()
  for key, value in case.pop("config", {}).items():
    section, field = key.split(".")
    cfg[section][field] = value
  flags.FLAGS["config"].value = cfg
  for flag in ("checkpoint", "hf_checkpoint", "output"):
    setattr(flags.FLAGS, flag, case.get(flag))
  try:
    evaluate.main(["evaluate", *case.get("args", [])])
    out[name] = None
  except app.UsageError as e:
    out[name] = str(e)
print(json.dumps(out))
"""


def test_evaluate_cli_user_errors_are_one_line(tmp_path):
  """Was: a missing --config file, checkpoint folder or --output folder gave a traceback wall
  (the last one after the whole evaluation), and orbax created the missing folder."""
  empty = tmp_path / "empty"
  empty.mkdir()
  missing = str(tmp_path / "missing")
  cases = {
      "both": {"checkpoint": str(empty), "hf_checkpoint": str(empty)},
      "no_ckpt": {"checkpoint": missing},
      "no_hf": {"hf_checkpoint": missing},
      "output": {"checkpoint": str(empty), "output": str(tmp_path / "nodir" / "rows.json")},
      "args": {"checkpoint": str(empty), "args": ["extra"]},
      "not_a_run": {"checkpoint": str(empty)},
      "bad_block": {"checkpoint": str(empty), "config": {"eval.block_length": 7}},
  }
  env = cli_env()
  res = subprocess.run([sys.executable, "-c", _EVAL_CHILD, json.dumps(cases)],
                       capture_output=True, text=True, env=env, timeout=300,
                       cwd=Path(__file__).parents[1])
  assert res.returncode == 0, res.stderr[-3000:]
  got = json.loads(res.stdout.strip().splitlines()[-1])
  assert got["exit"] == 2 and got["stderr"] == (
      "error: --config=no/such/config.py: cannot load the config file: [Errno 2] No such file or "
      "directory: 'no/such/config.py'\n")
  assert got["both"] == "give exactly one of --checkpoint and --hf_checkpoint"
  assert got["no_ckpt"] == (f"--checkpoint={missing}: no such folder; allowed: a run's "
                            "WORKDIR/checkpoints folder")
  assert got["no_hf"] == f"--hf_checkpoint={missing}: no such folder; allowed: a Hugging Face " \
                         "LLaDA or Dream folder"
  assert got["output"] == (f"--output={tmp_path / 'nodir' / 'rows.json'}: cannot write it; "
                           "allowed: a file path in an existing, writable folder")
  assert got["args"] == "unexpected arguments: ['extra']"
  assert str(empty) in got["not_a_run"]   # the library's message names the folder
  assert got["bad_block"].startswith("eval.block_length=7: allowed a divisor of gen_length=")
  assert not os.path.exists(missing)
  for name in cases:
    assert got[name] and "\n" not in got[name], (name, got[name])
