"""The generated pretraining corpus: deterministic per seed, every document in its grammar (true
arithmetic over natural numbers, minimal parentheses), unpaired with Countdown, covered by the
character tokenizer, selectable as `data.pretrain_files`, and pretraining on it lowers the loss."""

import ast
import pickle
import re
from fractions import Fraction

import numpy as np
import pytest

from configs import countdown_tiny_pretrain
from mdpo_jax import config as config_lib
from mdpo_jax.data import generated
from mdpo_jax.data.tokenizer import build_char_tokenizer, encode_text
from mdpo_jax.training import metrics, setup, sft_loop

SPEC = "generated:countdown_arithmetic"
_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
        ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}


def _value(node, leaves: list) -> Fraction:
  """Exact value of an arithmetic AST (Python's own parser: independent of the generator);
  asserts that every intermediate value is a natural number and collects the literals."""
  if isinstance(node, ast.Constant):
    assert type(node.value) is int
    leaves.append(node.value)
    return Fraction(node.value)
  assert isinstance(node, ast.BinOp) and type(node.op) in _OPS, ast.dump(node)
  a, b = _value(node.left, leaves), _value(node.right, leaves)
  v = _OPS[type(node.op)](a, b)
  assert v.denominator == 1 and v >= 0, (ast.unparse(node), v)
  return v


def _check_expression(text: str) -> Fraction:
  """2–3 numbers in 1–20, natural intermediate values, and no parentheses that precedence does
  not need (dropping any pair changes the parse)."""
  assert re.fullmatch(r"[0-9+\-*/()]+", text), text
  tree = ast.parse(text, mode="eval").body
  leaves = []
  value = _value(tree, leaves)
  assert 2 <= len(leaves) <= 3 and all(1 <= x <= 20 for x in leaves), (text, leaves)
  for i, ch in enumerate(text):
    if ch == "(":
      depth, j = 0, i
      while True:
        depth += {"(": 1, ")": -1}.get(text[j], 0)
        if depth == 0:
          break
        j += 1
      bare = text[:i] + text[i + 1:j] + text[j + 1:]
      assert ast.dump(ast.parse(bare, mode="eval").body) != ast.dump(tree), (text, "redundant")
  return value


def _check_line(line: str) -> str:
  """Which kind the line is; asserts it obeys that kind's grammar."""
  if m := re.fullmatch(r"\\boxed\{(.+)\}", line):
    _check_expression(m.group(1))
    return "boxed"
  if line.endswith("."):
    steps = line[:-1].split(", ")
    assert 1 <= len(steps) <= 2, line
    for step in steps:
      m = re.fullmatch(r"(\d+)([+\-*/])(\d+)=(\d+)", step)
      assert m, step
      a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
      assert _OPS[{"+": ast.Add, "-": ast.Sub, "*": ast.Mult, "/": ast.Div}[op]](
          Fraction(a), Fraction(b)) == c, step
    return "steps"
  lhs, rhs = line.rsplit("=", 1)
  assert re.fullmatch(r"\d+", rhs) and _check_expression(lhs) == int(rhs), line
  return "equation"


def test_every_document_obeys_the_grammar():
  source = generated.parse_spec(SPEC)
  kinds = {"boxed": 0, "steps": 0, "equation": 0}
  for i in range(1500):
    doc = source[i]
    lines = doc.split("\n")
    assert 1 <= len(lines) <= 4, doc
    for line in lines:
      kinds[_check_line(line)] += 1
    assert "Numbers" not in doc and "Target" not in doc   # never a Countdown prompt: unpaired
  assert min(kinds.values()) > 0.25 * sum(kinds.values()) / 3, kinds


def test_deterministic_per_seed_and_random_access():
  a, b = generated.GeneratedSource("countdown_arithmetic", 500, 7), generated.parse_spec(
      "generated:countdown_arithmetic:500:7")
  assert a == b and len(a) == 500
  docs = [a[i] for i in range(200)]
  assert docs == [b[i] for i in range(200)]
  assert [a[i] for i in (199, 3, 42)] == [docs[199], docs[3], docs[42]]   # any order
  assert a[-1] == a[499]
  assert pickle.loads(pickle.dumps(a))[17] == docs[17]
  other = generated.GeneratedSource("countdown_arithmetic", 500, 8)
  assert sum(other[i] == docs[i] for i in range(200)) < 20
  assert len(set(docs)) > 190
  with pytest.raises(IndexError):
    a[500]


def test_the_char_tokenizer_covers_the_corpus():
  text = "\n".join(generated.parse_spec(SPEC)[i] for i in range(500))
  assert set(text) <= set(setup.CHAR_ALPHABET)
  tok = build_char_tokenizer(setup.CHAR_ALPHABET)
  assert tok.decode(encode_text(tok, text)) == text


@pytest.mark.parametrize("spec, message", [
    ("generated:poems", "unknown corpus 'poems'; allowed ('countdown_arithmetic',)"),
    ("generated:countdown_arithmetic:many", "DOCS 'many' must be a whole number"),
    ("generated:countdown_arithmetic:10:-1", "SEED '-1' must be a whole number"),
    ("generated:countdown_arithmetic:0", "DOCS must be ≥ 1"),
    ("generated:countdown_arithmetic:1:2:3", "allowed generated:NAME[:DOCS[:SEED]]"),
])
def test_bad_specs_are_one_line_naming_the_field(spec, message):
  for parse in (generated.parse_spec, sft_loop.pretrain_source):
    with pytest.raises(ValueError) as e:
      parse(spec)
    assert str(e.value).startswith(f"data.pretrain_files={spec!r}: ") and message in str(e.value)
    assert "\n" not in str(e.value)
  c = countdown_tiny_pretrain.get_config()
  c.data.pretrain_files = spec
  with pytest.raises(ValueError, match=re.escape(f"data.pretrain_files={spec!r}")):
    config_lib.parse(c)


def test_pretrain_source_selects_the_corpus():
  assert sft_loop.pretrain_source("generated:countdown_arithmetic:10:3") == \
      generated.GeneratedSource("countdown_arithmetic", 10, 3)
  assert sft_loop.pretrain_source(SPEC) == generated.GeneratedSource(
      "countdown_arithmetic", generated.DEFAULT_DOCS, generated.DEFAULT_SEED)


def test_pretraining_on_it_lowers_the_loss(tmp_path):
  """trainer=pretrain through the real loop on the generated corpus: a 1-layer model's loss falls
  well below that of its first steps (and below the uniform guess over the alphabet)."""
  c = countdown_tiny_pretrain.get_config()
  c.model.d_model, c.model.n_layers, c.model.n_heads, c.model.n_kv_heads = 32, 1, 2, 2
  c.model.mlp_hidden_size = 64
  c.data.batch_size, c.data.seq_len = 16, 32
  c.optim.lr, c.optim.warmup_steps = 1e-2, 5
  c.train.num_steps, c.train.log_every, c.train.checkpoint_every = 150, 10, 150
  c.train.async_checkpoint, c.logging.tensorboard = False, False
  result = sft_loop.train(c, tmp_path)
  losses = {r["step"]: r["loss"] for r in metrics.read_jsonl(tmp_path / "metrics.jsonl")
            if "loss" in r}
  assert result["step"] == 150 and not result["eval"]
  last = np.mean([losses[s] for s in (130, 140, 150)])   # the last 30 steps (the loss is noisy)
  assert last < 0.75 * losses[10], losses
  assert last < np.log(len(setup.CHAR_ALPHABET) + 4) * 0.7, losses
