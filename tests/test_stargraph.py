"""Star-graph path finding: the generator's graphs are star graphs of the asked shape, the
serialisation reads back, the verifier accepts exactly the source-to-goal path, splits are
disjoint, config errors are one line; and the ILM trainer runs from the CLI on it."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from configs import stargraph_ilm
from mdpo_jax import config as config_lib
from mdpo_jax import tasks
from mdpo_jax.tasks import stargraph as sg
from mdpo_jax.training import ilm_loop
from run_helpers import cli_env


def _cfg(**over):
  fields = dict(name="stargraph", train_size=300, eval_size=50, val_size=50, sft_extra_fresh=0,
                graph_degree=3, arm_min=5, arm_max=5, graph_nodes=20)
  fields.update(over)
  return types.SimpleNamespace(**fields)


def _arms(graph: sg.StarGraph) -> list[str]:
  """The arms read back from the edge list alone: walk from the source along out-edges."""
  out = {}
  for e in graph.edges:
    out.setdefault(e[0], []).append(e[1])
  arms = []
  for first in out[graph.source]:
    arm = graph.source + first
    while arm[-1] in out:
      assert len(out[arm[-1]]) == 1   # only the source branches
      arm += out[arm[-1]][0]
    arms.append(arm)
  return arms


@pytest.mark.parametrize("degree,lo,hi,nodes", [(3, 5, 5, 20), (3, 3, 6, 20), (2, 2, 3, 6)])
def test_graphs_are_star_graphs_of_the_asked_shape(degree, lo, hi, nodes):
  graphs = sg.generate_graphs(400, seed=1, degree=degree, arm_range=(lo, hi), num_nodes=nodes)
  lengths = Counter()
  for g in graphs:
    arms = _arms(g)
    assert len(arms) == degree
    labels = [c for arm in arms for c in arm[1:]] + [g.source]
    assert len(set(labels)) == len(labels) == sum(len(a) - 1 for a in arms) + 1
    assert all(ord(c) - ord("a") < nodes for c in labels)
    assert len(g.edges) == len(set(g.edges)) == len(labels) - 1
    assert g.path in arms and g.path[0] == g.source and g.path[-1] == g.goal
    lengths.update(len(a) for a in arms)
    text = sg.prompt(g)   # "uv|uv|.../sg=" reads back
    edge_part, query = text[:-1].split("/")
    assert tuple(edge_part.split("|")) == g.edges and query == g.source + g.goal
  assert set(lengths) == set(range(lo, hi + 1))   # every arm length occurs
  assert sg.generate_graphs(50, seed=1, degree=degree, arm_range=(lo, hi),
                            num_nodes=nodes) == graphs[:50]   # a function of the seed


def test_the_verifier_accepts_exactly_the_path():
  for g in sg.generate_graphs(100, seed=2, degree=3, arm_range=(3, 6), num_nodes=20):
    assert sg.reward(g.path, g) == 1.0 and sg.reward(f" {g.path}\n", g) == 1.0
    labels = sorted({c for e in g.edges for c in e})
    # Every walk along the edges from the source (each arm's prefixes) and every wrong ending.
    candidates = {arm[:i] for arm in _arms(g) for i in range(1, len(arm) + 1)}
    candidates |= {g.path[:-1] + c for c in labels} | {g.path[::-1], g.path + g.goal, ""}
    for text in candidates:
      assert sg.reward(text, g) == float(text == g.path), text
    assert sg.reward(None, g) == 0.0


def test_task_splits_are_disjoint_and_answers_are_paths():
  task = tasks.build(_cfg(arm_min=3, arm_max=6), 0)
  splits = {"train": task.train(), "held_out": task.held_out(), "val": task.validation(),
            "fresh": task.fresh(40)}
  keys = {name: {task.key(p) for p in ps} for name, ps in splits.items()}
  assert [len(k) for k in keys.values()] == [300, 50, 50, 40]
  names = list(keys)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      assert keys[a].isdisjoint(keys[b]), (a, b)
  g = splits["train"][0]
  assert task.reward(task.sft_answer(g), g) == 1.0 and task.prompt(g) == sg.prompt(g)


@pytest.mark.parametrize("over,message", [
    (dict(arm_max=4), r"^task.arm_max=4: allowed an integer in task.arm_min \(5\)..26$"),
    (dict(graph_nodes=12), r"^task.graph_nodes=12: allowed an integer in 13..26 "),
    (dict(graph_degree=0), r"^task.graph_degree=0: allowed an integer in 1..25$"),
])
def test_config_errors_are_one_line(over, message):
  with pytest.raises(ValueError, match=message):
    tasks.build(_cfg(**over), 0)


def test_ilm_batches_are_a_function_of_the_step():
  """Each epoch visits every row once; a batch depends only on (step, batch size, rows, seed)."""
  seen = np.concatenate([ilm_loop.batch_indices(s, 8, 20, seed=3) for s in range(5)])
  assert sorted(seen[:20]) == list(range(20)) and sorted(seen[20:40]) == list(range(20))
  np.testing.assert_array_equal(ilm_loop.batch_indices(3, 8, 20, seed=3), seen[24:32])
  assert not np.array_equal(ilm_loop.batch_indices(0, 8, 20, seed=4), seen[:8])


def test_the_ilm_trainer_runs_from_the_command_line(tmp_path):
  """`trainer=ilm` on star graphs through `python -m mdpo_jax.train`: 3 steps, a checkpoint,
  finite losses in metrics.jsonl and the held-out table; a model it cannot train is one line."""
  root = Path(__file__).parents[1]
  common = [sys.executable, "-m", "mdpo_jax.train", "--config", "configs/stargraph_ilm.py",
            f"--workdir={tmp_path}", "--config.train.num_steps=3", "--config.optim.warmup_steps=1",
            "--config.train.log_every=1", "--config.task.train_size=40",
            "--config.task.eval_size=8", "--config.task.val_size=8", "--config.eval.num_problems=8",
            "--config.eval.batch_size=8", "--config.data.batch_size=8", "--config.model.n_layers=1",
            "--config.model.d_model=32", "--config.model.mlp_hidden_size=64",
            "--config.logging.tensorboard=False"]
  done = subprocess.run(common, cwd=root, env=cli_env(), capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "finished at step 3" in done.stdout and "| ilm/joint | 9 | 1 | 0 |" in done.stdout
  logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in logged if "loss" in r]
  assert len(losses) == 3 and all(np.isfinite(losses))
  assert (tmp_path / "checkpoints" / "3").is_dir()
  config = stargraph_ilm.get_config()
  config.model.family = "dream"
  with pytest.raises(ValueError, match=r"^trainer='ilm': model.family='dream', .*allowed: "):
    ilm_loop.setup_run(config_lib.parse(config), tmp_path / "bad")


@pytest.mark.parametrize("split", ["easy", "medium", "small"])
def test_the_three_recipes_differ_only_in_objective_and_sampler(split):
  """Equal size, data, optimiser and steps: the comparison's recipes agree on every key but the
  trainer, the model family (AR: causal) and the sampler settings."""
  from mdpo_jax import ilm_recipes
  flat = {m: config_lib.parse(ilm_recipes.recipe(m, split, steps=7)).to_json()
          for m in ("ilm", "mdm", "ar")}

  def leaves(tree, prefix=""):
    for k, v in tree.items():
      yield from (leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)])
  differ = {k for m in ("ilm", "ar") for (k, v), (_, w) in
            zip(leaves(flat[m]), leaves(flat["mdm"])) if v != w}
  assert differ == {"trainer", "model.family", "eval.sampler", "eval.cache"}
  assert flat["ilm"]["trainer"] == "ilm" and flat["ar"]["model"]["family"] == "ar"
  task = flat["mdm"]["task"]
  assert (task["graph_degree"], task["arm_min"], task["arm_max"]) == ilm_recipes.SPLITS[split]
  assert flat["mdm"]["train"]["num_steps"] == 7
