"""Countdown: reach a target with + - * / using each given number exactly once.

This module is pure Python (no JAX) and holds everything the task needs:

* `Problem` and `generate_problems`: seeded procedural problems whose targets the solver can reach;
* `solve`: a brute-force solver over all orderings and binary expression trees, exact arithmetic
  with `fractions.Fraction`, used to write SFT targets (`solution_text`); optionally preferring
  solutions that keep the numbers in the order given;
* `prompt`: the SPEC §5 prompt ("full") or a bare one for tiny character models ("compact");
* `extract_answer` and `reward`: the verifier. Model text is NEVER given to Python's
  `eval`/`exec`/`compile` (the reference implementation does that); `parse_expression` is a
  hand-written tokenizer and recursive-descent parser with hard bounds on length, nesting and
  literal size, so any input is rejected or evaluated in bounded time.

Accepted expression syntax (`parse_expression`)
-----------------------------------------------
* non-negative integer literals of at most `MAX_LITERAL_DIGITS` ASCII digits, no leading zeros
  ("07" is rejected, "0" is fine); no decimal points, exponents, or other numerals;
* binary `+ - * /` with the usual precedence and left associativity; `×`, `·`, `\\times`,
  `\\cdot` mean `*`; `÷`, `\\div` mean `/`; `−` (U+2212) means `-`. The letter `x` is NOT a
  multiplication sign (it would be ambiguous with a variable);
* parentheses, also written `\\left(` / `\\right)`; unary minus (`-3`, `-(4-9)`), no unary plus;
* whitespace anywhere between tokens; nothing else (no names, calls, `**`, `%`, `//`, braces,
  implicit multiplication such as `2(3+4)`).

Bounds: at most `MAX_EXPRESSION_CHARS` characters (checked before tokenizing) and nesting depth
`MAX_DEPTH` (parentheses and unary minus). Division by zero is an error. Arithmetic is exact.

Solution text format (`solution_text`)
--------------------------------------
* "expression": ``\\boxed{(15-3)*4}``.
* "steps": every binary operation of the boxed expression in evaluation order (post-order, left
  operand first), written ``L op R=V`` and joined by ``", "``, then ``". "`` and the boxed
  expression: ``15-3=12, 12*4=48. \\boxed{(15-3)*4}``. Operands that are negative or not integers
  are written in parentheses, e.g. ``8/(1/3)=24``; results plainly (``8/3``). The solver prefers
  solutions whose intermediate values are non-negative integers, so these forms are rare.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import random
from collections import Counter
from fractions import Fraction
from typing import Iterable, Sequence, Union

from mdpo_jax.tasks import base
from mdpo_jax.tasks.text import last_boxed

__all__ = [
    "CountdownTask",
    "MAX_DEPTH",
    "MAX_EXPRESSION_CHARS",
    "MAX_LITERAL_DIGITS",
    "MAX_SOLVER_NUMBERS",
    "ExpressionError",
    "ParsedExpression",
    "Problem",
    "countdown_reward",
    "evaluate_expression",
    "extract_answer",
    "generate_problems",
    "is_correct",
    "parse_expression",
    "prompt",
    "reward",
    "solution_text",
    "solve",
]

MAX_EXPRESSION_CHARS = 256
MAX_DEPTH = 32
MAX_LITERAL_DIGITS = 6
MAX_SOLVER_NUMBERS = 6
SOLUTION_ORDERS = ("canonical", "given")
PROMPT_STYLES = ("compact", "full")
ANSWER_STYLES = ("expression", "steps")
TARGET_SAMPLINGS = ("reachable", "expression")
TOLERANCE = Fraction(1, 100_000)  # |value - target| <= 1e-5, as in SPEC §5


# ----------------------------------------------------------------------------------------------
# Safe expression evaluator
# ----------------------------------------------------------------------------------------------


class ExpressionError(ValueError):
  """An answer string is not an accepted arithmetic expression (or divides by zero)."""


@dataclasses.dataclass(frozen=True)
class Num:
  """An integer literal."""

  value: int


@dataclasses.dataclass(frozen=True)
class Neg:
  """Unary minus."""

  operand: "Node"
  value: Fraction


@dataclasses.dataclass(frozen=True)
class BinOp:
  """A binary operation; `value` is computed (exactly) when the node is built."""

  op: str
  left: "Node"
  right: "Node"
  value: Fraction


Node = Union[Num, Neg, BinOp]


@dataclasses.dataclass(frozen=True)
class ParsedExpression:
  """Result of `parse_expression`: the tree, its exact value and its literals in text order."""

  tree: Node
  value: Fraction
  numbers: tuple[int, ...]


# Multi-character aliases, longest first where prefixes overlap.
_COMMANDS = (("\\times", "*"), ("\\cdot", "*"), ("\\div", "/"), ("\\left(", "("), ("\\right)", ")"))
_CHAR_ALIASES = {
    "+": "+", "-": "-", "*": "*", "/": "/", "(": "(", ")": ")",
    "\u00d7": "*", "\u00b7": "*", "\u00f7": "/", "\u2212": "-",
}
_WHITESPACE = frozenset(" \t\n\r")


def _node_value(node: Node) -> Fraction:
  return Fraction(node.value) if isinstance(node, Num) else node.value


def _tokenize(text: str) -> list[tuple[str, int]]:
  """Split `text` into ("num", value) and (op, 0) tokens; raise ExpressionError on anything else."""
  tokens: list[tuple[str, int]] = []
  i, n = 0, len(text)
  while i < n:
    ch = text[i]
    if ch in _WHITESPACE:
      i += 1
    elif "0" <= ch <= "9":
      j = i
      while j < n and "0" <= text[j] <= "9":
        j += 1
      digits = text[i:j]
      if len(digits) > MAX_LITERAL_DIGITS:
        raise ExpressionError(f"integer literal longer than {MAX_LITERAL_DIGITS} digits at position {i}")
      if len(digits) > 1 and digits[0] == "0":
        raise ExpressionError(f"integer literal with a leading zero at position {i}: {digits!r}")
      tokens.append(("num", int(digits)))
      i = j
    elif ch in _CHAR_ALIASES:
      tokens.append((_CHAR_ALIASES[ch], 0))
      i += 1
    elif ch == "\\":
      for command, op in _COMMANDS:
        if text.startswith(command, i):
          tokens.append((op, 0))
          i += len(command)
          break
      else:
        raise ExpressionError(f"unsupported LaTeX command at position {i}")
    else:
      raise ExpressionError(
          f"unexpected character {ch!r} at position {i}; allowed: digits, + - * / (or × ÷ \\times "
          "\\cdot \\div), parentheses and spaces")
  return tokens


class _Parser:
  """Recursive descent over the token list; depth counts parentheses and unary minus."""

  def __init__(self, tokens: list[tuple[str, int]]):
    self.tokens = tokens
    self.pos = 0
    self.depth = 0

  def peek(self) -> str | None:
    return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

  def expect(self, kind: str) -> tuple[str, int]:
    if self.peek() != kind:
      found = "end of input" if self.peek() is None else repr(self.peek())
      raise ExpressionError(f"expected {kind!r}, found {found}")
    tok = self.tokens[self.pos]
    self.pos += 1
    return tok

  def enter(self) -> None:
    self.depth += 1
    if self.depth > MAX_DEPTH:
      raise ExpressionError(f"expression nested deeper than {MAX_DEPTH} levels")

  def expression(self) -> Node:
    node = self.term()
    while self.peek() in ("+", "-"):
      op = self.tokens[self.pos][0]
      self.pos += 1
      right = self.term()
      node = _apply(op, node, right)
    return node

  def term(self) -> Node:
    node = self.unary()
    while self.peek() in ("*", "/"):
      op = self.tokens[self.pos][0]
      self.pos += 1
      right = self.unary()
      node = _apply(op, node, right)
    return node

  def unary(self) -> Node:
    if self.peek() == "-":
      self.pos += 1
      self.enter()
      operand = self.unary()
      self.depth -= 1
      return Neg(operand, -_node_value(operand))
    return self.primary()

  def primary(self) -> Node:
    kind = self.peek()
    if kind == "num":
      return Num(self.expect("num")[1])
    if kind == "(":
      self.pos += 1
      self.enter()
      node = self.expression()
      self.expect(")")
      self.depth -= 1
      return node
    found = "end of input" if kind is None else repr(kind)
    raise ExpressionError(f"expected a number or '(', found {found}")


def _apply(op: str, left: Node, right: Node) -> BinOp:
  a, b = _node_value(left), _node_value(right)
  if op == "+":
    value = a + b
  elif op == "-":
    value = a - b
  elif op == "*":
    value = a * b
  else:
    if b == 0:
      raise ExpressionError("division by zero")
    value = a / b
  return BinOp(op, left, right, value)


def parse_expression(expr: str) -> ParsedExpression:
  """Parse and evaluate an arithmetic expression exactly, without ever executing code.

  Raises ExpressionError for anything outside the syntax in the module docstring: non-str input,
  more than MAX_EXPRESSION_CHARS characters, nesting deeper than MAX_DEPTH, literals longer than
  MAX_LITERAL_DIGITS, unknown characters, malformed structure, or division by zero.
  """
  if not isinstance(expr, str):
    raise ExpressionError(f"expr must be a str, got {type(expr).__name__}")
  if len(expr) > MAX_EXPRESSION_CHARS:
    raise ExpressionError(f"expression has {len(expr)} characters; at most {MAX_EXPRESSION_CHARS} allowed")
  tokens = _tokenize(expr)
  if not tokens:
    raise ExpressionError("empty expression")
  parser = _Parser(tokens)
  tree = parser.expression()
  if parser.pos != len(tokens):
    raise ExpressionError(f"unexpected {tokens[parser.pos][0]!r} after a complete expression")
  numbers = tuple(v for kind, v in tokens if kind == "num")
  return ParsedExpression(tree, _node_value(tree), numbers)


def evaluate_expression(expr: str) -> Fraction:
  """Exact value of `expr` (see `parse_expression`); raises ExpressionError if not accepted."""
  return parse_expression(expr).value


# ----------------------------------------------------------------------------------------------
# Verifier
# ----------------------------------------------------------------------------------------------


def _strip_claimed_result(text: str) -> str:
  """Drop a trailing ``= <integer>`` (the claimed result), e.g. ``(15-3)*4 = 48`` -> ``(15-3)*4``.

  The value is checked against the true target anyway, so the claim adds nothing.
  """
  left, sep, right = text.rpartition("=")
  right = right.strip().rstrip(".").strip()
  if sep and right and (right.isascii() and right.lstrip("-").isdigit()):
    return left.strip()
  return text.strip()


_EXPRESSION_CHARS = frozenset("0123456789+-*/() \t=\u00d7\u00f7\u2212")


def _looks_like_expression(line: str) -> bool:
  return (bool(line) and all(c in _EXPRESSION_CHARS for c in line)
          and any(c.isdigit() for c in line) and any(c in "+-*/\u00d7\u00f7\u2212" for c in line))


def extract_answer(completion: str) -> str | None:
  """The answer expression a completion commits to, or None.

  In order: the content of the last complete ``\\boxed{...}`` (balanced braces; an unclosed box
  is skipped); else the content of the last ``<answer>...</answer>``; else the last line that
  consists only of arithmetic characters (an operator and a digit required, ``$`` delimiters and a
  final ``.`` tolerated). In every case a trailing ``= <integer>`` is removed. Linear time.
  """
  if not isinstance(completion, str):
    return None
  boxed = last_boxed(completion)
  if boxed is not None:
    return _strip_claimed_result(boxed)
  close = completion.rfind("</answer>")
  if close >= 0:
    open_ = completion.rfind("<answer>", 0, close)
    if open_ >= 0:
      return _strip_claimed_result(completion[open_ + len("<answer>"):close])
  for line in reversed(completion.splitlines()):
    line = line.strip().strip("$").strip()
    if line.endswith("."):
      line = line[:-1].rstrip()
    if _looks_like_expression(line):
      return _strip_claimed_result(line)
  return None


def is_correct(expr: str, numbers: Sequence[int], target: int | Fraction) -> bool:
  """True iff `expr` parses, uses exactly the multiset `numbers`, and is within 1e-5 of `target`."""
  try:
    parsed = parse_expression(expr)
    wanted = Counter(operator.index(x) for x in numbers)
    if Counter(parsed.numbers) != wanted:
      return False
    return abs(parsed.value - Fraction(target)) <= TOLERANCE
  except Exception:  # noqa: BLE001 -- a verifier answers wrong, it does not crash
    return False


def reward(completion: str, numbers: Sequence[int], target: int) -> float:
  """1.0 if the extracted answer (`extract_answer`) `is_correct`, else 0.0. Never raises."""
  try:
    expr = extract_answer(completion)
    return 1.0 if expr is not None and is_correct(expr, numbers, target) else 0.0
  except Exception:  # noqa: BLE001
    return 0.0


# ----------------------------------------------------------------------------------------------
# Solver
# ----------------------------------------------------------------------------------------------

_ADD, _MUL, _ATOM = 0, 1, 2  # precedence class of an expression's top-level operator
_PRECEDENCE = {"+": _ADD, "-": _ADD, "*": _MUL, "/": _MUL}


def _is_natural(v: int | Fraction) -> bool:
  return v.denominator == 1 and v >= 0


def _exact(v: Fraction) -> int | Fraction:
  """Integral values as plain ints: hashing and arithmetic on Fraction are ~10x slower."""
  return v.numerator if v.denominator == 1 else v


def _combine(op: str, a: int | Fraction, b: int | Fraction) -> int | Fraction | None:
  """a op b exactly (ints where integral); None for division by zero."""
  if op == "+":
    return _exact(a + b) if type(a) is not int or type(b) is not int else a + b
  if op == "-":
    return _exact(a - b) if type(a) is not int or type(b) is not int else a - b
  if op == "*":
    return _exact(a * b) if type(a) is not int or type(b) is not int else a * b
  if b == 0:
    return None
  if type(a) is int and type(b) is int:
    q, r = divmod(a, b)
    return q if r == 0 else Fraction(a, b)
  return _exact(Fraction(a) / b)


def _merge_into(best: dict, left: dict, right: dict, is_full: bool) -> None:
  """Add every `left op right` candidate to `best` ((value, class) -> (key, string)), keeping the
  smallest key per slot. Keys are (non-natural intermediates, parenthesis pairs, length, string)."""
  left_items, right_items = list(left.items()), list(right.items())
  for (a, lcls), (lkey, ls) in left_items:
    for (b, rcls), (rkey, rs) in right_items:
      for op, prec in _PRECEDENCE.items():
        v = _combine(op, a, b)
        if v is None:
          continue
        lpar = lcls < prec
        rpar = rcls <= prec
        bad = lkey[0] + rkey[0] + (0 if is_full or _is_natural(v) else 1)
        parens = lkey[1] + rkey[1] + lpar + rpar
        length = lkey[2] + rkey[2] + 1 + 2 * (lpar + rpar)
        slot = (v, prec)
        old = best.get(slot)
        if old is not None and (bad, parens, length) > old[0][:3]:
          continue  # cannot win: skip building the string
        s = (f"({ls})" if lpar else ls) + op + (f"({rs})" if rpar else rs)
        key = (bad, parens, length, s)
        if old is None or key < old[0]:
          best[slot] = (key, s)


def _leaf(x: int) -> dict:
  s = str(x)
  return {(x, _ATOM): ((0, 0, len(s), s), s)}


def _best_per_value(table: dict) -> dict[int | Fraction, str]:
  result: dict = {}
  for (v, _), (key, s) in table.items():
    if v not in result or key < result[v][0]:
      result[v] = (key, s)
  return {v: s for v, (_, s) in result.items()}


# Every multiset of 3 numbers in 1..20 fits (1540): splits of one run reuse each table.
@functools.lru_cache(maxsize=4096)
def _reachable(sorted_numbers: tuple[int, ...]) -> dict[int | Fraction, str]:
  """Every value reachable using each number once, mapped to its preferred expression.

  Dynamic programming over subsets (bitmasks) of the numbers: each subset keeps, per
  (value, precedence class of the top operator), the candidate with the smallest key
  (non-natural intermediate values, parenthesis pairs, length, string). The key is additive
  given the children's classes (the class decides whether a child needs parentheses), so the
  minimum over all trees is exact; the string makes the order total, hence deterministic and
  independent of the input order. Parentheses are exactly those needed for the string to parse
  back to the same tree (left-associative parsing), so e.g. ``a+(b-c)`` loses to ``a+b-c``.
  Values are exact: ints when integral, else Fractions (equal values hash alike, so
  ``result.get(Fraction(t))`` works).
  """
  n = len(sorted_numbers)
  full = (1 << n) - 1
  table: list[dict] = [{} for _ in range(full + 1)]
  for i, x in enumerate(sorted_numbers):
    table[1 << i] = _leaf(x)
  for mask in range(1, full + 1):
    if mask & (mask - 1) == 0:
      continue
    sub = (mask - 1) & mask
    while sub:
      _merge_into(table[mask], table[sub], table[mask ^ sub], mask == full)
      sub = (sub - 1) & mask
  return _best_per_value(table[full])


@functools.lru_cache(maxsize=4096)
def _reachable_in_order(numbers: tuple[int, ...]) -> dict[int | Fraction, str]:
  """Like `_reachable`, restricted to expressions whose numbers appear in the given order.

  The same key and parenthesis rules, by dynamic programming over contiguous runs
  ``numbers[i:j]`` instead of subsets.
  """
  n = len(numbers)
  table = {(i, i + 1): _leaf(x) for i, x in enumerate(numbers)}
  for width in range(2, n + 1):
    for i in range(n - width + 1):
      j, best = i + width, {}
      for k in range(i + 1, j):
        _merge_into(best, table[(i, k)], table[(k, j)], width == n)
      table[(i, j)] = best
  return _best_per_value(table[(0, n)])


def _check_numbers(numbers: Sequence[int], name: str = "numbers") -> tuple[int, ...]:
  try:
    nums = tuple(operator.index(x) for x in numbers)
  except TypeError as e:
    raise ValueError(f"{name} must be a sequence of integers, got {numbers!r}") from e
  if not 1 <= len(nums) <= MAX_SOLVER_NUMBERS:
    raise ValueError(f"{name} must hold 1..{MAX_SOLVER_NUMBERS} integers, got {len(nums)}: {nums}")
  if any(x < 0 or len(str(x)) > MAX_LITERAL_DIGITS for x in nums):
    raise ValueError(f"{name} must be non-negative with at most {MAX_LITERAL_DIGITS} digits, got {nums}")
  return nums


def solve(numbers: Sequence[int], target: int, *, order: str = "canonical") -> str | None:
  """A minimal-parentheses expression using each of `numbers` once that equals `target`, or None.

  Brute force over all orderings and binary trees with + - * / in exact arithmetic (division by
  zero excluded). Among solutions, prefers (in order) non-negative integer intermediate values,
  fewer parentheses, shorter, then lexicographically smaller strings -- deterministic and
  independent of the order of `numbers`. Example: ``solve([3, 15, 4], 48) == "(15-3)*4"``.
  `order="given"` first looks for a solution that writes the numbers in the order given (the
  same preferences among those), and falls back to the canonical one: a solution that copies
  the prompt's order is a simpler function of the prompt for a small model to learn:
  ``solve([4, 15, 3], 48, order="given") == "4*(15-3)"``, while ``[3, 15, 4]`` has no in-order
  solution and gets the canonical ``"(15-3)*4"``.
  Supports up to MAX_SOLVER_NUMBERS numbers; CPU time grows fast with the count: ~1 ms for 3,
  ~10 ms for 4, ~1 s for 5, ~20 s for 6. Results of the last 128 number sets are cached.
  """
  nums = _check_numbers(numbers)
  if order not in SOLUTION_ORDERS:
    raise ValueError(f"order must be one of {SOLUTION_ORDERS}, got {order!r}")
  if order == "given":
    found = _reachable_in_order(nums).get(Fraction(target))
    if found is not None:
      return found
  return _reachable(tuple(sorted(nums))).get(Fraction(target))


# ----------------------------------------------------------------------------------------------
# Problems, prompts and SFT text
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Problem:
  """A Countdown problem; `solution` (optional) is an expression reaching `target`."""

  numbers: tuple[int, ...]
  target: int
  solution: str | None = None


def _range_arg(value, name: str, low_limit: int | None) -> tuple[int, int]:
  try:
    lo, hi = (operator.index(v) for v in value)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name} must be a pair of integers (low, high), got {value!r}") from e
  if lo > hi or (low_limit is not None and lo < low_limit):
    bound = f" and low >= {low_limit}" if low_limit is not None else ""
    raise ValueError(f"{name} must satisfy low <= high{bound}, got {value!r}")
  return lo, hi


def generate_problems(
    n: int,
    *,
    seed: int,
    num_numbers: int | Sequence[int] = 3,
    number_range: tuple[int, int] = (1, 20),
    target_range: tuple[int, int] = (1, 100),
    require_solvable: bool = True,
    exclude: Iterable[Problem] = (),
    target_sampling: str = "reachable",
) -> list[Problem]:
  """`n` distinct problems, a deterministic function of the arguments.

  Each problem draws its count from `num_numbers` (an int, or a sequence of allowed counts picked
  uniformly), then numbers uniformly from `number_range` (inclusive). With `require_solvable` the
  target is uniform over the integers in `target_range` (inclusive) that the solver reaches with
  those numbers (number sets reaching none are redrawn) and `solution` is the solver's expression;
  otherwise the target is uniform over `target_range` and `solution` may be None.
  `target_sampling="expression"` instead draws a random expression over the numbers in the order
  drawn (a uniformly random split point at every node, operators uniform over + - * /) and takes
  its value as the target, redrawing until it is an integer in `target_range` -- the way public
  Countdown sets are usually built (e.g. Stream-of-Search, TinyZero's Countdown-Tasks), which
  favours targets with simple solutions; the solution is still the solver's. Problems are
  distinct up to the order of the numbers, and none equals (up to order) a problem in `exclude`
  (e.g. pass the test set when generating training data). Uses its own `random.Random(seed)`.
  """
  try:
    n = operator.index(n)
    seed = operator.index(seed)
  except TypeError as e:
    raise ValueError(f"n and seed must be integers, got n={n!r}, seed={seed!r}") from e
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}")
  counts = (num_numbers,) if isinstance(num_numbers, int) else tuple(num_numbers)
  if not counts or any(not isinstance(c, int) or not 1 <= c <= MAX_SOLVER_NUMBERS for c in counts):
    raise ValueError("num_numbers must be an int or a non-empty sequence of ints in "
                     f"1..{MAX_SOLVER_NUMBERS}, got {num_numbers!r}")
  num_lo, num_hi = _range_arg(number_range, "number_range", 0)
  if len(str(num_hi)) > MAX_LITERAL_DIGITS:
    raise ValueError(f"number_range must stay below 10**{MAX_LITERAL_DIGITS}, got {number_range!r}")
  tgt_lo, tgt_hi = _range_arg(target_range, "target_range", None)
  if target_sampling not in TARGET_SAMPLINGS:
    raise ValueError(f"target_sampling must be one of {TARGET_SAMPLINGS}, got {target_sampling!r}")

  rng = random.Random(seed)
  seen = {(tuple(sorted(p.numbers)), p.target) for p in exclude}
  problems: list[Problem] = []
  attempts, max_attempts = 0, 1000 + 200 * n
  while len(problems) < n:
    attempts += 1
    if attempts > max_attempts:
      raise ValueError(f"could only generate {len(problems)} of n={n} distinct problems in {max_attempts} "
                       "attempts; widen number_range/target_range or lower n")
    k = rng.choice(counts)
    numbers = tuple(rng.randint(num_lo, num_hi) for _ in range(k))
    if target_sampling == "expression":
      value = _random_expression_value(rng, numbers)
      if value is None or type(value) is not int or not tgt_lo <= value <= tgt_hi:
        continue
      target = value
      reachable = _reachable(tuple(sorted(numbers)))
    elif require_solvable:
      reachable = _reachable(tuple(sorted(numbers)))
      targets = sorted(int(v) for v in reachable if v.denominator == 1 and tgt_lo <= v <= tgt_hi)
      if not targets:
        continue
      target = rng.choice(targets)
    else:
      target = rng.randint(tgt_lo, tgt_hi)
      reachable = _reachable(tuple(sorted(numbers)))
    key = (tuple(sorted(numbers)), target)
    if key in seen:
      continue
    seen.add(key)
    problems.append(Problem(numbers, target, reachable.get(Fraction(target))))
  return problems


def _random_expression_value(rng: random.Random, numbers: Sequence[int]) -> int | Fraction | None:
  """The value of a random expression over `numbers` in order (None on division by zero)."""
  if len(numbers) == 1:
    return numbers[0]
  split = rng.randint(1, len(numbers) - 1)
  op = rng.choice("+-*/")
  left = _random_expression_value(rng, numbers[:split])
  right = _random_expression_value(rng, numbers[split:])
  if left is None or right is None:
    return None
  return _combine(op, left, right)


def prompt(problem: Problem, *, style: str = "full") -> str:
  """The model prompt. "full": instructions + the SPEC §5 suffix; "compact": only the data lines.

  "full" ends with ``"\\n\\nNumbers: [a, b, c]\\nTarget: t"``; "compact" is
  ``"Numbers: [a, b, c]\\nTarget: t\\n"`` (for tiny character-level models trained from scratch).
  """
  data = f"Numbers: [{', '.join(str(x) for x in problem.numbers)}]\nTarget: {problem.target}"
  if style == "compact":
    return data + "\n"
  if style == "full":
    return (
        "Write an arithmetic expression that equals the target number, using every one of the "
        "given numbers exactly once. Only +, -, *, / and parentheses are allowed. Think it "
        "through step by step, then put only the final expression inside \\boxed{}, without an "
        "equals sign or the target, for example \\boxed{(a - b) * c}.\n\n" + data)
  raise ValueError(f"style must be 'full' or 'compact', got {style!r}")


def _operand(v: Fraction) -> str:
  return str(v) if _is_natural(v) else f"({v})"


def _steps(node: Node, out: list[str]) -> None:
  if isinstance(node, BinOp):
    _steps(node.left, out)
    _steps(node.right, out)
    out.append(f"{_operand(_node_value(node.left))}{node.op}{_operand(_node_value(node.right))}={node.value}")
  elif isinstance(node, Neg):
    _steps(node.operand, out)
    out.append(f"-{_operand(_node_value(node.operand))}={node.value}")


def solution_text(problem: Problem, *, style: str = "expression", order: str = "canonical") -> str:
  """The SFT answer for `problem` (format in the module docstring).

  `order="canonical"` uses `problem.solution` if set, else `solve`; `order="given"` uses
  `solve(..., order="given")` (numbers in the prompt's order when some solution has them so).
  Raises ValueError if there is no solution or `style`/`order` is not allowed.
  """
  if style not in ("expression", "steps"):
    raise ValueError(f"style must be 'expression' or 'steps', got {style!r}")
  if order == "canonical" and problem.solution is not None:
    expr = problem.solution
  else:
    expr = solve(problem.numbers, problem.target, order=order)
  if expr is None:
    raise ValueError(f"no solution for numbers={problem.numbers} target={problem.target}")
  boxed = f"\\boxed{{{expr}}}"
  if style == "expression":
    return boxed
  steps: list[str] = []
  _steps(parse_expression(expr).tree, steps)
  return (", ".join(steps) + ". " + boxed) if steps else boxed


# ----------------------------------------------------------------------------------------------
# The task (mdpo_jax.tasks.base.Task)
# ----------------------------------------------------------------------------------------------


def countdown_reward(completion: str, problem: Problem) -> float:
  """`reward` for a `Problem` (module-level: it pickles by reference to reward workers)."""
  return reward(completion, problem.numbers, problem.target)


class CountdownTask(base.ProceduralTask):
  """Procedural Countdown (`generate_problems` with the `task.*` distribution keys).

  Splits as in `base.ProceduralTask`, distinct up to the order of the numbers. Prompt:
  `prompt(p, style=task.prompt_style)`; SFT answer: `solution_text(p, style=task.answer_style,
  order=task.solution_order)`; reward: the safe verifier; key: (sorted numbers, target).
  """

  name = "countdown"
  reward = staticmethod(countdown_reward)

  def __init__(self, task_cfg, seed: int):
    super().__init__(task_cfg, seed)
    base.check_choice(task_cfg, "target_sampling", TARGET_SAMPLINGS)
    base.check_choice(task_cfg, "solution_order", SOLUTION_ORDERS)
    base.check_choice(task_cfg, "prompt_style", PROMPT_STYLES)
    base.check_choice(task_cfg, "answer_style", ANSWER_STYLES)
    counts = task_cfg.num_numbers
    if (isinstance(counts, (str, bytes)) or not isinstance(counts, Sequence) or not counts
        or any(type(c) is not int or not 1 <= c <= MAX_SOLVER_NUMBERS for c in counts)):
      raise ValueError(f"task.num_numbers={counts!r}: allowed a non-empty tuple of integers in "
                       f"1..{MAX_SOLVER_NUMBERS}")
    top = 10 ** MAX_LITERAL_DIGITS - 1
    base.check_int(task_cfg, "number_min", 0, top)
    lo = task_cfg.number_min
    base.check_int(task_cfg, "number_max", lo, top, f"an integer in task.number_min ({lo})..{top}")
    base.check_int(task_cfg, "target_min", None)
    lo = task_cfg.target_min
    base.check_int(task_cfg, "target_max", lo, None, f"an integer >= task.target_min ({lo})")
    self._kwargs = dict(num_numbers=tuple(counts),
                        number_range=(task_cfg.number_min, task_cfg.number_max),
                        target_range=(task_cfg.target_min, task_cfg.target_max),
                        target_sampling=task_cfg.target_sampling)

  def _generate(self, n: int, seed: int, exclude: list, field: str) -> list[Problem]:
    try:
      return generate_problems(n, seed=seed, exclude=exclude, **self._kwargs)
    except ValueError as e:
      if not exclude:
        raise ValueError(f"{field}={n}: {e}") from e
      raise ValueError(f"{field}={n}: not enough problems disjoint from the other splits ({e}); "
                       "widen the number/target ranges or lower the size") from e

  def prompt(self, problem: Problem) -> str:
    return prompt(problem, style=self.cfg.prompt_style)

  def sft_answer(self, problem: Problem) -> str:
    return solution_text(problem, style=self.cfg.answer_style, order=self.cfg.solution_order)

  def key(self, problem: Problem) -> tuple[tuple[int, ...], int]:
    return (tuple(sorted(problem.numbers)), problem.target)
