"""Training loop: the loss falls, a stopped run resumes exactly, the CLI rejects bad configs."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from mdpo_jax import tasks
from mdpo_jax.models import llada
from mdpo_jax.training import checkpoint, metrics, optim, setup, sft_loop, steps
from mdpo_jax.training import state as state_lib
from run_helpers import cli_env


def _tiny_config(num_steps=8):
  c = base.get_config()
  c.model.d_model, c.model.n_layers, c.model.n_heads, c.model.n_kv_heads = 32, 2, 2, 2
  c.model.mlp_hidden_size = 64
  c.task.train_size, c.task.eval_size = 200, 8
  c.data.batch_size = 8
  c.optim.lr, c.optim.warmup_steps = 3e-3, 2
  c.train.num_steps = num_steps
  c.train.log_every = 1
  c.train.checkpoint_every = 4
  c.train.async_checkpoint = False
  c.eval.num_problems, c.eval.batch_size = 8, 8
  c.eval.gen_length, c.eval.block_length, c.eval.steps = 8, 8, (4,)
  c.eval.remasking = ("low_confidence",)
  c.eval.trajectory_stats = False
  c.logging.tensorboard = False
  return c


def _losses(workdir):
  return {r["step"]: r["loss"] for r in metrics.read_jsonl(workdir / "metrics.jsonl")
          if "loss" in r}


def test_training_lowers_the_loss(tmp_path):
  c = _tiny_config(num_steps=60)
  c.train.log_every, c.task.eval_size = 10, 0   # no held-out evaluation: this is about the loss
  c.train.checkpoint_every = 60
  c.optim.grad_accum_steps = 2
  sft_loop.train(c, tmp_path)
  losses = _losses(tmp_path)
  assert losses[60] < 0.7 * losses[10], losses


def test_diverging_training_fails_and_saves_nothing_diverged(tmp_path):
  """lr 1e6 drives the loss to NaN/Inf: those steps are skipped and counted, three in a row stop
  the run (one line, naming what to change), metrics.jsonl stays strict JSON, and every
  checkpoint it left holds finite parameters."""
  c = _tiny_config(num_steps=12)
  c.optim.lr, c.optim.warmup_steps, c.optim.clip_norm = 1e6, 0, 0.0
  c.train.log_every, c.train.checkpoint_every = 1, 1
  with pytest.raises(FloatingPointError, match=r"^training diverged at step \d+: the last 3 "
                     r"optimiser steps had a NaN/Inf loss .*optim.max_skipped_steps=3.*optim.lr"):
    sft_loop.train(c, tmp_path)
  def no_constants(name):
    raise AssertionError(f"metrics.jsonl holds {name}: not strict JSON")
  with open(tmp_path / "metrics.jsonl", encoding="utf-8") as f:
    rows = [json.loads(line, parse_constant=no_constants) for line in f]
  skipped = [r["step"] for r in rows if r.get("skipped")]
  assert len(skipped) == 3 and skipped == list(range(skipped[0], skipped[0] + 3)), rows
  assert all(r["loss"] is None for r in rows if r.get("skipped")), rows
  ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
  latest = ckpt.latest_step()
  ckpt.close()
  assert latest is not None and latest == skipped[-1] - 1   # skipped steps were not saved
  tokenizer = setup.make_tokenizer(c)
  cfg = setup.model_config(c, tokenizer)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                          llada.abstract_params(cfg))
  params, _, _ = checkpoint.restore_params(tmp_path / "checkpoints", abstract)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_a_non_finite_step_is_skipped_and_counted():
  """A NaN loss (or gradient) leaves params and optimiser moments exactly as they were and
  counts the skip; the next finite step applies and resets the count."""
  c = _tiny_config()
  params = {"w": jnp.arange(4.0), "b": jnp.ones(())}
  opt = optim.make_optimizer(c.optim, 10)
  state = state_lib.create(params, opt, 0)
  grads = jax.tree.map(jnp.ones_like, params)
  state1, out = steps.apply_gradients(state, grads, opt, jnp.float32(0.5))
  assert float(out["skipped"]) == 0 and int(optim.skipped_in_a_row(state1.opt_state)) == 0
  for bad_loss, bad_grads in ((jnp.float32(jnp.nan), grads),
                              (jnp.float32(0.5), {"w": grads["w"].at[2].set(jnp.inf),
                                                  "b": grads["b"]})):
    state2, out = steps.apply_gradients(state1, bad_grads, opt, bad_loss)
    assert float(out["skipped"]) == 1 and int(optim.skipped_in_a_row(state2.opt_state)) == 1
    for a, b in zip(jax.tree.leaves((state1.params, state1.opt_state.inner_state)),
                    jax.tree.leaves((state2.params, state2.opt_state.inner_state))):
      np.testing.assert_array_equal(a, b)
  state3, _ = steps.apply_gradients(state2, grads, opt, jnp.float32(0.5))
  assert int(optim.skipped_in_a_row(state3.opt_state)) == 0
  assert not np.array_equal(state3.params["w"], state2.params["w"])


def test_mesh_rules_reach_the_run(tmp_path):
  """`mesh.rules` decides where the run's parameters (and their optimiser moments) live."""
  from mdpo_jax.training import run as run_lib
  specs = {}
  for rules in ("", "embed="):
    c = _tiny_config()
    c.mesh.data, c.mesh.fsdp, c.mesh.rules = 1, 8, rules
    run, state = run_lib.setup_run(c, tmp_path / (rules or "default"))
    run.close()
    specs[rules] = tuple(state.params["wte"].sharding.spec)   # wte: (vocab, embed)
    assert tuple(state.opt_state.inner_state[1][0].mu["wte"].sharding.spec) == specs[rules]
  assert specs[""][1] == "fsdp"        # the default table puts embed on fsdp
  assert len(specs["embed="]) < 2 or specs["embed="][1] is None   # "embed=": replicated


def test_schedule_shapes():
  o = base.get_config().optim
  o.lr, o.warmup_steps, o.end_lr_ratio, o.schedule = 1.0, 10, 0.1, "cosine"
  s = optim.learning_rate_schedule(o, 110)
  assert float(s(0)) == 0.0 and abs(float(s(5)) - 0.5) < 1e-6 and abs(float(s(10)) - 1.0) < 1e-6
  assert abs(float(s(110)) - 0.1) < 1e-6 and abs(float(s(60)) - 0.55) < 1e-6  # cosine midpoint
  o.schedule = "linear"
  assert abs(float(optim.learning_rate_schedule(o, 110)(60)) - 0.55) < 1e-6
  o.schedule = "warmup_only"
  with pytest.raises(ValueError, match="optim.schedule"):
    optim.learning_rate_schedule(o, 110)


def test_evaluate_cli_reproduces_the_end_of_training_eval(tmp_path):
  c = _tiny_config(num_steps=4)
  c.eval.remasking = ("low_confidence", "rcr")
  c.eval.trajectory_stats = True
  result = sft_loop.train(c, tmp_path)
  # The checkpoint holds exactly the final parameters (restored alone, as evaluation/RL do).
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                          result["params"])
  params, saved_config, step = checkpoint.restore_params(tmp_path / "checkpoints", abstract)
  assert step == 4 and saved_config["train"]["num_steps"] == 4
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(result["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  flags = ["--config.model.d_model=32", "--config.model.n_layers=2", "--config.model.n_heads=2",
           "--config.model.n_kv_heads=2", "--config.model.mlp_hidden_size=64",
           "--config.task.train_size=200", "--config.task.eval_size=8",
           "--config.eval.num_problems=8", "--config.eval.batch_size=8",
           "--config.eval.gen_length=8", "--config.eval.block_length=8", "--config.eval.steps=4",
           "--config.eval.remasking=low_confidence,rcr"]
  env = cli_env()
  out = tmp_path / "rows.json"
  res = subprocess.run([sys.executable, "-m", "mdpo_jax.evaluate", "--config",
                        "configs/countdown_tiny_sft.py", "--checkpoint",
                        str(tmp_path / "checkpoints"), "--output", str(out), *flags],
                       capture_output=True, text=True, env=env, cwd=repo, timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  import json
  rows = json.loads(out.read_text())
  assert [r["setting"] for r in rows] == [r["setting"] for r in result["eval"]]
  for got, want in zip(rows, result["eval"]):
    for key in ("accuracy", "intermediate_correct", "over_denoised"):
      assert got[key] == want[key], (key, got, want)
  assert "| rcr | 4 | 2 |" in res.stdout


def test_math_task_wiring(tmp_path):
  import json
  rows = [{"problem": "What is 1+1?", "solution": "It is \\boxed{2}."},
          {"problem": "Half of 1?", "answer": "\\frac{1}{2}"}]
  for name in ("train.jsonl", "eval.jsonl"):
    (tmp_path / name).write_text("\n".join(json.dumps(r) for r in rows))
  c = base.get_config()
  c.task.name = "math"
  with pytest.raises(ValueError, match="task.train_file"):
    tasks.build(c.task, c.seed).train()
  c.task.train_file, c.task.eval_file = str(tmp_path / "train.jsonl"), str(tmp_path / "eval.jsonl")
  task = tasks.build(c.task, c.seed)
  train, held = task.train(), task.held_out()
  assert [r["answer"] for r in held] == ["2", "\\frac{1}{2}"]
  assert task.prompt(held[0]).startswith("What is 1+1?\nLet's think step by step")
  assert task.reward("so \\boxed{0.5}", held[1]) == 1.0 and task.reward("\\boxed{3}", held[0]) == 0.0
  with pytest.raises(ValueError, match="solution"):
    task.sft_answer(train[1])  # the second record has no solution to train on
  assert task.key(held[0]) != task.key(held[1])


def test_sft_problems_add_rl_fresh_prompts_in_order():
  """The control for RL on fresh prompts trains on the SFT problems + RL's first fresh ones."""
  c = base.get_config()
  c.task.train_size, c.task.eval_size, c.task.val_size = 300, 60, 60
  task = tasks.build(c.task, c.seed)
  run = type("Run", (), {"task": task, "config": c})
  train, held = sft_loop._problems(run)
  assert train == task.train() and held == task.held_out()
  c.task.sft_extra_fresh = 50
  train, _ = sft_loop._problems(run)
  assert train == task.train() + task.fresh(120, "rl.fresh_size")[:50]


def test_evaluation_pads_a_partial_last_batch():
  """7 problems in batches of 3 (the last one padded) score exactly as one batch of 7: greedy
  decoding of a row does not depend on the rows beside it, and the padding copies are dropped."""
  from mdpo_jax.data import pipeline
  from mdpo_jax.models import llada
  from mdpo_jax.training import evaluation, setup
  c = _tiny_config()
  tokenizer = setup.make_tokenizer(c)
  cfg = setup.model_config(c, tokenizer)
  params = llada.init_params(cfg, jax.random.key(3))
  task = tasks.build(c.task, c.seed)
  problems = task.held_out()[:7]
  prompts, mask = pipeline.eval_prompts([task.prompt(p) for p in problems],
                                        tokenizer, prompt_len=c.data.prompt_len,
                                        pad_id=cfg.pad_token_id)
  scored = []

  def reward(answer, problem):  # records what is scored; dense: 1 (even length) or 0.5 / 0
    scored.append((answer, problem))
    return 1.0 if len(answer) % 2 == 0 else 0.5 * (len(answer) % 3 == 0)

  def run(batch_size):
    scored.clear()
    rows = evaluation.evaluate(cfg, params, tokenizer, prompts, mask, problems, reward,
                               [evaluation.Setting(4, "low_confidence", 0.0)], gen_length=8,
                               block_length=8, batch_size=batch_size, trajectory_stats=False,
                               progress=False, per_problem=True)
    return rows[0], list(scored)
  (whole, scored_whole), (parts, scored_parts) = run(7), run(3)
  assert [p for _, p in scored_parts] == list(problems)   # each problem once, padding dropped
  assert scored_parts == scored_whole                     # the same answers
  assert parts["n"] == 7 and parts["accuracy"] == whole["accuracy"]
  # A dense reward: accuracy counts full rewards only, mean_reward is the reward's mean.
  values = [reward(a, p) for a, p in scored_whole]
  assert whole["accuracy"] == sum(v == 1.0 for v in values) / 7
  assert whole["mean_reward"] == pytest.approx(np.mean(values))
  assert whole["solved"] == parts["solved"] == [v == 1.0 for v in values]   # per problem, in order
