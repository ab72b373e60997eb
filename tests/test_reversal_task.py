"""The reversal-curse task: what is trained, what is asked, and how it is scored."""

import re
import types

import pytest

from mdpo_jax import tasks
from mdpo_jax.tasks import reversal


def _cfg(**over):
  fields = dict(name="reversal", train_size=40, eval_size=30, val_size=10, sft_extra_fresh=0)
  fields.update(over)
  return types.SimpleNamespace(**fields)


def test_statements_and_queries_are_the_two_halves_of_trained_sentences():
  task = tasks.build(_cfg(), seed=3)
  facts = task.train()
  assert len({f.name for f in facts}) == len({f.description for f in facts}) == 40
  assert [f.order for f in facts[:4]] == ["nd", "dn", "nd", "dn"]
  assert all(re.fullmatch("[A-Z]{3}", f.name) and re.fullmatch("[a-z]{3}", f.description)
             for f in facts)
  sentences = {task.prompt(f) + task.sft_answer(f) for f in facts}
  for f in facts:   # the statement is in the fact's trained order, after the start marker
    first, second = (f.name, f.description) if f.order == "nd" else (f.description, f.name)
    assert task.prompt(f) == ">" and task.sft_answer(f) == f"{first} is {second}."
  for q in task.held_out():
    sentence = task.prompt(q) + task.sft_answer(q)
    # same-order queries complete a trained sentence; reverse ones never do, but swap its halves
    assert (sentence in sentences) == (q.query == "same")
    first, second = task.prompt(q)[1:-len(" is ")], task.sft_answer(q)[:-1]
    assert (f">{second} is {first}." in sentences) == (q.query == "reverse")
  assert tasks.build(_cfg(), seed=3).train() == facts != tasks.build(_cfg(), seed=4).train()


def test_splits_are_disjoint_problems_and_validation_uses_other_facts():
  task = tasks.build(_cfg(), seed=0)
  held, val = task.held_out(), task.validation()
  assert len(held) == 60 and len(val) == 20
  keys = [set(map(task.key, split)) for split in (task.train(), held, val)]
  assert all(a.isdisjoint(b) for i, a in enumerate(keys) for b in keys[i + 1:])
  assert {p.name for p in held}.isdisjoint(p.name for p in val)
  with pytest.raises(ValueError, match=r"^rl.fresh_size=5: fresh problems need a procedural"):
    task.fresh(5)


def test_reward_is_exact_match_up_to_the_first_period():
  item = reversal.Item("ABC", "xyz", "nd", "reverse")   # asks "xyz is " → ABC
  assert reversal.reward("ABC.", item) == 1.0
  assert reversal.reward(" ABC . junk", item) == 1.0
  assert reversal.reward("ABD.", item) == 0.0
  assert reversal.reward("ABCD.", item) == 0.0
  assert reversal.reward("xyz.", item._replace(query="same")) == 1.0


@pytest.mark.parametrize("over, message", [
    (dict(eval_size=41), r"^task.eval_size=41: allowed an integer in 0..task.train_size \(40\)$"),
    (dict(val_size=11), r"^task.val_size=11: allowed an integer in 0..task.train_size − "
                        r"task.eval_size \(10\)$"),
    (dict(train_size=0), r"^task.train_size=0: allowed an integer in 1..17576$"),
])
def test_size_errors_name_the_field(over, message):
  with pytest.raises(ValueError, match=message):
    tasks.build(_cfg(**over), seed=0)
