"""Procedural pretraining corpora: text that ships as code, made on demand (no file, no download).

`data.pretrain_files = "generated:NAME[:DOCS[:SEED]]"` selects one (`pretrain_source` hands it to
`pipeline.pretrain_dataset` like a JSONL file). Document i is drawn from its own
`random.Random(f"{NAME}:{SEED}:{i}")` (string seeds hash with SHA-512, the same on every machine
and Python process), so the corpus is random-access, deterministic per seed, and picklable for
grain's reader threads; DOCS (default 100,000) is how many documents an epoch holds.

Corpora (`CORPORA`):
  countdown_arithmetic  arithmetic text in Countdown's alphabet WITHOUT Countdown's pairing: no
                        "Numbers: [...] / Target: t" prompt is ever followed by its answer. Each
                        document is 1–4 lines, each line one of
                          equation  `20*(13-11)=40`           (an expression over 2–3 numbers in
                                                                1–20, then its value)
                          steps     `13-11=2, 20*2=40.`        (the same arithmetic, one operation
                                                                at a time, as answer_style=steps)
                          boxed     `\\boxed{20*(13-11)}`       (an expression alone, boxed)
                        Every intermediate value is a natural number (divisions are exact, no
                        negative results), and expressions carry only the parentheses the
                        operator precedence needs. It is the SMDM setting in miniature: an
                        unconditional model of the answer side's language, learnt before the
                        model ever sees a prompt paired with its answer.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Callable

PREFIX = "generated:"
DEFAULT_DOCS = 100_000
DEFAULT_SEED = 0
NUMBER_RANGE = (1, 20)       # Countdown's default task.number_min / number_max
OPERANDS = (2, 3)            # numbers per expression
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


@dataclasses.dataclass(frozen=True)
class Node:
  """An expression tree: a leaf holds `value` only; an inner node `op`, `left`, `right`."""
  value: int
  op: str = ""
  left: "Node | None" = None
  right: "Node | None" = None


def _combine(op: str, a: int, b: int) -> int | None:
  """a op b when it is a natural number (exact division, no negative result), else None."""
  if op == "+":
    return a + b
  if op == "-":
    return a - b if a >= b else None
  if op == "*":
    return a * b
  return a // b if b and a % b == 0 else None


def random_expression(rng: random.Random, numbers: list[int]) -> Node | None:
  """A random binary tree over `numbers` in order with random operators (None when some
  intermediate value is not a natural number)."""
  if len(numbers) == 1:
    return Node(numbers[0])
  split = rng.randint(1, len(numbers) - 1)
  op = rng.choice("+-*/")
  left = random_expression(rng, numbers[:split])
  right = random_expression(rng, numbers[split:])
  if left is None or right is None:
    return None
  value = _combine(op, left.value, right.value)
  return None if value is None else Node(value, op, left, right)


def render(node: Node) -> str:
  """The expression with only the parentheses precedence needs (`20*(13-11)`, `18/4*12`)."""
  if not node.op:
    return str(node.value)
  prec = _PRECEDENCE[node.op]
  left, right = render(node.left), render(node.right)
  if node.left.op and _PRECEDENCE[node.left.op] < prec:
    left = f"({left})"
  if node.right.op and (_PRECEDENCE[node.right.op] < prec
                        or (_PRECEDENCE[node.right.op] == prec and node.op in "-/")):
    right = f"({right})"
  return f"{left}{node.op}{right}"


def steps(node: Node) -> list[str]:
  """One `a op b=c` per operation, innermost first (left subtree before right)."""
  if not node.op:
    return []
  return (steps(node.left) + steps(node.right)
          + [f"{node.left.value}{node.op}{node.right.value}={node.value}"])


def _draw_expression(rng: random.Random) -> Node:
  """Rejection-sampled until every intermediate value is a natural number."""
  while True:
    numbers = [rng.randint(*NUMBER_RANGE) for _ in range(rng.choice(OPERANDS))]
    node = random_expression(rng, numbers)
    if node is not None:
      return node


def countdown_arithmetic_line(rng: random.Random) -> str:
  """One line of the `countdown_arithmetic` corpus (module docstring)."""
  node = _draw_expression(rng)
  kind = rng.choice(("equation", "steps", "boxed"))
  if kind == "equation":
    return f"{render(node)}={node.value}"
  if kind == "steps":
    return ", ".join(steps(node)) + "."
  return f"\\boxed{{{render(node)}}}"


def countdown_arithmetic(rng: random.Random) -> str:
  """A document: 1–4 lines of `countdown_arithmetic_line`."""
  return "\n".join(countdown_arithmetic_line(rng) for _ in range(rng.randint(1, 4)))


CORPORA: dict[str, Callable[[random.Random], str]] = {
    "countdown_arithmetic": countdown_arithmetic,
}


@dataclasses.dataclass(frozen=True)
class GeneratedSource:
  """Random-access documents of corpus `name`: `len` is `num_docs`, item i is document i."""
  name: str
  num_docs: int = DEFAULT_DOCS
  seed: int = DEFAULT_SEED

  def __len__(self) -> int:
    return self.num_docs

  def __getitem__(self, index: int) -> str:
    index = int(index)
    if not -self.num_docs <= index < self.num_docs:
      raise IndexError(f"document {index} out of range for {self}")
    return CORPORA[self.name](random.Random(f"{self.name}:{self.seed}:{index % self.num_docs}"))


def _natural(text: str, what: str, spec: str) -> int:
  if not text.isdigit():
    raise ValueError(f"data.pretrain_files={spec!r}: {what} {text!r} must be a whole number; "
                     f"allowed {PREFIX}NAME[:DOCS[:SEED]]")
  return int(text)


def parse_spec(spec: str) -> GeneratedSource:
  """`generated:NAME[:DOCS[:SEED]]` as a source, or a one-line ValueError naming the field."""
  parts = spec[len(PREFIX):].split(":") if spec.startswith(PREFIX) else []
  if not parts or len(parts) > 3:
    raise ValueError(f"data.pretrain_files={spec!r}: allowed {PREFIX}NAME[:DOCS[:SEED]] with "
                     f"NAME one of {tuple(CORPORA)}")
  name = parts[0]
  if name not in CORPORA:
    raise ValueError(f"data.pretrain_files={spec!r}: unknown corpus {name!r}; allowed "
                     f"{tuple(CORPORA)}")
  docs = _natural(parts[1], "DOCS", spec) if len(parts) > 1 else DEFAULT_DOCS
  seed = _natural(parts[2], "SEED", spec) if len(parts) > 2 else DEFAULT_SEED
  if docs < 1:
    raise ValueError(f"data.pretrain_files={spec!r}: DOCS must be ≥ 1")
  return GeneratedSource(name, docs, seed)


def is_generated(spec: str) -> bool:
  return spec.startswith(PREFIX)
