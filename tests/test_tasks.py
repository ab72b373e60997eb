"""Tasks: Countdown's safe verifier and solver, MATH (math-verify under a hard time limit), GSM8K, Sudoku."""

from __future__ import annotations

import builtins
import itertools
import json
import operator
import random
import time
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdpo_jax.tasks import TASKS
from mdpo_jax.tasks import countdown as cd
from mdpo_jax.tasks import gsm8k, sudoku
from mdpo_jax.tasks import math as math_task

NUMS, TARGET = (3, 15, 4), 48  # (15-3)*4 = 48
FAST = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------------
# Countdown verifier: hand-written cases
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("completion", [
    "\\boxed{(15-3)*4}",
    "\\boxed{4*(15-3)}",
    "\\boxed{ 4 * ( 15 - 3 ) }",
    "\\boxed{(15 - 3) \\times 4}",
    "\\boxed{(15\u22123)\u00d74}",                        # Unicode minus and times
    "\\boxed{(15-3)*4 = 48}",                            # claimed result is stripped
    "\\boxed{-(3-15)*4}",                                # unary minus
    "\\boxed{((15-3))*4}",                               # redundant nesting
    "\\boxed{(((15)-(3)))*(4)}",
    "Let me think. 15-3=12 and 12*4=48.\nSo the answer is \\boxed{(15-3)*4}. Done!",
    "first try \\boxed{15+3+4}, no wait: \\boxed{(15-3)*4}",  # the last box counts
    "\\boxed{(15-3)*4} and then a truncated \\boxed{15+3",     # an unclosed box is skipped
    "<answer>(15-3)*4</answer>",
    "reasoning...\n(15-3)*4 = 48.\n",                   # last arithmetic line
    "reasoning...\n$(15-3)*4$\n",
])
def test_countdown_right_answers(completion):
  assert cd.reward(completion, NUMS, TARGET) == 1.0


@pytest.mark.parametrize("completion", [
    "\\boxed{(15-3)*3}",          # wrong number (3 twice, 4 missing)
    "\\boxed{(15-3)*4*1}",        # extra number
    "\\boxed{(15-3)*4+3-3}",      # reused numbers
    "\\boxed{12*4}",              # numbers missing
    "\\boxed{15*4-3}",            # right numbers, wrong value (57)
    "\\boxed{15-3*4}",            # precedence: 15-12 = 3
    "\\boxed{(15-(3*4))}",        # nested parentheses, wrong value
    "\\boxed{((15-3)*4}",         # unbalanced
    "\\boxed{(15-3)*4/(4-4)}",    # division by zero (also extra numbers)
    "\\boxed{(15-3)*4.0}",        # float literal
    "\\boxed{(15-3)*4.}",
    "\\boxed{(15-3)*4e0}",
    "\\boxed{(15-3)*04}",         # leading zero
    "\\boxed{(15-3)**4}",         # exponent
    "\\boxed{(15-3)x4}",          # 'x' is not a multiplication sign
    "\\boxed{2(15-3)}",           # implicit multiplication
    "\\boxed{+(15-3)*4}",         # unary plus is not accepted
    "\\boxed{(15-3)*4} = 48 and \\boxed{15+3+4}",  # the last box is wrong
    "\\boxed{48}",
    "\\boxed{}",
    "The answer is forty-eight.",
    "",
])
def test_countdown_wrong_answers(completion):
  assert cd.reward(completion, NUMS, TARGET) == 0.0


def test_countdown_division_by_zero_is_wrong():
  # 5/(3-3)+... never counts, even when the remaining value would hit the target.
  assert cd.reward("\\boxed{5/(3-3)+2}", (5, 3, 3, 2), 2) == 0.0
  with pytest.raises(cd.ExpressionError, match="division by zero"):
    cd.evaluate_expression("5/(3-3)+2")


def test_countdown_fractional_intermediates_reach_target_exactly():
  assert cd.evaluate_expression("8/(3-8/3)") == 24
  assert cd.reward("\\boxed{8/(3-8/3)}", (8, 3, 8, 3), 24) == 1.0
  assert cd.reward("\\boxed{(1/2+3)*4}", (1, 2, 3, 4), 14) == 1.0
  assert cd.reward("\\boxed{8/(3-8/3)}", (8, 3, 8, 3), 23) == 0.0


def test_countdown_duplicate_numbers_are_a_multiset():
  assert cd.reward("\\boxed{5*5-3}", (5, 3, 5), 22) == 1.0
  assert cd.reward("\\boxed{5*3-3}", (5, 3, 5), 12) == 0.0  # uses 3 twice, 5 once


def test_countdown_reward_never_raises_on_bad_arguments():
  assert cd.reward(None, NUMS, TARGET) == 0.0
  assert cd.reward("\\boxed{(15-3)*4}", None, TARGET) == 0.0
  assert cd.reward("\\boxed{(15-3)*4}", (15.0, 3, 4), TARGET) == 0.0
  assert cd.reward("\\boxed{(15-3)*4}", NUMS, "not a number") == 0.0


MALICIOUS = [
    "__import__('os').system('touch {path}')",
    "open('{path}', 'w').write('x')",
    "_mdpo_sentinel.append(1) or 48",
    "(lambda: _mdpo_sentinel.append(1))()",
    "().__class__.__bases__[0].__subclasses__()",
    "exec(\"_mdpo_sentinel.append(1)\")",
    "eval('48')",
    "'48'",
    "\"15\" + \"3\"",
    "x",
    "abs(-48)",
    "[15, 3, 4]",
    "{15: 3}",
    "15 if 3 else 4",
    "(15-3)*4; _mdpo_sentinel.append(1)",
    "48 # comment",
    "9**9**9**9",
]


def test_countdown_never_executes_model_text(tmp_path, monkeypatch):
  """Payloads that would leave a trace if executed: a file, a list in builtins, eval/exec calls."""
  calls = []
  sentinel: list = []
  monkeypatch.setattr(builtins, "_mdpo_sentinel", sentinel, raising=False)
  path = tmp_path / "executed"
  payloads = [p.replace("{path}", str(path)) for p in MALICIOUS]
  for name in ("eval", "exec", "compile"):
    real = getattr(builtins, name)
    def spy(*args, _name=name, _real=real, **kwargs):
      calls.append(_name)
      return _real(*args, **kwargs)
    monkeypatch.setattr(builtins, name, spy)
  try:
    results = []
    for payload in payloads:
      for completion in (f"\\boxed{{{payload}}}", f"<answer>{payload}</answer>", payload):
        results.append(cd.reward(completion, NUMS, TARGET))
      with pytest.raises(cd.ExpressionError):
        cd.evaluate_expression(payload)
  finally:
    monkeypatch.undo()
  assert results == [0.0] * len(results)
  assert calls == [] and sentinel == [] and not path.exists()


def test_countdown_evaluator_bounds():
  depth_ok = "(" * cd.MAX_DEPTH + "7" + ")" * cd.MAX_DEPTH
  assert cd.evaluate_expression(depth_ok) == 7
  with pytest.raises(cd.ExpressionError, match="deeper"):
    cd.evaluate_expression("(" + depth_ok + ")")
  with pytest.raises(cd.ExpressionError, match="deeper"):
    cd.evaluate_expression("-" * (cd.MAX_DEPTH + 1) + "1")
  assert cd.evaluate_expression("-" * cd.MAX_DEPTH + "1") == 1
  assert cd.evaluate_expression("9" * cd.MAX_LITERAL_DIGITS) == int("9" * cd.MAX_LITERAL_DIGITS)
  with pytest.raises(cd.ExpressionError, match="digits"):
    cd.evaluate_expression("1" * (cd.MAX_LITERAL_DIGITS + 1))
  long_ok = "+".join(["1"] * 128)[: cd.MAX_EXPRESSION_CHARS - 1]
  assert cd.evaluate_expression(long_ok) == 128
  with pytest.raises(cd.ExpressionError, match="characters"):
    cd.evaluate_expression("1+" * 128 + "1")
  with pytest.raises(cd.ExpressionError):
    cd.evaluate_expression(48)  # not a str


def test_countdown_parser_precedence_and_literals():
  assert cd.evaluate_expression("2+3*4") == 14
  assert cd.evaluate_expression("2*3+4*5") == 26
  assert cd.evaluate_expression("20-5-3") == 12             # left associative
  assert cd.evaluate_expression("64/8/2") == 4
  assert cd.evaluate_expression("7/2") == Fraction(7, 2)
  assert cd.evaluate_expression("2*-3") == -6
  assert cd.evaluate_expression("12 \u00f7 4 \\cdot 3") == 9
  assert cd.parse_expression("(15-3)*4").numbers == (15, 3, 4)


def test_countdown_extract_answer():
  assert cd.extract_answer("a \\boxed{1+2} b \\boxed{3*4} c") == "3*4"
  assert cd.extract_answer("\\boxed{\\boxed{1+2}}") == "1+2"  # the box that starts last
  assert cd.extract_answer("\\boxed{1+{2}}") == "1+{2}"      # braces stay balanced
  assert cd.extract_answer("x \\boxed{1+2} y \\boxed{3") == "1+2"
  assert cd.extract_answer("<answer> 5*6 = 30 </answer>") == "5*6"
  assert cd.extract_answer("steps\n5*6 = 30\nthat's it") == "5*6"
  assert cd.extract_answer("no expression here\n42\n") is None
  assert cd.extract_answer(None) is None


# ------------------------------------------------------------------------------------------------
# Countdown verifier: fuzzing (no exception, result in {0, 1}, bounded work per call)
# ------------------------------------------------------------------------------------------------

CALL_BUDGET_S = 0.05  # CPU seconds per call (process time, so a busy machine does not flake it)


def _timed(fn, *args):
  t0 = time.process_time()
  out = fn(*args)
  elapsed = time.process_time() - t0
  assert elapsed < CALL_BUDGET_S, f"{elapsed:.3f}s on input of length {len(args[0])}"
  return out


_EXPR_ALPHABET = "0123456789+-*/()  \u00d7\u00f7\u2212.x^=_a{}\\boxed"


def _nested(depth: int, core: str) -> str:
  return "(" * depth + core + ")" * depth


expression_like = st.one_of(
    st.text(alphabet=_EXPR_ALPHABET, max_size=400),
    st.builds(_nested, st.integers(0, 5000), st.text(alphabet="0123456789+-*/", max_size=20)),
    st.builds(lambda k, d: "-" * k + "9" * d, st.integers(0, 3000), st.integers(1, 5000)),
    st.builds(lambda s, k: s * k, st.sampled_from(["1+", "(1*", "9/", "\\boxed{", "}", "(", "\\times"]),
              st.integers(0, 5000)),
)


@FAST
@given(st.one_of(st.text(max_size=2000), expression_like, expression_like.map(lambda s: f"\\boxed{{{s}}}"),
                 st.text(max_size=100).map(lambda s: s * 200)))
def test_countdown_reward_fuzz(completion):
  assert _timed(cd.reward, completion, NUMS, TARGET) in (0.0, 1.0)


@FAST
@given(expression_like)
def test_countdown_evaluator_fuzz(expr):
  try:
    value = _timed(cd.evaluate_expression, expr)
  except cd.ExpressionError:
    return
  assert isinstance(value, Fraction)


def _tree(leaves=st.integers(0, 50)):
  return st.recursive(
      leaves,
      lambda kids: st.tuples(st.sampled_from("+-*/"), kids, kids),
      max_leaves=8)


def _value(t):
  if isinstance(t, int):
    return Fraction(t)
  op, a, b = t
  a, b = _value(a), _value(b)
  if op == "/" and b == 0:
    raise ZeroDivisionError
  return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]


def _text(t, spaces):
  if isinstance(t, int):
    return str(t)
  op, a, b = t
  sep = " " if spaces else ""
  return f"({_text(a, spaces)}{sep}{op}{sep}{_text(b, spaces)})"


def _leaves(t):
  return [t] if isinstance(t, int) else _leaves(t[1]) + _leaves(t[2])


@FAST
@given(_tree(), st.booleans())
def test_countdown_evaluator_matches_reference_on_random_trees(tree, spaces):
  """A fully parenthesized random tree evaluates to its value (computed independently here)."""
  text = _text(tree, spaces)
  try:
    expected = _value(tree)
  except ZeroDivisionError:
    with pytest.raises(cd.ExpressionError, match="division by zero"):
      cd.evaluate_expression(text)
    return
  parsed = cd.parse_expression(text)
  assert parsed.value == expected and parsed.numbers == tuple(_leaves(tree))
  if expected.denominator == 1:
    assert cd.reward(f"\\boxed{{{text}}}", _leaves(tree)[::-1], int(expected)) == 1.0
  assert cd.reward(f"\\boxed{{{text}}}", _leaves(tree), expected + 1) == 0.0


# ------------------------------------------------------------------------------------------------
# Countdown solver and generator
# ------------------------------------------------------------------------------------------------

_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def _brute_force_values(numbers, permute: bool = True) -> set[Fraction]:
  """Independent enumeration: every permutation (or only the given order), every operator
  choice, every tree shape."""
  def trees(vals):
    if len(vals) == 1:
      yield vals[0]
      return
    for split in range(1, len(vals)):
      for a in trees(vals[:split]):
        for b in trees(vals[split:]):
          for op in "+-*/":
            if op == "/" and b == 0:
              continue
            yield _OPS[op](a, b)
  out = set()
  for perm in set(itertools.permutations(numbers)) if permute else [tuple(numbers)]:
    out.update(trees(tuple(Fraction(x) for x in perm)))
  return out


def test_solver_known_cases():
  assert cd.solve([3, 15, 4], 48) == "(15-3)*4"
  assert cd.solve([4, 15, 3], 48) == "(15-3)*4"   # independent of input order
  assert cd.solve([10, 3, 4], 34) == "10*3+4"      # no parentheses when none are needed
  assert cd.solve([8, 3, 8, 3], 24) == "8/(3-8/3)"
  assert cd.solve([7], 7) == "7"


def test_solver_unsolvable_case():
  numbers, target = (1, 1, 1), 100
  assert Fraction(target) not in _brute_force_values(numbers)
  assert cd.solve(numbers, target) is None
  numbers, target = (2, 3, 5), 29
  assert Fraction(target) not in _brute_force_values(numbers)
  assert cd.solve(numbers, target) is None


def test_solver_agrees_with_brute_force():
  rng = random.Random(7)
  sets = [tuple(rng.randint(1, 20) for _ in range(3)) for _ in range(40)]
  sets += [tuple(rng.randint(1, 12) for _ in range(4)) for _ in range(6)]
  for numbers in sets:
    reachable = _brute_force_values(numbers)
    for target in range(0, 101):
      expr = cd.solve(numbers, target)
      assert (expr is not None) == (Fraction(target) in reachable), (numbers, target, expr)
      if expr is not None:
        assert cd.is_correct(expr, numbers, target), (numbers, target, expr)


def test_solver_given_order_agrees_with_brute_force():
  rng = random.Random(8)
  sets = [tuple(rng.randint(1, 20) for _ in range(3)) for _ in range(30)]
  sets += [tuple(rng.randint(1, 12) for _ in range(4)) for _ in range(4)]
  in_order_seen = fallback_seen = 0
  for numbers in sets:
    in_order = _brute_force_values(numbers, permute=False)
    for target in range(0, 101):
      expr = cd.solve(numbers, target, order="given")
      assert (expr is None) == (cd.solve(numbers, target) is None)  # same solvability
      if Fraction(target) in in_order:
        in_order_seen += 1
        assert cd.is_correct(expr, numbers, target), (numbers, target, expr)
        assert cd.parse_expression(expr).numbers == tuple(numbers), (numbers, target, expr)
      elif expr is not None:
        fallback_seen += 1
        assert expr == cd.solve(numbers, target), (numbers, target, expr)
  assert in_order_seen > 100 and fallback_seen > 100
  assert cd.solve([4, 15, 3], 48, order="given") == "4*(15-3)"
  assert cd.solve([3, 15, 4], 48, order="given") == "(15-3)*4"  # no in-order solution
  with pytest.raises(ValueError, match="order"):
    cd.solve([1, 2], 3, order="sorted")


@pytest.fixture(scope="module")
def problems():
  return cd.generate_problems(300, seed=0, num_numbers=(3, 4), number_range=(1, 20), target_range=(1, 100))


def test_solution_texts_verify(problems):
  for p in problems:
    assert p.solution is not None
    for style in ("expression", "steps"):
      text = cd.solution_text(p, style=style)
      assert cd.reward(text, p.numbers, p.target) == 1.0, (p, text)
    unsolved = cd.Problem(p.numbers, p.target)  # solution filled in by the solver
    assert cd.solution_text(unsolved) == cd.solution_text(p)
    given = cd.solution_text(p, style="steps", order="given")
    assert cd.reward(given, p.numbers, p.target) == 1.0, (p, given)


def test_steps_format_is_consistent(problems):
  for p in problems[:100]:
    text = cd.solution_text(p, style="steps")
    steps, boxed = text.split(". \\boxed{")
    assert boxed == p.solution + "}"
    items = steps.split(", ")
    assert len(items) == len(p.numbers) - 1
    for item in items:
      lhs, rhs = item.split("=")
      assert cd.evaluate_expression(lhs) == Fraction(rhs.strip("()")), (p, item)
    assert Fraction(items[-1].split("=")[1]) == p.target
  assert cd.solution_text(cd.Problem((3, 15, 4), 48), style="steps") == "15-3=12, 12*4=48. \\boxed{(15-3)*4}"


def test_generation_respects_ranges_and_is_deterministic(problems):
  again = cd.generate_problems(120, seed=0, num_numbers=(3, 4), number_range=(1, 20), target_range=(1, 100))
  assert again == problems[:120]  # same seed: same problems (a shorter run is a prefix)
  other = cd.generate_problems(120, seed=1, num_numbers=(3, 4), number_range=(1, 20), target_range=(1, 100))
  assert len(set(other) & set(problems)) < 10
  assert Counter(len(p.numbers) for p in problems).keys() == {3, 4}
  assert all(1 <= x <= 20 for p in problems for x in p.numbers)
  assert all(1 <= p.target <= 100 for p in problems)
  keys = {(tuple(sorted(p.numbers)), p.target) for p in problems}
  assert len(keys) == len(problems)  # distinct up to order
  train = cd.generate_problems(300, seed=9, num_numbers=3, number_range=(1, 10), exclude=problems)
  assert not keys & {(tuple(sorted(p.numbers)), p.target) for p in train}


def test_generation_from_random_expressions():
  ps = cd.generate_problems(200, seed=5, num_numbers=(3, 4), number_range=(1, 20),
                            target_range=(1, 100), target_sampling="expression")
  assert ps == cd.generate_problems(200, seed=5, num_numbers=(3, 4), number_range=(1, 20),
                                    target_range=(1, 100), target_sampling="expression")
  for p in ps:
    assert 1 <= p.target <= 100 and cd.is_correct(p.solution, p.numbers, p.target)
    # The target came from an expression over the numbers in the order drawn: in-order reachable.
    assert Fraction(p.target) in _brute_force_values(p.numbers, permute=False), p
    given = cd.solve(p.numbers, p.target, order="given")
    assert cd.parse_expression(given).numbers == p.numbers
  # Uniform-over-reachable targets are often not reachable in order (~40% of 3-number problems).
  uniform = cd.generate_problems(200, seed=5, num_numbers=3, number_range=(1, 20))
  assert sum(Fraction(p.target) not in _brute_force_values(p.numbers, permute=False)
             for p in uniform) > 40
  with pytest.raises(ValueError, match="target_sampling"):
    cd.generate_problems(1, seed=0, target_sampling="uniform")


def test_generation_unsolvable_allowed_and_argument_errors():
  ps = cd.generate_problems(100, seed=3, number_range=(1, 3), target_range=(50, 60), require_solvable=False)
  assert any(p.solution is None for p in ps)
  assert all(p.solution is None or cd.is_correct(p.solution, p.numbers, p.target) for p in ps)
  with pytest.raises(ValueError, match="num_numbers"):
    cd.generate_problems(1, seed=0, num_numbers=9)
  with pytest.raises(ValueError, match="number_range"):
    cd.generate_problems(1, seed=0, number_range=(5, 1))
  with pytest.raises(ValueError, match="distinct"):
    cd.generate_problems(50, seed=0, num_numbers=2, number_range=(1, 2), target_range=(1, 4))
  with pytest.raises(ValueError, match="no solution"):
    cd.solution_text(cd.Problem((1, 1, 1), 100))


def test_countdown_prompts():
  p = cd.Problem((3, 15, 4), 48)
  full = cd.prompt(p)
  assert full.endswith("\n\nNumbers: [3, 15, 4]\nTarget: 48") and "\\boxed{}" in full
  assert cd.prompt(p, style="compact") == "Numbers: [3, 15, 4]\nTarget: 48\n"
  with pytest.raises(ValueError, match="style"):
    cd.prompt(p, style="chat")


# ------------------------------------------------------------------------------------------------
# MATH
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("completion,gold,expected", [
    ("so the answer is \\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("so the answer is \\boxed{0.5}", "\\frac{1}{2}", 1.0),
    ("\\boxed{2}", "2", 1.0),
    ("We get \\boxed{\\dfrac{\\sqrt{3}}{2}}.", "\\frac{\\sqrt3}{2}", 1.0),
    ("First 5, finally \\boxed{7}, and 5 again", "7", 1.0),  # the boxed answer wins
    ("\\boxed{3}", "2", 0.0),
    ("I do not know.", "2", 0.0),
    ("", "2", 0.0),
])
def test_math_reward(completion, gold, expected):
  assert math_task.reward(completion, gold) == expected


def test_math_time_limit_holds_for_a_real_hang(caplog):
  """`9^{9^{9}}` makes math-verify build a 370-million-digit integer in C (minutes to hours).
  Called outside a pool (as evaluation does), `reward` runs it in its one-worker RewardPool."""
  assert math_task.reward("\\boxed{1}", "1", timeout_s=1.0) == 1.0  # worker up (start-up untimed)
  t0 = time.monotonic()
  with caplog.at_level("WARNING", logger="mdpo_jax.tasks.math"):
    assert math_task.reward("\\boxed{9^{9^{9}}}", "1", timeout_s=1.0) == 0.0
  elapsed = time.monotonic() - t0
  assert 0.9 < elapsed < 3.0  # ended by the deadline, promptly
  assert "timed out after 1.0s" in caplog.text
  assert math_task.reward("\\boxed{4}", "4", timeout_s=1.0) == 1.0  # a fresh worker takes over


def test_math_reward_in_a_reward_pool_is_limited_and_counted_by_the_pool():
  """RL's path: `MathTask.reward` in RewardPool workers runs math-verify right there (no second
  layer of processes: that would fail in a daemonic worker and count as an error), under the
  pool's time limit; hostile answers score 0.0 within the limit and never reach the caller."""
  from mdpo_jax.rl.scoring import RewardPool

  def rec(answer):
    return {"problem": "?", "answer": answer}
  good = [("\\boxed{4}", rec("4")), ("\\boxed{5}", rec("4")), ("\\boxed{\\frac12}", rec("0.5"))]
  with RewardPool(math_task.math_reward, num_workers=2, timeout_s=1.0) as pool:
    pool.score(good[:2])  # both workers up (their start-up, math-verify's import, is not timed)
    t0 = time.monotonic()
    rewards, stats = pool.score(good + [("\\boxed{9^{9^{9}}}", rec("1"))])
    assert time.monotonic() - t0 < 1.0 + 2.0
    assert rewards.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert stats["timeouts"] == 1 and stats["errors"] == 0 and stats["crashes"] == 0
    t0 = time.monotonic()  # deep nesting: slow parsing (or a RecursionError), 0.0 either way
    rewards, _ = pool.score([("\\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}", rec("2"))])
    assert time.monotonic() - t0 < 1.0 + 2.0
    assert rewards.tolist() == [0.0]


def test_math_prompt_and_loader(tmp_path):
  assert math_task.prompt("What is 1+1?") == (
      "What is 1+1?\nLet's think step by step and output the final answer within \\boxed{}.")
  path = tmp_path / "math.jsonl"
  path.write_text(
      json.dumps({"problem": "p1", "answer": "\\frac{1}{2}"}) + "\n\n"
      + json.dumps({"problem": "p2", "solution": "so \\boxed{1} no \\boxed{\\frac{3}{4}}."}) + "\n")
  recs = math_task.load_jsonl(path)
  assert [r["answer"] for r in recs] == ["\\frac{1}{2}", "\\frac{3}{4}"]
  path.write_text(json.dumps({"problem": "p3", "solution": "no box"}) + "\n")
  with pytest.raises(ValueError, match=r"math.jsonl:1"):
    math_task.load_jsonl(path)


# ------------------------------------------------------------------------------------------------
# GSM8K
# ------------------------------------------------------------------------------------------------


def test_gsm8k_gold_and_loader(tmp_path):
  assert gsm8k.gold_answer("She pays 3*360 = <<3*360=1080>>1080.\n#### 1,080") == "1080"
  assert gsm8k.gold_answer("#### -3.50") == "-3.5"
  with pytest.raises(ValueError, match="####"):
    gsm8k.gold_answer("no final line")
  path = tmp_path / "gsm8k.jsonl"
  path.write_text(json.dumps({"question": "q", "answer": "2+2=4\n#### 4"}) + "\n")
  assert gsm8k.load_jsonl(path)[0]["gold"] == "4"


@pytest.mark.parametrize("completion,extracted", [
    ("The total is \\boxed{1,080}.", "1080"),
    ("The total is \\boxed{\\$1,080}", "1080"),
    ("\\boxed{18 \\text{ dollars}}", "18"),
    ("\\boxed{\\frac{3}{4}}", "3/4"),
    ("so 3 + 4 = 7\n#### 7", "7"),
    ("He has 5 apples, then 12 apples.", "12"),
    ("It costs $18.00.", "18"),
    ("It falls to -4 degrees.", "-4"),
    ("Total: 2,500,000 people", "2500000"),
    ("no numbers at all", None),
])
def test_gsm8k_extract(completion, extracted):
  assert gsm8k.extract_answer(completion) == extracted


def test_gsm8k_reward():
  assert gsm8k.reward("So she pays \\boxed{1,080} dollars", "1080") == 1.0
  assert gsm8k.reward("So she pays $1080.", 1080) == 1.0
  assert gsm8k.reward("The answer is 18.0", "18") == 1.0
  assert gsm8k.reward("The answer is \\boxed{17}, not 18", "18") == 0.0  # boxed wins over later text
  assert gsm8k.reward("I cannot tell", "18") == 0.0
  assert gsm8k.reward(None, "18") == 0.0
  assert gsm8k.reward("9" * 10000, "18") == 0.0
  with pytest.raises(ValueError, match="gold"):
    gsm8k.reward("18", "eighteen")


# ------------------------------------------------------------------------------------------------
# Sudoku
# ------------------------------------------------------------------------------------------------


def test_sudoku_all_grids_and_solver():
  assert len(sudoku.solve_all("0" * 16, limit=None)) == 288
  assert sudoku.solve_all("1100" + "0" * 12) == []  # contradictory givens


def test_sudoku_generator():
  pairs = sudoku.generate_puzzles(60, seed=0, num_empty=(6, 10))
  assert pairs == sudoku.generate_puzzles(60, seed=0, num_empty=(6, 10))
  assert pairs != sudoku.generate_puzzles(60, seed=1, num_empty=(6, 10))
  assert len({p for p, _ in pairs}) == 60
  for puzzle, solution in pairs:
    assert 6 <= puzzle.count("0") <= 10
    assert all(p in ("0", s) for p, s in zip(puzzle, solution))
    assert sudoku.solve_all(puzzle, limit=2) == [solution]  # unique and consistent
  hard = sudoku.generate_puzzles(5, seed=2, num_empty=sudoku.MAX_EMPTY)
  assert all(p.count("0") == sudoku.MAX_EMPTY and sudoku.solve_all(p) == [s] for p, s in hard)
  with pytest.raises(ValueError, match="num_empty"):
    sudoku.generate_puzzles(1, seed=0, num_empty=13)


def test_sudoku_extract_and_reward():
  puzzle, solution = "0402104340000030", "3412124343212134"
  empty = [i for i, c in enumerate(puzzle) if c == "0"]
  assert sudoku.reward(sudoku.solution_text(solution), puzzle, solution) == 1.0
  rows = "\n".join(" ".join(solution[r * 4:(r + 1) * 4]) for r in range(4))
  assert sudoku.extract_answer(f"Here is the grid:\n{rows}\n") == solution
  assert sudoku.reward(f"Puzzle: {puzzle}\nAnswer: {solution}", puzzle, solution) == 1.0
  assert sudoku.reward("[[3,4,1,2],[1,2,4,3],[4,3,2,1],[2,1,3,4]]", puzzle, solution) == 1.0
  # Swap two wrong digits into empty cells: exactly (k-2)/k.
  wrong = list(solution)
  for i in empty[:2]:
    wrong[i] = "1" if solution[i] != "1" else "2"
  assert sudoku.reward("".join(wrong), puzzle, solution) == pytest.approx((len(empty) - 2) / len(empty))
  # Errors in given cells do not count; unfilled empty cells do.
  given_wrong = list(solution)
  given_wrong[1] = "1"
  assert sudoku.reward("".join(given_wrong), puzzle, solution) == 1.0
  assert sudoku.reward(puzzle, puzzle, solution) == 0.0
  assert sudoku.reward("no grid here 1234", puzzle, solution) == 0.0
  assert sudoku.extract_answer("\\boxed{3412 1243 4321 2134} then 1111222233334444") == solution
  with pytest.raises(ValueError, match="puzzle"):
    sudoku.reward(solution, "12", solution)


def test_sudoku_prompt():
  assert sudoku.prompt("0402104340000030").endswith("\n\nPuzzle: 0402104340000030")
  assert sudoku.prompt("0402104340000030", style="compact") == "Puzzle: 0402104340000030\n"


def test_sudoku_generator_exclude():
  pairs = sudoku.generate_puzzles(40, seed=3, num_empty=(6, 10))
  assert sudoku.generate_puzzles(40, seed=3, num_empty=(6, 10), exclude=()) == pairs
  skip = {p for p, _ in pairs[::2]}
  more = sudoku.generate_puzzles(40, seed=3, num_empty=(6, 10), exclude=skip)
  assert more == sudoku.generate_puzzles(40, seed=3, num_empty=(6, 10), exclude=sorted(skip))
  assert not skip & {p for p, _ in more}
  # Excluding only skips draws: the puzzles not excluded come in the same order as without it.
  assert [pair for pair in pairs if pair[0] not in skip] == more[:20]
  with pytest.raises(ValueError, match="could only generate 0"):
    sudoku.generate_puzzles(1, seed=0, num_empty=0, exclude=sudoku.solve_all("0" * 16, limit=None))


def test_last_boxed_has_one_home():
  from mdpo_jax.tasks import text
  assert text.last_boxed("a \\boxed{1} b \\boxed {x{y}z} \\boxed{open") == "x{y}z"
  assert cd.last_boxed is gsm8k.last_boxed is sudoku.last_boxed is text.last_boxed
  assert "last_boxed" not in math_task.__all__


def test_registry():
  assert set(TASKS) == {"countdown", "math", "gsm8k", "sudoku", "stargraph", "reversal"}
  assert all(callable(cls.reward) and callable(cls.prompt) for cls in TASKS.values())
