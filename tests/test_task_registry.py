"""The task registry (`mdpo_jax.tasks.build`) and the `Task` classes.

Expected values are computed from the low-level task functions with the seed offsets written out
here, so the tests pin down the splits, prompts, SFT answers, rewards and keys a run gets.
"""

from __future__ import annotations

import json
import pickle
import types

import ml_collections
import pytest

from mdpo_jax import tasks
from mdpo_jax.tasks import Task, base
from mdpo_jax.tasks import countdown as cd
from mdpo_jax.tasks import gsm8k, reversal, stargraph, sudoku
from mdpo_jax.tasks import math as math_task

HELD, VAL, FRESH = 1_000_003, 2_000_003, 3_000_017


def _cfg(**over) -> types.SimpleNamespace:
  """A `config.task` section (the keys of configs/base.py), small sizes."""
  fields = dict(name="countdown", train_file="", eval_file="", val_file="", train_size=200,
                eval_size=50, val_size=50, sft_extra_fresh=0, num_numbers=(3,), number_min=1,
                number_max=20, target_min=1, target_max=100, answer_style="steps",
                target_sampling="reachable", solution_order="canonical", prompt_style="compact",
                empty_min=6, empty_max=10, graph_degree=3, arm_min=5, arm_max=5, graph_nodes=20)
  fields.update(over)
  return types.SimpleNamespace(**fields)


def _assert_disjoint(task, splits: dict[str, list]) -> None:
  for name, problems in splits.items():
    keys = {task.key(p) for p in problems}
    assert len(keys) == len(problems), name  # no duplicates within a split
    for other, others in splits.items():
      if other != name:
        assert keys.isdisjoint(task.key(p) for p in others), (name, other)


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


def test_registry_names_and_unknown_name():
  assert tasks.TASKS == {"countdown": cd.CountdownTask, "math": math_task.MathTask,
                         "gsm8k": gsm8k.GSM8KTask, "sudoku": sudoku.SudokuTask,
                         "stargraph": stargraph.StarGraphTask,
                         "reversal": reversal.ReversalTask}
  with pytest.raises(ValueError, match=r"^task.name='x': allowed \('countdown', 'gsm8k', 'math', "
                     r"'reversal', 'stargraph', 'sudoku'\)$"):
    tasks.build(_cfg(name="x"), 0)


@pytest.mark.parametrize("name,procedural", [("countdown", True), ("math", False),
                                             ("gsm8k", False), ("sudoku", True),
                                             ("stargraph", True), ("reversal", False)])
def test_every_task_implements_the_protocol(name, procedural):
  task = tasks.build(_cfg(name=name), 0)
  assert isinstance(task, Task) and isinstance(task, tasks.TASKS[name])
  assert task.name == name and task.procedural is procedural


def test_building_generates_nothing(monkeypatch):
  def boom(*args, **kwargs):
    raise AssertionError("generated problems while building the task")
  monkeypatch.setattr(cd, "generate_problems", boom)
  monkeypatch.setattr(sudoku, "generate_puzzles", boom)
  tasks.build(_cfg(train_size=10**9), 0)
  tasks.build(_cfg(name="sudoku", train_size=10**9), 0)
  tasks.build(_cfg(name="math", train_file="/nonexistent.jsonl"), 0)


def test_config_dict_and_namespace_give_the_same_task():
  ns = _cfg(train_size=30, eval_size=10)
  a = tasks.build(ns, 3)
  b = tasks.build(ml_collections.ConfigDict(vars(ns)), 3)
  assert a.train() == b.train() and a.held_out() == b.held_out()


# ----------------------------------------------------------------------------------------------
# Countdown
# ----------------------------------------------------------------------------------------------

COUNTDOWN_SETTINGS = [
    (0, {}),
    (7, dict(target_sampling="expression", solution_order="given", answer_style="expression",
             prompt_style="full", num_numbers=(2, 3), number_max=30, target_min=0,
             target_max=200)),
]


@pytest.mark.parametrize("seed,over", COUNTDOWN_SETTINGS)
def test_countdown_matches_the_generator(seed, over):
  cfg = _cfg(**over)
  kw = dict(num_numbers=tuple(cfg.num_numbers), number_range=(cfg.number_min, cfg.number_max),
            target_range=(cfg.target_min, cfg.target_max), target_sampling=cfg.target_sampling)
  train = cd.generate_problems(200, seed=seed, **kw)
  held = cd.generate_problems(50, seed=seed + HELD, exclude=train, **kw)
  val = cd.generate_problems(50, seed=seed + VAL, exclude=train + held, **kw)
  fresh = cd.generate_problems(60, seed=seed + FRESH, exclude=train + held + val, **kw)

  task = tasks.build(cfg, seed)
  assert task.train() == train and task.held_out() == held and task.validation() == val
  assert task.fresh(60) == fresh
  assert task.fresh(25, "task.sft_extra_fresh") == fresh[:25]
  assert base.sft_problems(task, 0) == train
  assert base.sft_problems(task, 25) == train + fresh[:25]
  for p in train[:40] + held[:10] + fresh[:10]:
    assert task.prompt(p) == cd.prompt(p, style=cfg.prompt_style)
    answer = task.sft_answer(p)
    assert answer == cd.solution_text(p, style=cfg.answer_style, order=cfg.solution_order)
    assert task.key(p) == (tuple(sorted(p.numbers)), p.target)
    assert task.reward(answer, p) == 1.0
    wrong = f"\\boxed{{{'+'.join(map(str, p.numbers))}}}"
    assert task.reward(wrong, p) == cd.reward(wrong, p.numbers, p.target)
    assert task.reward("no answer", p) == 0.0


def test_countdown_splits_are_disjoint_and_deterministic():
  task = tasks.build(_cfg(), 0)
  splits = {"train": task.train(), "held": task.held_out(), "val": task.validation(),
            "fresh": task.fresh(80)}
  assert [len(v) for v in splits.values()] == [200, 50, 50, 80]
  _assert_disjoint(task, splits)
  again = tasks.build(_cfg(), 0)
  assert again.fresh(30) == splits["fresh"][:30]  # a prefix, computed on its own
  assert again.train() == splits["train"] and again.validation() == splits["val"]
  assert tasks.build(_cfg(), 1).train() != splits["train"]
  # Memoised splits are copies: changing a returned list does not change the task.
  got = task.train()
  got.clear()
  assert task.train() == splits["train"]


@pytest.mark.parametrize("key,value,match", [
    ("target_sampling", "uniform", r"^task.target_sampling='uniform': allowed \('reachable', "),
    ("solution_order", "sorted", r"^task.solution_order='sorted': allowed "),
    ("prompt_style", "chat", r"^task.prompt_style='chat': allowed \('compact', 'full'\)$"),
    ("answer_style", "prose", r"^task.answer_style='prose': allowed "),
    ("num_numbers", (7,), r"^task.num_numbers=\(7,\): allowed "),
    ("num_numbers", (), r"^task.num_numbers=\(\): allowed "),
    ("number_max", 0, r"^task.number_max=0: allowed "),
    ("target_max", 0, r"^task.target_max=0: allowed "),
    ("train_size", -1, r"^task.train_size=-1: allowed "),
    ("val_size", 1.5, r"^task.val_size=1.5: allowed "),
])
def test_countdown_keys_are_validated_when_building(key, value, match):
  with pytest.raises(ValueError, match=match):
    tasks.build(_cfg(**{key: value}), 0)


def test_countdown_generation_errors_name_the_field():
  small = dict(number_max=4, target_max=12)  # 138 distinct problems, exhausted quickly
  with pytest.raises(ValueError, match=r"^task.train_size=140: could only generate 138"):
    tasks.build(_cfg(train_size=140, **small), 0).train()
  with pytest.raises(ValueError, match=r"^task.eval_size=120: not enough problems disjoint"):
    tasks.build(_cfg(train_size=20, eval_size=120, **small), 0).held_out()
  task = tasks.build(_cfg(train_size=20, eval_size=5, val_size=5, **small), 0)
  assert len(task.fresh(100)) == 100
  with pytest.raises(ValueError, match=r"^rl.fresh_size=110: not enough problems disjoint"):
    task.fresh(110)
  with pytest.raises(ValueError, match=r"^task.sft_extra_fresh=110: not enough problems"):
    base.sft_problems(task, 110)
  with pytest.raises(ValueError, match=r"^rl.fresh_size=-1: allowed an integer >= 0"):
    task.fresh(-1)


# ----------------------------------------------------------------------------------------------
# Sudoku
# ----------------------------------------------------------------------------------------------


def test_sudoku_matches_the_generator_and_is_disjoint():
  cfg = _cfg(name="sudoku", prompt_style="full", empty_min=5, empty_max=9)
  task = tasks.build(cfg, 4)
  ne = (5, 9)
  train = sudoku.generate_puzzles(200, seed=4, num_empty=ne)
  held = sudoku.generate_puzzles(50, seed=4 + HELD, num_empty=ne, exclude=[p for p, _ in train])
  assert task.train() == train and task.held_out() == held
  splits = {"train": train, "held": held, "val": task.validation(), "fresh": task.fresh(60)}
  assert [len(v) for v in splits.values()] == [200, 50, 50, 60]
  _assert_disjoint(task, splits)
  again = tasks.build(cfg, 4)
  assert again.fresh(20) == splits["fresh"][:20] and again.validation() == splits["val"]
  assert tasks.build(cfg, 5).train() != train
  assert base.sft_problems(task, 10) == train + splits["fresh"][:10]

  for puzzle, solution in (p for split in splits.values() for p in split):
    assert 5 <= puzzle.count("0") <= 9
    assert sudoku.solve_all(puzzle, limit=2) == [solution]  # unique, consistent with the givens
    assert all(g in ("0", s) for g, s in zip(puzzle, solution))
    assert task.key((puzzle, solution)) == puzzle
  puzzle, solution = p = held[0]
  assert task.prompt(p) == sudoku.prompt(puzzle, style="full")
  assert tasks.build(_cfg(name="sudoku"), 4).prompt(p) == f"Puzzle: {puzzle}\n"
  assert task.sft_answer(p) == f"\\boxed{{{solution}}}"
  for q in splits["val"]:
    assert task.reward(task.sft_answer(q), q) == 1.0


def test_sudoku_reward_counts_the_empty_cells():
  task = tasks.build(_cfg(name="sudoku", train_size=20), 0)
  for puzzle, solution in task.train():
    empty = [i for i, c in enumerate(puzzle) if c == "0"]
    for k in range(len(empty) + 1):
      grid = list(solution)
      for i in empty[:k]:
        grid[i] = "1" if solution[i] != "1" else "2"
      want = (len(empty) - k) / len(empty)
      assert task.reward(f"\\boxed{{{''.join(grid)}}}", (puzzle, solution)) == pytest.approx(want)
    assert task.reward("no grid", (puzzle, solution)) == 0.0


@pytest.mark.parametrize("over,match", [
    (dict(empty_min=-1), r"^task.empty_min=-1: allowed an integer in 0..12$"),
    (dict(empty_max=13), r"^task.empty_max=13: allowed an integer in task.empty_min \(6\)..12$"),
    (dict(empty_min=8, empty_max=6), r"^task.empty_max=6: allowed "),
    (dict(empty_min="6"), r"^task.empty_min='6': allowed "),
    (dict(prompt_style="chat"), r"^task.prompt_style='chat': allowed \('compact', 'full'\)$"),
    (dict(eval_size=-2), r"^task.eval_size=-2: allowed "),
])
def test_sudoku_keys_are_validated_when_building(over, match):
  with pytest.raises(ValueError, match=match):
    tasks.build(_cfg(name="sudoku", **over), 0)


def test_sudoku_generation_errors_name_the_field():
  full = dict(name="sudoku", empty_min=0, empty_max=0)  # only the 288 complete grids
  with pytest.raises(ValueError, match=r"^task.train_size=300: could only generate 288"):
    tasks.build(_cfg(train_size=300, **full), 0).train()
  task = tasks.build(_cfg(train_size=200, eval_size=50, val_size=30, **full), 0)
  assert len(task.held_out()) == 50
  with pytest.raises(ValueError, match=r"^task.val_size=40: not enough puzzles disjoint"):
    tasks.build(_cfg(train_size=200, eval_size=50, val_size=40, **full), 0).validation()
  assert len(task.validation()) == 30
  with pytest.raises(ValueError, match=r"^rl.fresh_size=10: not enough puzzles disjoint"):
    tasks.build(_cfg(train_size=200, eval_size=50, val_size=38, **full), 0).fresh(10)


# ----------------------------------------------------------------------------------------------
# Record tasks: math and gsm8k
# ----------------------------------------------------------------------------------------------

MATH_ROWS = [
    {"problem": "What is 1+1?", "solution": "It is \\boxed{2}."},
    {"problem": "Half of 1?", "answer": "\\frac{1}{2}"},
    {"problem": "What is 2+3?", "answer": "5", "solution": "2+3=5, so \\boxed{5}."},
]
GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=<<3+4=7>>7\n#### 7"},
    {"question": "A box holds 1,000 pens; 20 are sold.", "answer": "1000-20=980\n#### 980"},
    {"question": "Half of 9?", "answer": "9/2=4.5\n#### 4.50"},
]


def _write(path, rows) -> str:
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  return str(path)


def _record_cfg(tmp_path, name, rows, **over):
  files = {key: _write(tmp_path / f"{name}_{key}.jsonl", rows[i:] + rows[:i])
           for i, key in enumerate(("train_file", "eval_file", "val_file"))}
  return _cfg(name=name, **{**files, "train_size": 3, "eval_size": 2, "val_size": 1, **over})


def test_math_task(tmp_path):
  cfg = _record_cfg(tmp_path, "math", MATH_ROWS)
  task = tasks.build(cfg, 0)
  assert task.train() == math_task.load_jsonl(cfg.train_file)
  assert task.held_out() == math_task.load_jsonl(cfg.eval_file)[:2]
  assert task.validation() == math_task.load_jsonl(cfg.val_file)[:1]
  assert [r["problem"] for r in task.held_out()] == ["Half of 1?", "What is 2+3?"]
  train = task.train()
  assert [task.key(p) for p in train] == [("What is 1+1?", "2"), ("Half of 1?", "\\frac{1}{2}"),
                                          ("What is 2+3?", "5")]
  assert task.prompt(train[0]) == math_task.prompt("What is 1+1?")
  assert task.prompt(train[0]).startswith("What is 1+1?\nLet's think step by step")
  assert task.sft_answer(train[0]) == "It is \\boxed{2}."
  assert task.sft_answer(train[2]) == "2+3=5, so \\boxed{5}."
  with pytest.raises(ValueError, match=r"^task.train_file='.*': record 'Half of 1\?' has no "
                     "'solution'"):
    task.sft_answer(train[1])
  assert task.reward("so \\boxed{0.5}", train[1]) == 1.0
  assert task.reward("\\boxed{3}", train[0]) == 0.0
  with pytest.raises(ValueError, match=r"^rl.fresh_size=8: fresh problems need a procedural task "
                     r"\(countdown, sudoku\), got task.name='math'$"):
    task.fresh(8)
  with pytest.raises(ValueError, match=r"^task.sft_extra_fresh=4: fresh problems need"):
    base.sft_problems(task, 4)
  assert base.sft_problems(task, 0) == train


def test_gsm8k_task(tmp_path):
  cfg = _record_cfg(tmp_path, "gsm8k", GSM8K_ROWS, train_size=2)
  task = tasks.build(cfg, 0)
  train = task.train()
  assert train == gsm8k.load_jsonl(cfg.train_file)[:2]
  assert task.held_out() == gsm8k.load_jsonl(cfg.eval_file)[:2]
  assert task.validation() == gsm8k.load_jsonl(cfg.val_file)[:1]
  assert [task.key(p) for p in train] == [(GSM8K_ROWS[0]["question"], "7"),
                                          (GSM8K_ROWS[1]["question"], "980")]
  for p in task.held_out() + train:
    assert task.prompt(p) == gsm8k.prompt(p["question"])
    assert task.sft_answer(p) == p["answer"]  # the worked solution ending in "#### N"
    assert task.reward(task.sft_answer(p), p) == 1.0
    assert task.reward("\\boxed{12345}", p) == 0.0
  assert task.reward("about \\boxed{4.5}", task.held_out()[1]) == 1.0
  with pytest.raises(ValueError, match=r"^task.sft_extra_fresh=1: .*got task.name='gsm8k'$"):
    task.fresh(1, "task.sft_extra_fresh")


@pytest.mark.parametrize("name", ["math", "gsm8k"])
def test_record_task_file_errors_name_the_field(tmp_path, name):
  task = tasks.build(_cfg(name=name), 0)
  with pytest.raises(ValueError, match=rf"^task.train_file='': task.name='{name}' needs training"):
    task.train()
  with pytest.raises(ValueError, match=rf"^task.eval_file='': task.name='{name}' needs held-out"):
    task.held_out()
  with pytest.raises(ValueError, match=rf"^task.val_file='': tuning on {name} needs validation"):
    task.validation()
  missing = str(tmp_path / "missing.jsonl")
  with pytest.raises(ValueError, match=r"^task.eval_file='.*missing.jsonl': cannot read it"):
    tasks.build(_cfg(name=name, eval_file=missing), 0).held_out()
  # Each split needs only its own file.
  rows = MATH_ROWS if name == "math" else GSM8K_ROWS
  only_eval = tasks.build(_cfg(name=name, eval_file=_write(tmp_path / "e.jsonl", rows)), 0)
  assert len(only_eval.held_out()) == 3


# ----------------------------------------------------------------------------------------------
# Rewards travel to worker processes
# ----------------------------------------------------------------------------------------------


def test_rewards_pickle_small_after_the_splits_exist(tmp_path):
  built = {
      "countdown": tasks.build(_cfg(), 0),
      "sudoku": tasks.build(_cfg(name="sudoku"), 0),
      "math": tasks.build(_record_cfg(tmp_path, "math", MATH_ROWS), 0),
      "gsm8k": tasks.build(_record_cfg(tmp_path, "gsm8k", GSM8K_ROWS), 0),
  }
  completions = {"countdown": lambda t, p: t.sft_answer(p), "sudoku": lambda t, p: t.sft_answer(p),
                 "math": lambda t, p: "\\boxed{2}", "gsm8k": lambda t, p: t.sft_answer(p)}
  for name, task in built.items():
    problems = task.train() + task.held_out() + task.validation()
    if task.procedural:
      problems += task.fresh(20)
    data = pickle.dumps(task.reward)
    assert len(data) < 10_000, (name, len(data))
    reward = pickle.loads(data)
    p = problems[0]
    completion = completions[name](task, p)
    assert reward(completion, p) == task.reward(completion, p) == 1.0, name
    assert reward("nothing", p) == task.reward("nothing", p) == 0.0, name
