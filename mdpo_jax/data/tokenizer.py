"""Tokenizers for mdpo_jax: a character-level one for toy tasks, and special-id lookup for any.

Both kinds are plain `tokenizers.Tokenizer` objects, so code downstream never needs to know which
one it holds: `encode(text).ids`, `decode(ids, skip_special_tokens=...)`, `save("tokenizer.json")`,
and `mdpo_jax.models.hf.load_tokenizer` reads either back.

Vocabulary layout of the character tokenizer (V = len(alphabet) + 4), chosen to match
`mdpo_jax.models.llada.tiny(vocab_size=V)`:

  0 .. V-5   one token per character of `alphabet`, in the given order
  V-4        <|startoftext|>  (BOS)
  V-3        <|endoftext|>    (EOS, also the padding id)
  V-2        <|eot_id|>       (end of turn)
  V-1        <|mdm_mask|>     (MASK)

How it is built: a BPE model with the characters as its vocabulary and no merges, no normalizer
and no pre-tokenizer, so the whole text is one "word" that BPE splits into characters; spaces and
newlines are ordinary characters. The `Fuse` decoder concatenates the tokens without separators,
so `decode(encode(s).ids) == s` for every `s` over the alphabet. Special-token strings that occur
in the text (e.g. a literal "<|eot_id|>") are matched as their special token, as with any
Hugging Face tokenizer.

A BPE model without an unknown token silently *drops* characters it does not know; `encode_text`
checks for that and raises instead, naming the characters.
"""

from __future__ import annotations

import collections
from typing import Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
EOT_TOKEN = "<|eot_id|>"
MASK_TOKEN = "<|mdm_mask|>"
# LLaDA's special tokens, in the order they take at the top of the character vocabulary.
LLADA_SPECIALS: tuple[str, str, str, str] = (BOS_TOKEN, EOS_TOKEN, EOT_TOKEN, MASK_TOKEN)
_SPECIAL_ROLES = ("bos", "eos", "eot", "mask")


def _describe_char(ch: str) -> str:
  return f"{ch!r} (U+{ord(ch):04X})"


def build_char_tokenizer(alphabet: str, *,
                         specials: Sequence[str] = LLADA_SPECIALS) -> tokenizers.Tokenizer:
  """A character-level `tokenizers.Tokenizer`: one token per character, specials on top.

  Args:
    alphabet: the characters, each one token, ids 0.. in this order. Include " " and "\\n" if the
      texts contain them. No duplicates.
    specials: the four special tokens (BOS, EOS, EOT, MASK), given ids V-4, V-3, V-2, V-1 in this
      order; defaults to LLaDA's strings, which is what `special_ids` looks up by default.

  Returns:
    A tokenizer whose `decode(encode(s).ids) == s` for any `s` over `alphabet`; vocabulary size
    `len(alphabet) + 4`.
  """
  if not isinstance(alphabet, str) or not alphabet:
    raise ValueError(f"alphabet must be a non-empty str of characters, got {alphabet!r}")
  duplicates = sorted(ch for ch, n in collections.Counter(alphabet).items() if n > 1)
  if duplicates:
    raise ValueError("alphabet must not repeat a character; repeated: "
                     + ", ".join(_describe_char(ch) for ch in duplicates))
  specials = tuple(specials)
  if len(specials) != 4 or not all(isinstance(s, str) and len(s) > 1 for s in specials):
    raise ValueError("specials must be 4 distinct multi-character strings (BOS, EOS, EOT, MASK), "
                     f"got {specials!r}")
  if len(set(specials)) != 4:
    raise ValueError(f"specials must be distinct, got {specials!r}")

  vocab = {ch: i for i, ch in enumerate(alphabet)}
  tokenizer = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
  tokenizer.decoder = decoders.Fuse()
  tokenizer.add_special_tokens([tokenizers.AddedToken(s, special=True, normalized=False)
                                for s in specials])
  # Guard the layout contract the model configs rely on (tokenizers assigns added ids in order).
  v = tokenizer.get_vocab_size(with_added_tokens=True)
  got = [tokenizer.token_to_id(s) for s in specials]
  if v != len(alphabet) + 4 or got != [v - 4, v - 3, v - 2, v - 1]:
    raise RuntimeError(f"unexpected special-token ids {got} for vocabulary size {v}")
  return tokenizer


def special_ids(tokenizer: tokenizers.Tokenizer, *,
                tokens: Sequence[str] = LLADA_SPECIALS) -> dict[str, int]:
  """Ids of the BOS, EOS, EOT and MASK tokens, found by their token strings.

  Works for the character tokenizer and for LLaDA's own tokenizer.json (bos 126080, eos 126081,
  eot 126348, mask 126336).

  Args:
    tokenizer: a `tokenizers.Tokenizer`.
    tokens: the (BOS, EOS, EOT, MASK) token strings; LLaDA's by default.

  Returns:
    dict with keys bos, eos, eot, mask (ids) and vocab_size: the embedding rows the tokenizer's
    ids need, i.e. its largest id + 1 (added tokens included; the token count when ids are
    contiguous, more when they have gaps, whose ids a table of `count` rows would clamp). A
    model's embedding table may be larger, e.g. LLaDA-8B pads it to 126464.
  """
  tokens = tuple(tokens)
  if len(tokens) != 4:
    raise ValueError(f"tokens must be the 4 strings (BOS, EOS, EOT, MASK), got {tokens!r}")
  out: dict[str, int] = {}
  for role, token in zip(_SPECIAL_ROLES, tokens):
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
      raise ValueError(f"the tokenizer has no {role.upper()} token {token!r}; pass the right "
                       f"strings as tokens=(bos, eos, eot, mask)")
    out[role] = int(token_id)
  out["vocab_size"] = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1
  return out


def is_char_level(tokenizer: tokenizers.Tokenizer) -> bool:
  """Whether `tokenizer` has the character tokenizer's structure (BPE, Fuse decoder, nothing else).

  Used to decide whether `encode_text` must check for dropped characters: byte-level tokenizers
  (LLaDA's) can encode any text, a character vocabulary cannot.
  """
  return (isinstance(tokenizer.model, models.BPE) and isinstance(tokenizer.decoder, decoders.Fuse)
          and tokenizer.normalizer is None and tokenizer.pre_tokenizer is None)


def unknown_chars(tokenizer: tokenizers.Tokenizer, text: str) -> list[str]:
  """Characters of `text` (outside special-token strings) not in the vocabulary, in order of
  first occurrence."""
  rest = text
  for added in tokenizer.get_added_tokens_decoder().values():
    rest = rest.replace(added.content, "")
  missing = {ch for ch in set(rest) if tokenizer.token_to_id(ch) is None}
  return sorted(missing, key=text.index)


def encode_text(tokenizer: tokenizers.Tokenizer, text: str, *,
                check_unknown: bool | None = None) -> list[int]:
  """Token ids of `text`, without any special tokens added around it.

  Special-token strings inside `text` still map to their ids (that is how chat templates work).

  Args:
    tokenizer: a `tokenizers.Tokenizer`.
    text: the text.
    check_unknown: raise if a character cannot be encoded. None (default) checks exactly when the
      tokenizer is character-level (`is_char_level`), whose BPE model would otherwise drop unknown
      characters without a trace; byte-level tokenizers encode any text.

  Raises:
    ValueError naming each unknown character and its first position in `text`.
  """
  if not isinstance(text, str):
    raise TypeError(f"text must be a str, got {type(text).__name__}")
  if check_unknown is None:
    check_unknown = is_char_level(tokenizer)
  if check_unknown:
    missing = unknown_chars(tokenizer, text)
    if missing:
      where = ", ".join(f"{_describe_char(ch)} at index {text.index(ch)}" for ch in missing)
      snippet = text if len(text) <= 60 else text[:57] + "..."
      raise ValueError(f"text {snippet!r} has characters the tokenizer cannot encode: {where}; "
                       "add them to the alphabet (build_char_tokenizer) or clean the text")
  return list(tokenizer.encode(text, add_special_tokens=False).ids)


def cut_at_stop(ids: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
  """`ids` up to (not including) the first stop token (EOS/EOT): what follows is padding."""
  ids = list(ids)
  cut = len(ids)
  for stop in stop_ids:
    if stop in ids:
      cut = min(cut, ids.index(stop))
  return ids[:cut]


def decode_completions(tokenizer: tokenizers.Tokenizer, ids_NxG, stop_ids: Sequence[int], *,
                       skip_special_tokens: bool = True) -> list[str]:
  """Generated rows as text, each cut at its first stop token (the one decoder that evaluation,
  rollout rewards and the generate CLI share)."""
  rows = [cut_at_stop(row, stop_ids) for row in np.asarray(ids_NxG).tolist()]
  return tokenizer.decode_batch(rows, skip_special_tokens=skip_special_tokens)
