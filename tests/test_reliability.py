"""Bad input gets one line naming the field, the value and what is allowed; nothing silent.

A table of bad inputs across the training CLI, the config, the sampler API and evaluation, each
with the exact message expected; and the checks that run before a run starts or resumes
(prompt length, the resumed config)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import base, countdown_tiny_mdpo
from mdpo_jax import config as config_lib
from mdpo_jax.models import llada
from mdpo_jax.sampling import guards
from mdpo_jax.sampling.sampler import SamplerConfig, generate
from mdpo_jax.training import evaluation, sft_loop
from run_helpers import cli_env
from test_training import _tiny_config

# ---- the config: every field's range, in the one place that validates it ----------------------

CONFIG_CASES = [   # (key, value, exact message)
    ("optim.lr", math.nan, "optim.lr=nan: must be a finite number"),
    ("optim.lr", math.inf, "optim.lr=inf: must be a finite number"),
    ("optim.end_lr_ratio", -1.0, "optim.end_lr_ratio=-1.0: must be in [0, 1]"),
    ("optim.eps", -1e-8, "optim.eps=-1e-08: must be > 0"),
    ("optim.mask_eps", 1.0, "optim.mask_eps=1.0: must be in (0, 1)"),
    ("optim.max_skipped_steps", 0, "optim.max_skipped_steps=0: must be ≥ 1"),
    ("optim.grad_accum_steps", 3,
     "optim.grad_accum_steps=3 must be ≥ 1 and divide data.batch_size=64"),
    ("train.max_minutes", -1.0, "train.max_minutes=-1.0: must be ≥ 0 (0 = no limit)"),
    ("train.save_timeout_s", 0.0, "train.save_timeout_s=0.0: must be > 0"),
    ("train.resume_allow", "optim.learning_rate",
     "train.resume_allow='optim.learning_rate': 'optim.learning_rate' is not a config key or "
     "section (e.g. optim.lr, data)"),
    ("data.batch_size", 0, "data.batch_size=0: must be ≥ 1"),
    ("task.number_min", -5, "task.number_min=-5: allowed an integer in 0..999999"),
    ("task.answer_style", "xml", "task.answer_style='xml': allowed ('expression', 'steps')"),
    ("eval.temperature", math.inf, "eval.temperature=inf: must be a finite number"),
    ("eval.sampler", "ar", "eval.sampler='ar': with model.family='llada' allowed one of "
     "('llada', 'fhs') (the AR decoder is for the causal baseline only)"),
    ("eval.cache", "kv", "eval.cache='kv': allowed ('none', 'prefix', 'dual')"),
    ("eval.threshold", 1.5, "eval.threshold=1.5: must be in [0, 1]"),
    ("rl.cache", "all", "rl.cache='all': allowed ('none', 'prefix', 'dual')"),
    ("seed", -1, "seed=-1: must be ≥ 0"),
    ("trainer", "ppo", "trainer='ppo': allowed ('pretrain', 'sft', 'ilm', 'mdpo', 'diffu_grpo', 'cogrpo')"),
    ("rl.reward_timeout_s", 0.0, "rl.reward_timeout_s=0.0: must be > 0"),
    ("rl.group_size", 1, "rl.group_size=1: group-relative advantages need ≥ 2"),
    ("rl.temperature", math.inf, "rl.temperature=inf: must be a finite number"),
]


@pytest.mark.parametrize("key,value,message", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_errors_name_the_field_the_value_and_what_is_allowed(key, value, message):
  c = countdown_tiny_mdpo.get_config() if key.startswith("rl.") else base.get_config()
  section, _, name = key.rpartition(".")
  with c.unlocked():
    (c[section] if section else c)[name] = value
  with pytest.raises(ValueError) as e:
    config_lib.parse(c)
  assert str(e.value) == message


# ---- the training CLI: one line on stderr, status 2, for each user error -----------------------

_CHILD = """
import contextlib, io, json, sys
from absl import flags
from mdpo_jax import cli, train
flags.mark_flags_as_required(["config", "workdir"])
results = {}
for name, argv in json.loads(sys.argv[1]).items():
  flags.FLAGS.unparse_flags()
  err, status = io.StringIO(), 0
  with contextlib.redirect_stderr(err):
    try:
      sys.argv = ["train", *argv]       # config_flags reads its overrides from sys.argv
      cli.guarded(train.main)(cli._parse_flags(sys.argv))
    except SystemExit as e:
      status = e.code
  results[name] = [status, err.getvalue()]
print(json.dumps(results))
"""


def test_training_cli_user_errors_are_one_line(tmp_path):
  """Each case as `python -m mdpo_jax.train ARGS` would see it (one child process runs them
  all; an override key appears in one case only, as config_flags registers it once)."""
  (tmp_path / "afile").write_text("")
  (tmp_path / "broken.py").write_text("def get_config(:\n")
  ok = ["--config", "configs/base.py", "--workdir", str(tmp_path / "w")]
  cases = {
      "unknown key": ([*ok, "--config.optim.learning_rate=1"],
                      "--config.optim.learning_rate=1: no config key 'learning_rate' there "
                      "(configs/base.py lists every key; the config is locked so that a typo is "
                      "not silently ignored)"),
      "bad range": ([*ok, "--config.optim.lr=nan"], "optim.lr=nan: must be a finite number"),
      "bad type": ([*ok, "--config.optim.eps=abc"],
                   "flag --config.optim.eps=abc: could not convert string to float: 'abc'"),
      "no config file": (["--config", "configs/nope.py", "--workdir", str(tmp_path / "w")],
                         "--config=configs/nope.py: cannot load the config file: [Errno 2] No "
                         "such file or directory: 'configs/nope.py'"),
      "broken config file": (["--config", str(tmp_path / "broken.py"), "--workdir",
                              str(tmp_path / "w")],
                             f"--config={tmp_path / 'broken.py'}: invalid syntax (line 1)"),
      "workdir is a file": (["--config", "configs/base.py", "--workdir", str(tmp_path / "afile")],
                            f"--workdir={tmp_path / 'afile'}: is a file; allowed: a folder "
                            "(made if missing)"),
      "no workdir": (["--config", "configs/base.py"],
                     "flag --workdir=None: Flag --workdir must have a value other than None."),
      "no init checkpoint": ([*ok, f"--config.model.init_checkpoint={tmp_path / 'none'}"],
                             f"model.init_checkpoint={tmp_path / 'none'}: no checkpoint folder "
                             f"{tmp_path / 'none'}; allowed: a run's WORKDIR/checkpoints folder"),
      "no tokenizer": ([*ok, f"--config.data.tokenizer={tmp_path / 'none.json'}"],
                       f"data.tokenizer={tmp_path / 'none.json'}: no tokenizer.json at "
                       f"{tmp_path / 'none.json'}: a fast-tokenizer file is required (LLaDA "
                       "checkpoints ship one; slow tokenizers are not supported)"),
      "schedule": ([*ok, "--config.optim.schedule=exponential"],
                   "optim.schedule='exponential': allowed ('constant', 'cosine', 'linear')"),
      "trainer": ([*ok, "--config.trainer=dpo"],
                  "trainer='dpo': allowed ('pretrain', 'sft', 'ilm', 'mdpo', 'diffu_grpo', 'cogrpo')"),
      "remasking": ([*ok, "--config.eval.remasking=greedy"],
                    "eval.remasking=('greedy',): entries must come from ('low_confidence', "
                    "'random', 'margin', 'entropy', 'rcr'); unknown ['greedy']"),
      "sampler setting": ([*ok, "--config.eval.block_length=7"],   # before training starts
                          "eval.block_length=7: allowed a divisor of gen_length=48"),
      "positional": ([*ok, "extra"], "unexpected arguments: extra (every option is a --flag)"),
      "prompt_len": ([*ok, "--config.data.prompt_len=8", "--config.optim.warmup_steps=0",
                      "--config.train.num_steps=1", "--config.logging.tensorboard=False"],
                     "data.prompt_len=8: held-out prompt 22 has 33 tokens; allowed: "
                     "data.prompt_len ≥ 33 (prompts are never truncated)"),
  }
  out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps({k: a for k, (a, _) in
                                                                  cases.items()})],
                       capture_output=True, text=True, cwd=Path(__file__).parents[1],
                       env=cli_env(), timeout=300)
  got = json.loads(out.stdout.strip().splitlines()[-1])
  for name, (_, message) in cases.items():
    assert got[name] == [2, f"error: {message}\n"], name
  saved = [p.name for p in (tmp_path / "w" / "checkpoints").iterdir() if p.name.isdigit()]
  assert saved == []   # the prompt check ran before any step


# ---- the sampler API and evaluation: checked at the boundary, nothing silent -------------------

_CFG = llada.tiny(vocab_size=40)   # BOS 36, EOS = pad 37, EOT 38, MASK 39
_SC = SamplerConfig.for_model(_CFG, gen_length=8, block_length=8, steps=4)
_P = np.array([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]], np.int32)
_IN_PROMPT = ("allowed only in the generated part (infilling a prompt is not supported)")


def _with(r, c, v):
  a = _P.copy()
  a[r, c] = v
  return a


def _gen(prompt, mask=None, sc=_SC):   # the guard runs before the jitted scan: params unused
  return generate(llada.forward_fn(_CFG), None, prompt, sc, jax.random.key(0), prompt_mask=mask)


def _sc(**kw):
  return SamplerConfig(**{"gen_length": 8, "block_length": 8, "steps": 8, **kw})


def _eval(prompts):
  return evaluation.evaluate(_CFG, None, None, prompts, np.ones_like(prompts), ["a", "b"],
                             lambda a, p: 0.0, [evaluation.Setting(4, "rcr")], gen_length=8,
                             block_length=8, batch_size=2, progress=False)


API_CASES = [   # (name, call, exact ValueError message)
    ("oov id", lambda: _gen(_with(1, 3, 45)),
     "prompt_BxP: id 45 at row 1, position 3 is outside the vocabulary [0, 40)"),
    ("oov id in padding", lambda: _gen(_with(0, 0, 45), mask=np.array([[0, 1, 1, 1, 1]] * 2)),
     "prompt_BxP: id 45 at row 0, position 0 is outside the vocabulary [0, 40)"),
    ("negative id", lambda: _gen(_with(0, 4, -1)),
     "prompt_BxP: id -1 at row 0, position 4 is outside the vocabulary [0, 40)"),
    ("mask in prompt", lambda: _gen(_with(1, 3, 39)),
     f"prompt_BxP: the mask token 39 at row 1, position 3 is in a prompt: {_IN_PROMPT}"),
    ("mask in prompt, rcr", lambda: _gen(_with(1, 3, 39), sc=_SC.replace(remasking="rcr")),
     f"prompt_BxP: the mask token 39 at row 1, position 3 is in a prompt: {_IN_PROMPT}"),
    ("prompt_mask value", lambda: _gen(_P, mask=np.array([[0, 2, 1, 1, 1]] * 2)),
     "prompt_mask: value 2 at row 0, position 1: allowed 0 (padding) or 1 (prompt token)"),
    ("guard on any array",
     lambda: guards.check_prompts(_with(0, 1, 126336), mask_id=126336, name="ids"),
     f"ids: the mask token 126336 at row 0, position 1 is in a prompt: {_IN_PROMPT}"),
    ("mask in an eval prompt", lambda: _eval(_with(1, 2, 39)),
     f"eval prompts: the mask token 39 at row 1, position 2 is in a prompt: {_IN_PROMPT}; "
     "row = the problem's index in the evaluated split"),
    ("inf temperature", lambda: _sc(temperature=math.inf),
     "SamplerConfig.temperature=inf: allowed a finite number ≥ 0 (0 = argmax)"),
    ("nan cfg scale", lambda: _sc(cfg_scale=math.nan),
     "SamplerConfig.cfg_scale=nan: allowed a finite number ≥ 0 (0 = no guidance)"),
    ("block_length", lambda: _sc(block_length=3),
     "SamplerConfig.block_length=3: allowed a divisor of gen_length=8"),
    ("steps", lambda: _sc(steps=16),
     "SamplerConfig.steps=16: allowed a multiple of the number of blocks "
     "gen_length/block_length=1 and at most one step per token (steps ≤ gen_length=8)"),
    ("remasking", lambda: _sc(remasking="greedy"),
     "SamplerConfig.remasking='greedy': allowed one of ('low_confidence', 'random', 'margin', "
     "'entropy', 'rcr')"),
    ("top_p", lambda: _sc(top_p=1.5),
     "SamplerConfig.top_p=1.5: allowed None or a number in (0, 1] (1 = off)"),
    ("eot outside vocab",
     lambda: SamplerConfig.for_model(_CFG, gen_length=8, block_length=8, steps=8, eot_id=40),
     "SamplerConfig.eot_id=40: allowed a token id in [0, vocab_size=40)"),
]


@pytest.mark.parametrize("name,call,message", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_errors_are_one_line(name, call, message):
  with pytest.raises(ValueError) as e:
    call()
  assert str(e.value) == message, name


# ---- resuming: a config that changes what a step computes is noticed ----------------------------

def _small(num_steps):
  c = _tiny_config(num_steps=num_steps)
  c.model.n_layers, c.task.eval_size = 1, 0   # no held-out evaluation: this is about resuming
  return c


def test_resuming_with_a_changed_config_is_an_error_unless_allowed(tmp_path):
  c = _small(2)
  c.train.checkpoint_every = 2
  sft_loop.train(c, tmp_path)
  where = tmp_path / "checkpoints" / "2"
  changed = _small(4)   # more steps: allowed (extends the run)
  changed.data.batch_size, changed.optim.lr = 16, 1e-3
  with pytest.raises(ValueError) as e:
    sft_loop.train(changed, tmp_path)
  assert str(e.value) == (
      f"resuming {where}: the config differs from the checkpoint's in data.batch_size: 8 → 16; "
      "optim.lr: 0.003 → 0.001; use another --workdir, or allow it with "
      "--config.train.resume_allow=data.batch_size,optim.lr")
  saved = config_lib.parse(c)
  for allow in ("data.batch_size,optim.lr", "data,optim"):   # names or whole sections
    changed.train.resume_allow = allow
    assert config_lib.resume_differences(saved, config_lib.parse(changed)) == []
  # a different model shape, even when allowed, cannot be restored: one line naming the folder
  wider = _small(4)
  wider.model.d_model, wider.train.resume_allow = 64, "model"
  with pytest.raises(ValueError, match=rf"^cannot resume from {where}: "
                     r".*\(was it written with another model shape or version\?\)$"):
    sft_loop.train(wider, tmp_path)
