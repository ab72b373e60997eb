"""The memory planner (`training/memory_plan.py`, `python -m mdpo_jax.plan`): its per-device
bytes equal those of the live arrays the real run setup makes, its compiled figures equal those
of an independent lowering of the loop's step on live arrays and a real batch, and a chip too
small for the plan is told it does not fit."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import countdown_tiny_mdpo
from mdpo_jax import config as config_lib
from mdpo_jax import parallel
from mdpo_jax.rl import algorithms
from mdpo_jax.training import hardware, memory_plan, plan_report, rl_loop
from mdpo_jax.training import run as run_lib

ROOT = Path(__file__).resolve().parents[1]
_TINY = {"model.n_layers": 1, "model.d_model": 32, "model.n_heads": 4, "model.n_kv_heads": 4,
         "model.mlp_hidden_size": 64, "mesh.data": 2, "mesh.fsdp": 4, "task.train_size": 64,
         "task.eval_size": 8, "task.val_size": 8, "eval.num_problems": 8,
         "logging.tensorboard": False}


def _config(module, **overrides):
  raw = module.get_config()
  for key, value in {**_TINY, **overrides}.items():
    section, name = key.split(".")
    raw[section][name] = value
  return config_lib.parse(raw)


def _live_bytes(tree) -> int:
  """What one device holds of live arrays: the first addressable shard of each leaf."""
  return sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree))


def _same_figures(program: memory_plan.Program, compiled) -> None:
  stats = compiled.memory_analysis()
  assert (program.argument, program.output, program.alias, program.temp) == (
      stats.argument_size_in_bytes, stats.output_size_in_bytes, stats.alias_size_in_bytes,
      stats.temp_size_in_bytes)


def test_mdpo_plan_equals_live_arrays_and_an_independent_update(tmp_path):
  rl = {"rl.prompts_per_update": 2, "rl.group_size": 2, "rl.top_k": 2, "rl.micro_batch": 4,
        "rl.beta": 0.1, "rl.fresh_size": 8}
  config = _config(countdown_tiny_mdpo, **rl)
  run, state = run_lib.setup_run(config, tmp_path)
  try:
    plan = memory_plan.plan(run.config, run.mesh, programs=("update",))
    assert plan.params == _live_bytes(state.params) > 0
    assert plan.optimizer == _live_bytes((state.opt_state, state.step, state.rng))
    # The float32 Adam moments are sharded like the params (replicated ones would be 8× more).
    assert 0 <= plan.optimizer - 2 * plan.params < 64
    # β > 0 with full fine-tuning: the loop keeps a copy of the start as the reference.
    assert plan.reference == _live_bytes(jax.tree.map(jnp.copy, state.params)) == plan.params
    assert plan.base == 0
    # Independently: rows laid out as SPEC §4 / `mdpo_loss` documents them, placed by
    # `shard_batch`, through the loop's own update on the live state.
    n, length = 2 * 2 * 2, config.data.prompt_len + config.rl.gen_length
    rows = {"x_t": np.zeros((n, length), np.int32), "target": np.zeros((n, length), np.int32),
            "masked": np.zeros((n, length), bool), "conf": np.zeros((n, length), np.float32),
            "adv": np.zeros((n,), np.float32),
            "attention_mask": np.ones((n, length), np.int32),
            "ref_logp": np.zeros((n, length), np.float32)}
    update = rl_loop.make_update(algorithms.get("mdpo"), run)
    compiled = update.lower(state, parallel.shard_batch(rows, run.mesh, run.rules),
                            None).compile()
    (program,) = plan.programs
    _same_figures(program, compiled)
    assert program.resident_args == plan.params + plan.optimizer
    assert plan.total == plan.resident + program.extra
    # A chip one byte too small does not fit; exactly full is tight; one with room fits.
    for hbm, verdict in ((plan.total - 1, "does not fit"), (plan.total, "tight"),
                         (10 * plan.total, "fits")):
      chip = hardware.Chip("test chip", hbm, 1, "this test")
      row = plan_report.Row(hardware.Slice("test-8", chip, 8), run.config, plan)
      assert row.verdict == verdict
      assert f"| {verdict} |" in plan_report.summary_table([row], "MiB")
  finally:
    run.close()


def test_slice_and_mesh_names():
  assert [hardware.parse_slice(s).devices for s in ("v5e-16", "v5p-8", "v6e-8", "8xH100")] \
      == [16, 4, 8, 8]
  assert hardware.parse_slice("v5p-8").hbm_bytes == 95 * 2**30
  assert hardware.parse_slice("8xh200").hbm_bytes == 141 * 10**9
  with pytest.raises(ValueError, match="multiple of 2"):
    hardware.parse_slice("v5p-7")
  with pytest.raises(ValueError, match="not a slice name"):
    hardware.parse_slice("tpu-8")
  assert plan_report.parse_mesh("fsdp=16") == {"data": 1, "fsdp": 16, "tensor": 1}
  assert plan_report.parse_mesh("data=2,fsdp=4") == {"data": 2, "fsdp": 4, "tensor": 1}
  with pytest.raises(ValueError, match="is not axis=size"):
    plan_report.parse_mesh("fsdp=x")


def test_cli_plans_a_mesh_for_every_chip(tmp_path):
  """`python -m mdpo_jax.plan` re-executes itself with the devices the mesh needs (this process
  has 8), compiles the step and judges it against every chip of the table."""
  out = tmp_path / "plan.json"
  env = {k: v for k, v in os.environ.items() if k != "MDPO_JAX_TEST_COMPILE_CACHE"}
  overrides = [f"--config.{k}={v}" for k, v in _TINY.items() if not k.startswith("mesh.")]
  proc = subprocess.run(
      [sys.executable, "-m", "mdpo_jax.plan", "--config", "configs/countdown_tiny_sft.py",
       "--mesh=fsdp=2", "--programs=sft", "--micro_batches=4", "--config.data.batch_size=8",
       f"--json={out}", *overrides],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = json.loads(out.read_text())["rows"]
  assert [r["chip"] for r in rows] == [c.name for c in hardware.CHIPS.values()]
  for r in rows:
    assert r["devices"] == 2 and r["mesh"] == {"data": 1, "fsdp": 2, "tensor": 1}
    assert r["micro_batch"] == 4 and r["verdict"] == "fits"
    assert r["total"] == r["resident"] + max(p["extra"] for p in r["programs"])
  assert proc.stdout.count("| fits |") == len(hardware.CHIPS)


@pytest.mark.parametrize("recipe", ["countdown_tiny_cogrpo", "stargraph_ilm"])
def test_trainers_the_planner_does_not_model_are_a_one_line_error(recipe):
  config = config_lib.parse(importlib.import_module(f"configs.{recipe}").get_config())
  with pytest.raises(ValueError) as e:
    plan_report.check_programs(config, None)
  assert "\n" not in str(e.value)
  assert str(e.value).startswith(f"trainer={config.trainer!r}: the memory planner does not")
