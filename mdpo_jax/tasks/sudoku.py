"""4x4 Sudoku (as in d1): grids are 16-character strings read row by row, "0" = empty cell.

Rows, columns and the four 2x2 boxes must each hold 1-4 once. `generate_puzzles` draws a full
grid uniformly from all 288 valid grids and empties cells in random order while the puzzle keeps
a unique solution (checked with the backtracking solver `solve_all`). `reward` is the fraction
of the puzzle's EMPTY cells that the completion's grid fills with the right digit.
"""

from __future__ import annotations

import functools
import operator
import random
import re
from typing import Iterable, Sequence

from mdpo_jax.tasks import base
from mdpo_jax.tasks.text import last_boxed

__all__ = ["SudokuTask", "sudoku_reward", "generate_puzzles", "solve_all", "prompt",
           "solution_text", "extract_answer", "reward", "MAX_EMPTY"]

MAX_EMPTY = 12  # a 4x4 Sudoku needs at least 4 clues for a unique solution
PROMPT_STYLES = ("compact", "full")

_UNITS = (
    [[r * 4 + c for c in range(4)] for r in range(4)]
    + [[r * 4 + c for r in range(4)] for c in range(4)]
    + [[(br + r) * 4 + bc + c for r in range(2) for c in range(2)] for br in (0, 2) for bc in (0, 2)]
)
_PEERS = tuple(frozenset(j for unit in _UNITS if i in unit for j in unit if j != i) for i in range(16))
_SEPARATORS = " \t\r\n,|;:-+[]()'\"_/"
_RUN = re.compile(r"[0-9](?:[" + re.escape(_SEPARATORS) + r"]*[0-9])*")


def _check_grid(grid: str, name: str, allow_empty: bool) -> str:
  digits = "01234" if allow_empty else "1234"
  if not isinstance(grid, str) or len(grid) != 16 or any(c not in digits for c in grid):
    raise ValueError(f"{name} must be a 16-character string of digits {digits}, got {grid!r}")
  return grid


def solve_all(puzzle: str, limit: int | None = 2) -> list[str]:
  """Solutions of `puzzle` (up to `limit`; None = all), by backtracking on the most constrained cell."""
  _check_grid(puzzle, "puzzle", allow_empty=True)
  cells = list(puzzle)
  for i, ch in enumerate(cells):
    if ch != "0" and any(cells[j] == ch for j in _PEERS[i]):
      return []
  found: list[str] = []

  def search() -> bool:  # True = stop (limit reached)
    best, best_options = -1, None
    for i, ch in enumerate(cells):
      if ch == "0":
        options = [d for d in "1234" if all(cells[j] != d for j in _PEERS[i])]
        if best_options is None or len(options) < len(best_options):
          best, best_options = i, options
          if not options:
            return False
    if best_options is None:
      found.append("".join(cells))
      return limit is not None and len(found) >= limit
    for d in best_options:
      cells[best] = d
      if search():
        return True
    cells[best] = "0"
    return False

  search()
  return found


@functools.lru_cache(maxsize=1)
def _all_grids() -> tuple[str, ...]:
  grids = tuple(solve_all("0" * 16, limit=None))
  assert len(grids) == 288, len(grids)
  return grids


def generate_puzzles(n: int, *, seed: int, num_empty: int | Sequence[int] = (6, 10),
                     exclude: Iterable[str] = ()) -> list[tuple[str, str]]:
  """`n` distinct (puzzle, solution) pairs with unique solutions; deterministic per `seed`.

  `num_empty` is the number of empty cells, an int or an inclusive (low, high) range drawn
  uniformly per puzzle; at most MAX_EMPTY. No puzzle equals a puzzle string in `exclude` (drawn
  ones are skipped like duplicates, so the result is a deterministic function of the arguments,
  and `exclude=()` gives the same puzzles as before the argument existed).
  """
  try:
    n, seed = operator.index(n), operator.index(seed)
  except TypeError as e:
    raise ValueError(f"n and seed must be integers, got n={n!r}, seed={seed!r}") from e
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}")
  try:
    lo, hi = (num_empty, num_empty) if isinstance(num_empty, int) else (operator.index(v) for v in num_empty)
  except (TypeError, ValueError) as e:
    raise ValueError(f"num_empty must be an int or a (low, high) pair, got {num_empty!r}") from e
  if not 0 <= lo <= hi <= MAX_EMPTY:
    raise ValueError(f"num_empty must satisfy 0 <= low <= high <= {MAX_EMPTY}, got {num_empty!r}")
  rng = random.Random(seed)
  grids = _all_grids()
  out: list[tuple[str, str]] = []
  seen: set[str] = set(exclude)
  if any(not isinstance(p, str) for p in seen):
    raise ValueError("exclude must hold puzzle strings")
  attempts, max_attempts = 0, 1000 + 100 * n
  while len(out) < n:
    attempts += 1
    if attempts > max_attempts:
      raise ValueError(f"could only generate {len(out)} of n={n} distinct puzzles with "
                       f"num_empty={num_empty!r}")
    solution = rng.choice(grids)
    k = rng.randint(lo, hi)
    order = list(range(16))
    rng.shuffle(order)
    cells = list(solution)
    removed = 0
    for i in order:
      if removed == k:
        break
      cells[i] = "0"
      if len(solve_all("".join(cells), limit=2)) == 1:
        removed += 1
      else:
        cells[i] = solution[i]
    puzzle = "".join(cells)
    if removed < k or puzzle in seen:
      continue
    seen.add(puzzle)
    out.append((puzzle, solution))
  return out


def prompt(puzzle: str, *, style: str = "full") -> str:
  """The model prompt. "full": rules + the puzzle; "compact": ``"Puzzle: <16 digits>\\n"``."""
  _check_grid(puzzle, "puzzle", allow_empty=True)
  if style == "compact":
    return f"Puzzle: {puzzle}\n"
  if style == "full":
    return (
        "Solve this 4x4 Sudoku. The grid is written as 16 digits, row by row from the top left, "
        "and 0 marks an empty cell. Fill every empty cell with a digit from 1 to 4 so that each "
        "row, each column and each of the four 2x2 boxes contains 1, 2, 3 and 4 exactly once. "
        "Think step by step, then give the completed grid as 16 digits inside \\boxed{}.\n\n"
        f"Puzzle: {puzzle}")
  raise ValueError(f"style must be 'full' or 'compact', got {style!r}")


def solution_text(solution: str) -> str:
  """The SFT answer: ``\\boxed{<16 digits>}``."""
  return f"\\boxed{{{_check_grid(solution, 'solution', allow_empty=False)}}}"


def _last_grid(text: str) -> str | None:
  last = None
  for m in _RUN.finditer(text):
    digits = [c for c in m.group(0) if c.isdigit()]
    if len(digits) >= 16:
      last = "".join(digits[-16:])
  return last


def extract_answer(completion: str) -> str | None:
  """The last 16-digit grid in the completion (inside the last ``\\boxed{}`` if that has one).

  Digits may be separated by spaces, newlines, commas, ``|``, ``-``, ``+``, brackets and the like
  (so row-per-line grids and ASCII boards work); a longer run yields its last 16 digits.
  """
  if not isinstance(completion, str):
    return None
  boxed = last_boxed(completion)
  if boxed is not None:
    grid = _last_grid(boxed)
    if grid is not None:
      return grid
  return _last_grid(completion)


def reward(completion: str, puzzle: str, solution: str) -> float:
  """Fraction of the puzzle's empty cells filled correctly (0.0 if no grid is found).

  For a puzzle without empty cells: 1.0 iff the extracted grid equals the solution. No
  completion makes it raise; a malformed `puzzle`/`solution` raises ValueError (a data error).
  """
  _check_grid(puzzle, "puzzle", allow_empty=True)
  _check_grid(solution, "solution", allow_empty=False)
  if any(p != "0" and p != s for p, s in zip(puzzle, solution)):
    raise ValueError(f"solution {solution!r} contradicts the givens of puzzle {puzzle!r}")
  try:
    grid = extract_answer(completion)
  except Exception:  # noqa: BLE001
    return 0.0
  if grid is None:
    return 0.0
  empty = [i for i, p in enumerate(puzzle) if p == "0"]
  if not empty:
    return 1.0 if grid == solution else 0.0
  return sum(grid[i] == solution[i] for i in empty) / len(empty)


# ----------------------------------------------------------------------------------------------
# The task (mdpo_jax.tasks.base.Task)
# ----------------------------------------------------------------------------------------------


def sudoku_reward(completion: str, problem: tuple[str, str]) -> float:
  """`reward` for a (puzzle, solution) pair (module-level: it pickles by reference to workers)."""
  puzzle, solution = problem
  return reward(completion, puzzle, solution)


class SudokuTask(base.ProceduralTask):
  """Procedural 4x4 Sudoku (d1): problems are (puzzle, solution) pairs from `generate_puzzles`
  with `task.empty_min`..`task.empty_max` empty cells.

  Splits as in `base.ProceduralTask`, disjoint by puzzle string. Prompt: `prompt(puzzle,
  style=task.prompt_style)`; SFT answer: `solution_text(solution)`; reward: the fraction of the
  empty cells filled correctly (`reward`); key: the puzzle string.
  """

  name = "sudoku"
  reward = staticmethod(sudoku_reward)

  def __init__(self, task_cfg, seed: int):
    super().__init__(task_cfg, seed)
    base.check_choice(task_cfg, "prompt_style", PROMPT_STYLES)
    lo = base.check_int(task_cfg, "empty_min", 0, MAX_EMPTY)
    hi = base.check_int(task_cfg, "empty_max", lo, MAX_EMPTY,
                        f"an integer in task.empty_min ({lo})..{MAX_EMPTY}")
    self._num_empty = (lo, hi)

  def _generate(self, n: int, seed: int, exclude: list, field: str) -> list[tuple[str, str]]:
    try:
      return generate_puzzles(n, seed=seed, num_empty=self._num_empty,
                              exclude=[puzzle for puzzle, _ in exclude])
    except ValueError as e:
      if not exclude:
        raise ValueError(f"{field}={n}: {e}") from e
      raise ValueError(f"{field}={n}: not enough puzzles disjoint from the other splits ({e}); "
                       "widen task.empty_min..task.empty_max or lower the size") from e

  def prompt(self, problem: tuple[str, str]) -> str:
    return prompt(problem[0], style=self.cfg.prompt_style)

  def sft_answer(self, problem: tuple[str, str]) -> str:
    return solution_text(problem[1])

  def key(self, problem: tuple[str, str]) -> str:
    return problem[0]
