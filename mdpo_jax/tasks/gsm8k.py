"""GSM8K: grade-school word problems with a numeric final answer (as in d1).

Gold answers come from the dataset's ``#### 42`` line. A completion's answer is the number in its
last ``\\boxed{}`` (a ``\\frac{a}{b}`` there is read as a/b), else the number after its last
``####``, else the last number anywhere in it. Numbers are compared exactly as rationals after
normalization: thousands separators (``1,080``), ``$``/``\\$``, a trailing ``.`` or ``%`` and
trailing zeros (``18.00`` = ``18``) do not matter.
"""

from __future__ import annotations

import os
import re
from fractions import Fraction
from typing import Any

from mdpo_jax.tasks import records
from mdpo_jax.tasks.text import PROMPT_SUFFIX, last_boxed

__all__ = ["GSM8KTask", "gsm8k_reward", "load_jsonl", "gold_answer", "prompt", "extract_answer",
           "reward"]

# Thousands-grouped numbers first so that "1,234" is one number; "3,4" stays two.
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
_FRAC = re.compile(r"\\[dt]?frac\{\s*(-?\d+)\s*\}\{\s*(-?\d+)\s*\}")


def _to_fraction(number: str) -> Fraction:
  return Fraction(number.replace(",", ""))


def _last_number(text: str) -> str | None:
  last = None
  for m in _NUMBER.finditer(text):
    last = m.group(0)
  return None if last is None else last.replace(",", "")


def _normalize(number: str) -> str:
  """Canonical text of a number: "1,080.50" -> "1080.5", "18.00" -> "18", "-0" -> "0"."""
  try:
    value = _to_fraction(number)
  except ValueError:  # e.g. beyond Python's int-string conversion limit: keep the text
    return number.replace(",", "")
  if value.denominator == 1:
    return str(value.numerator)
  text = number.replace(",", "")
  if "." in text:
    text = text.rstrip("0").rstrip(".")
  return text


def gold_answer(answer_field: str) -> str:
  """The normalized number after the last ``####`` of a GSM8K answer field, e.g. "1080".

  Raises ValueError if the field has no ``####`` line with a number.
  """
  if not isinstance(answer_field, str) or "####" not in answer_field:
    raise ValueError(f"answer_field must be a str containing '#### <number>', got {answer_field!r:.80}")
  number = _last_number(answer_field.rsplit("####", 1)[1])
  if number is None:
    raise ValueError(f"no number after '####' in answer_field {answer_field!r:.80}")
  return _normalize(number)


def load_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Records with "question" and "answer" (GSM8K format); adds "gold" = `gold_answer(answer)`.

  Blank lines are skipped; malformed records raise ValueError naming the file and line.
  """
  def check(rec: dict) -> dict:
    if not isinstance(rec.get("question"), str):
      raise ValueError("expected an object with a string 'question' field")
    rec["gold"] = gold_answer(rec.get("answer"))
    return rec
  return records.load_jsonl(path, check)


def prompt(question: str) -> str:
  """The question followed by the step-by-step / boxed instruction (as for MATH)."""
  return question + PROMPT_SUFFIX


def extract_answer(completion: str) -> str | None:
  """The normalized final number of a completion (see module docstring), or None."""
  if not isinstance(completion, str):
    return None
  boxed = last_boxed(completion)
  if boxed is not None:
    frac = _FRAC.search(boxed)
    if frac and int(frac.group(2)) != 0:
      value = Fraction(int(frac.group(1)), int(frac.group(2)))
      return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
    number = _last_number(boxed)
    if number is not None:
      return _normalize(number)
  if "####" in completion:
    number = _last_number(completion.rsplit("####", 1)[1])
    if number is not None:
      return _normalize(number)
  number = _last_number(completion)
  return None if number is None else _normalize(number)


def reward(completion: str, gold: str | int | float) -> float:
  """1.0 if the extracted answer equals `gold` exactly (as a rational), else 0.0.

  No completion makes it raise; a `gold` that is not a number raises ValueError (a data error).
  """
  try:
    gold_value = Fraction(str(gold).replace(",", "").replace("$", "").strip())
  except (ValueError, ZeroDivisionError) as e:
    raise ValueError(f"gold must be a number, got {gold!r}") from e
  try:
    pred = extract_answer(completion)
    return 1.0 if pred is not None and Fraction(pred) == gold_value else 0.0
  except Exception:  # noqa: BLE001
    return 0.0


# ----------------------------------------------------------------------------------------------
# The task (mdpo_jax.tasks.base.Task)
# ----------------------------------------------------------------------------------------------


def gsm8k_reward(completion: str, problem: dict) -> float:
  """`reward` against the record's "gold" (module-level: it pickles by reference to workers)."""
  return reward(completion, problem["gold"])


class GSM8KTask(records.RecordTask):
  """GSM8K JSONL records (`load_jsonl`): "question" and "answer" (ending in ``#### N``).

  Prompt: `prompt(record["question"])`. SFT answer: the record's "answer" field verbatim --
  GSM8K's worked solution, calculator annotations (``<<48/2=24>>``) included, ending in its
  ``#### N`` line (not rewritten into ``\\boxed{}``; `extract_answer` reads the number after
  ``####`` when there is no box). Reward: exact numeric match with "gold"; key: ("question",
  "gold").
  """

  name = "gsm8k"
  RECORDS = "JSONL with 'question' and an 'answer' ending in '#### <number>'"
  reward = staticmethod(gsm8k_reward)

  @staticmethod
  def _load(path: str) -> list[dict[str, Any]]:
    return load_jsonl(path)

  def prompt(self, problem: dict) -> str:
    return prompt(problem["question"])

  def sft_answer(self, problem: dict) -> str:
    return problem["answer"]

  def key(self, problem: dict) -> tuple[str, str]:
    return (problem["question"], problem["gold"])
