"""Accuracy under unsupervised classifier-free guidance: an evaluation setting's `cfg_scale`
reaches the sampler (the row equals sampling with that weight directly and scoring it), w = 0 is
the unguided row, `eval.cfg_scale` is validated, and `python -m mdpo_jax.evaluate --cfg_scales`
gives one row per weight."""

import json
import os
import subprocess
import sys
import zlib

import jax
import numpy as np
import pytest

from configs import base
from mdpo_jax import config as config_lib
from mdpo_jax import tasks
from mdpo_jax.data import pipeline
from mdpo_jax.data.tokenizer import decode_completions
from mdpo_jax.models import families
from mdpo_jax.sampling.sampler import SamplerConfig, generate
from mdpo_jax.training import evaluation, setup, sft_loop
from run_helpers import cli_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2, "model.n_kv_heads": 2,
        "model.mlp_hidden_size": 64, "task.train_size": 64, "task.eval_size": 8,
        "task.val_size": 8, "data.batch_size": 8, "eval.num_problems": 8, "eval.batch_size": 8,
        "eval.gen_length": 8, "eval.block_length": 8, "eval.steps": (4,),
        "eval.remasking": ("low_confidence",), "eval.trajectory_stats": False}


def _config(**extra):
  c = base.get_config()
  for key, value in {**TINY, **extra}.items():
    section, field = key.split(".")
    c[section][field] = value
  c.logging.tensorboard, c.train.async_checkpoint = False, False
  return c


def _parity(completion: str, problem) -> float:
  """A stand-in verifier that depends on every character of the completion (a random tiny model
  never solves Countdown, so the real verifier would score every sample 0 whatever it wrote)."""
  del problem
  return float(zlib.crc32(completion.encode()) % 2)


def test_a_guided_row_equals_guided_sampling_scored_directly():
  config = config_lib.parse(_config())
  tok = setup.make_tokenizer(config)
  model_cfg, params = setup.load_model(config, tok, setup.make_mesh(config), jax.random.key(3))
  task = tasks.build(config.task, config.seed)
  problems = task.held_out()
  prompts, mask = pipeline.eval_prompts([task.prompt(p) for p in problems], tok,
                                        prompt_len=config.data.prompt_len,
                                        pad_id=model_cfg.pad_token_id)
  settings = [evaluation.Setting(4, "low_confidence", cfg_scale=w) for w in (0.0, 2.0)]
  rows = evaluation.evaluate(model_cfg, params, tok, prompts, mask, problems, _parity, settings,
                             gen_length=8, block_length=8, batch_size=8, seed=0,
                             trajectory_stats=False, per_problem=True)
  unguided = evaluation.evaluate(model_cfg, params, tok, prompts, mask, problems, _parity,
                                 [evaluation.Setting(4, "low_confidence")], gen_length=8,
                                 block_length=8, batch_size=8, seed=0, trajectory_stats=False,
                                 per_problem=True)[0]
  completions = {}
  for w, row in zip((0.0, 2.0), rows):
    sc = SamplerConfig.for_model(model_cfg, gen_length=8, block_length=8, steps=4,
                                 remasking="low_confidence", temperature=0.0, cfg_scale=w)
    tokens = np.asarray(generate(families.forward_fn(model_cfg), params, prompts, sc,
                                 jax.random.key(0), prompt_mask=mask))
    completions[w] = decode_completions(tok, tokens[:, prompts.shape[1]:],
                                        (model_cfg.eos_token_id, model_cfg.eot_token_id))
    solved = [_parity(a, p) >= 1 for a, p in zip(completions[w], problems)]
    assert row["solved"] == solved and row["cfg_scale"] == w
    assert row["accuracy"] == sum(solved) / len(solved)
  assert completions[2.0] != completions[0.0]    # guidance changed what was written
  assert rows[1]["setting"] == "low_confidence/steps=4/T=0/cfg=2"
  assert rows[0] == unguided   # w = 0 is the unguided row


def test_eval_cfg_scale_is_validated_and_reaches_every_setting():
  for bad in (-0.5, float("nan")):
    with pytest.raises(ValueError) as e:
      config_lib.parse(_config(**{"eval.cfg_scale": bad}))
    assert str(e.value).startswith(f"eval.cfg_scale={bad!r}: ") and "\n" not in str(e.value)
  for sampler in ("llada", "fhs"):
    typed = config_lib.parse(_config(**{"eval.cfg_scale": 0.5, "eval.sampler": sampler}))
    settings = evaluation.settings_from_config(typed.eval)
    assert settings and all(s.cfg_scale == 0.5 and s.name.endswith("/cfg=0.5") for s in settings)
    sc = settings[0].sampler_config(families.preset("llada", "tiny"), gen_length=8,
                                    block_length=8)
    assert sc.cfg_scale == 0.5
  table = evaluation.markdown_table([{"remasking": "rcr", "steps": 4, "tokens_per_step": 2,
                                      "temperature": 0.0, "accuracy": 0.5, "ci_low": 0.1,
                                      "ci_high": 0.9, "mean_reward": 0.5, "cfg_scale": 1.5}])
  assert table.splitlines()[0].endswith("| CFG w |") and table.endswith("| 1.5 |")


def test_evaluate_cli_sweeps_cfg_scales_on_the_chosen_split(tmp_path):
  """One CLI run with --cfg_scales 0,1 --split validation: a row per weight, each equal to the
  in-process evaluation of that setting on the validation problems (5 of them, where held-out has
  8, so a CLI that ignored --split would score the wrong count); the w = 0 row equals the run's
  plain (unguided) evaluation."""
  c = _config(**{"train.num_steps": 2, "train.checkpoint_every": 2, "optim.warmup_steps": 1,
                 "task.val_size": 5})
  sft_loop.train(c, tmp_path)
  flags_ = [f"--config.{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
            for k, v in {**TINY, "task.val_size": 5}.items()]
  env = cli_env()
  out = tmp_path / "rows.json"
  res = subprocess.run([sys.executable, "-m", "mdpo_jax.evaluate", "--config", "configs/base.py",
                        "--checkpoint", str(tmp_path / "checkpoints"), "--output", str(out),
                        "--cfg_scales", "0,1", "--split", "validation", *flags_],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  rows = json.loads(out.read_text())
  assert [(r["setting"], r["cfg_scale"], r["n"]) for r in rows] == [
      ("low_confidence/steps=4/T=0", 0.0, 5), ("low_confidence/steps=4/T=0/cfg=1", 1.0, 5)]
  model = evaluation.load_checkpoint(c, checkpoint=str(tmp_path / "checkpoints"))
  plain, _ = evaluation.evaluate_checkpoint(c, model=model, split="validation")
  guided, _ = evaluation.evaluate_checkpoint(
      c, model=model, split="validation",
      settings=[evaluation.Setting(4, "low_confidence", cfg_scale=1.0)])
  assert rows == json.loads(json.dumps(plain + guided))
  assert res.stdout.startswith("5 validation problems")
  assert "| CFG w |" in res.stdout and res.stdout.rstrip().endswith("| 1 |")
