"""Text helpers shared by the tasks: the boxed-answer extractor and the boxed-answer instruction."""

from __future__ import annotations

__all__ = ["PROMPT_SUFFIX", "last_boxed"]

# The SPEC §5 instruction after a MATH / GSM8K problem.
PROMPT_SUFFIX = "\nLet's think step by step and output the final answer within \\boxed{}."


def last_boxed(text: str) -> str | None:
  """Content of the last complete ``\\boxed{...}`` in `text` (braces balanced), or None.

  "Last" means the box that starts last among the complete ones; an unclosed box (e.g. a
  truncated completion) is skipped. One linear pass with a brace stack, so adversarially long
  inputs stay cheap. Also accepts spaces between ``\\boxed`` and ``{``.
  """
  stack: list[int] = []  # for each open "{": start of its content if it opens a box, else -1
  best: tuple[int, int] | None = None
  i, n = 0, len(text)
  while i < n:
    ch = text[i]
    if ch == "\\" and text.startswith("\\boxed", i):
      j = i + len("\\boxed")
      while j < n and text[j] == " ":
        j += 1
      if j < n and text[j] == "{":
        stack.append(j + 1)
        i = j + 1
        continue
      i = j
      continue
    if ch == "{":
      stack.append(-1)
    elif ch == "}" and stack:
      start = stack.pop()
      if start >= 0 and (best is None or start > best[0]):
        best = (start, i)
    i += 1
  return None if best is None else text[best[0]:best[1]]
