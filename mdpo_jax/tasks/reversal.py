"""The reversal-curse miniature (SMDM §5; Berglund et al., 2023, "The Reversal Curse").

Fictitious facts pair a name (three capitals) with a description (three small letters). Half of
the facts are trained as "NAME is desc." and half as "desc is NAME." (both sentence shapes
occur in training, each fact in one order only, as Berglund et al.'s NameToDescription /
DescriptionToName subsets). Training rows are the statements themselves: the prompt is the
one-character start marker ">" and the answer the whole sentence, so a masked diffusion model's
SFT loss may mask any token of it and an autoregressive model predicts every token of it.

Queries give the first half of a sentence and ask for the rest: in the *same* order as the fact
was trained (memorisation) or in the *reverse* order ("desc is " → NAME for a fact trained as
"NAME is desc."). Autoregressive models are reported to answer reverse queries at chance; SMDM
reports masked diffusion models doing much better. Exact match: the completion up to its first
"." must equal the missing half.

Splits: train = `task.train_size` statements (facts alternate between the two orders); held-out
= both queries of the first `task.eval_size` facts; validation = both queries of the next
`task.val_size` facts (disjoint from held-out, for choosing the training length). Keys are
(name, query kind), so the splits are disjoint problems about shared facts — by design: the
question is whether what was trained can be retrieved the other way round.
"""

from __future__ import annotations

import itertools
import string
from typing import NamedTuple

import numpy as np

from mdpo_jax.tasks import base

START = ">"
QUERIES = ("same", "reverse")


class Item(NamedTuple):
  """A fact and how it is used: `query` "" for a training statement, else "same" | "reverse"."""

  name: str
  description: str
  order: str        # "nd": trained as "NAME is desc."; "dn": trained as "desc is NAME."
  query: str = ""

  def halves(self) -> tuple[str, str]:
    """(first, second) half of the sentence this item states or asks about."""
    forward = (self.name, self.description) if self.order == "nd" else (
        self.description, self.name)
    return forward if self.query in ("", "same") else forward[::-1]


def make_facts(n: int, seed: int) -> list[Item]:
  """`n` facts with distinct names and distinct descriptions, alternating orders (nd, dn, ...)."""
  rng = np.random.default_rng(seed)
  space = 26 ** 3
  if n > space:
    raise ValueError(f"at most {space} facts (three-letter names)")
  names = rng.choice(space, size=n, replace=False)
  descriptions = rng.choice(space, size=n, replace=False)

  def word(i: int, letters: str) -> str:
    return "".join(letters[(int(i) // 26 ** k) % 26] for k in range(3))

  return [Item(word(a, string.ascii_uppercase), word(b, string.ascii_lowercase),
               "nd" if i % 2 == 0 else "dn")
          for i, (a, b) in enumerate(zip(names, descriptions))]


def reward(completion: str, item: Item) -> float:
  """1.0 when the completion up to its first "." (spaces stripped) is the missing half."""
  return float(completion.split(".", 1)[0].strip() == item.halves()[1])


class ReversalTask:
  """The facts as a task (`base.Task`): statements to train on, queries to evaluate."""

  name = "reversal"
  procedural = False
  reward = staticmethod(reward)

  def __init__(self, task_cfg, seed: int):
    base.check_sizes(task_cfg)
    n = base.check_int(task_cfg, "train_size", 1, 26 ** 3)
    base.check_int(task_cfg, "eval_size", 0, n, f"an integer in 0..task.train_size ({n})")
    eval_size = task_cfg.eval_size
    base.check_int(task_cfg, "val_size", 0, n - eval_size,
                   f"an integer in 0..task.train_size − task.eval_size ({n - eval_size})")
    self.cfg, self.seed = task_cfg, seed
    self._facts: list[Item] | None = None

  def facts(self) -> list[Item]:
    if self._facts is None:
      self._facts = make_facts(self.cfg.train_size, self.seed)
    return list(self._facts)

  def _queries(self, facts: list[Item]) -> list[Item]:
    return [f._replace(query=q) for f, q in itertools.product(facts, QUERIES)]

  def train(self) -> list[Item]:
    return self.facts()

  def held_out(self) -> list[Item]:
    return self._queries(self.facts()[: self.cfg.eval_size])

  def validation(self) -> list[Item]:
    start = self.cfg.eval_size
    return self._queries(self.facts()[start: start + self.cfg.val_size])

  def fresh(self, n: int, field: str = "rl.fresh_size") -> list:
    raise base.not_procedural(field, n, self.name)

  def prompt(self, item: Item) -> str:
    return START if not item.query else f"{START}{item.halves()[0]} is "

  def sft_answer(self, item: Item) -> str:
    first, second = item.halves()
    return f"{first} is {second}." if not item.query else f"{second}."

  def key(self, item: Item) -> tuple[str, str]:
    return (item.name, item.query)
