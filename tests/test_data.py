"""Tests for mdpo_jax.data: the character tokenizer and the grain pipelines.

Expected token ids are built independently here (alphabet.index per character), never through the
code under test; pipeline outputs are checked as exact streams / exact multisets.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mdpo_jax.data import pipeline
from mdpo_jax.data import tokenizer as tok_lib
from mdpo_jax.models import hf, llada

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 +-*/()=\n"
V = len(ALPHABET) + 4
EOS = V - 3


@pytest.fixture(scope="module")
def tok():
  return tok_lib.build_char_tokenizer(ALPHABET)


def char_ids(text: str) -> list[int]:
  """Independent reference encoding: position of each character in the alphabet."""
  return [ALPHABET.index(c) for c in text]


def random_text(rng: np.random.Generator, max_len: int, alphabet: str = ALPHABET) -> str:
  return "".join(rng.choice(list(alphabet), size=int(rng.integers(0, max_len + 1))))


def all_rows(ds) -> list[dict[str, np.ndarray]]:
  rows = []
  for batch in ds:
    for i in range(len(batch["tokens"])):
      rows.append({k: v[i] for k, v in batch.items()})
  return rows


def take(it, n: int) -> list[dict[str, np.ndarray]]:
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def batches_equal(a, b) -> bool:
  return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


# ----------------------------------------------------------------------------- tokenizer


def test_char_tokenizer_round_trip_is_exact(tok):
  rng = np.random.default_rng(0)
  texts = [random_text(rng, 60) for _ in range(300)] + ["", " ", "\n\n", "  a  b \n c "]
  for text in texts:
    ids = tok_lib.encode_text(tok, text)
    assert ids == char_ids(text)
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_special_ids_at_top_and_match_tiny_model(tok):
  ids = tok_lib.special_ids(tok)
  assert ids == {"bos": V - 4, "eos": V - 3, "eot": V - 2, "mask": V - 1, "vocab_size": V}
  config = llada.tiny(vocab_size=V)
  assert (ids["bos"], ids["eos"], ids["eot"], ids["mask"]) == (
      config.bos_token_id, config.eos_token_id, config.eot_token_id, config.mask_token_id)
  # Special-token strings inside text map to their ids, though "<" and "|" are not characters;
  # skip_special_tokens drops them when decoding.
  ids_text = tok_lib.encode_text(tok, "ab<|eot_id|>c<|mdm_mask|>")
  assert ids_text == char_ids("ab") + [V - 2] + char_ids("c") + [V - 1]
  assert tok.decode(ids_text, skip_special_tokens=True) == "abc"
  assert tok.decode(ids_text, skip_special_tokens=False) == "ab<|eot_id|>c<|mdm_mask|>"


def test_save_and_load_through_hf_gives_same_ids(tok, tmp_path):
  tok.save(str(tmp_path / "tokenizer.json"))
  loaded = hf.load_tokenizer(tmp_path)
  rng = np.random.default_rng(1)
  for _ in range(50):
    text = random_text(rng, 40)
    assert tok_lib.encode_text(loaded, text) == char_ids(text)
    assert loaded.decode(char_ids(text)) == text
  assert tok_lib.special_ids(loaded) == tok_lib.special_ids(tok)
  assert tok_lib.is_char_level(loaded)
  with pytest.raises(ValueError, match="'Z'"):
    tok_lib.encode_text(loaded, "abZ")


def test_unknown_character_is_an_error_naming_it(tok):
  # The raw BPE model would silently drop these; encode_text must refuse.
  assert tok.encode("aéb", add_special_tokens=False).ids == char_ids("ab")
  with pytest.raises(ValueError,
                     match=r"'é' \(U\+00E9\) at index 1.*'\\t' \(U\+0009\) at index 3"):
    tok_lib.encode_text(tok, "aéb\tc")


def test_bad_alphabet_and_missing_special_are_errors():
  with pytest.raises(ValueError, match="repeat.*'a'"):
    tok_lib.build_char_tokenizer("abca")
  custom = tok_lib.build_char_tokenizer("ab", specials=("<s>", "</s>", "<eot>", "<mask>"))
  with pytest.raises(ValueError, match=r"BOS token '<\|startoftext\|>'"):
    tok_lib.special_ids(custom)
  assert tok_lib.special_ids(custom, tokens=("<s>", "</s>", "<eot>", "<mask>"))["mask"] == 5


# ----------------------------------------------------------------------------- SFT


def make_examples(n: int, seed: int = 0) -> list[tuple[str, str]]:
  rng = np.random.default_rng(seed)
  # "{i}:" makes every example distinct, so a row identifies its example.
  return [(f"{i}=" + random_text(rng, 8), random_text(rng, 10)) for i in range(n)]


def expected_sft_row(prompt: str, answer: str, seq_len: int) -> tuple[tuple, tuple]:
  p, a = char_ids(prompt), char_ids(answer)
  tokens = p + a + [EOS] * (seq_len - len(p) - len(a))
  mask = [1] * len(p) + [0] * (seq_len - len(p))
  return tuple(tokens), tuple(mask)


def test_sft_rows_match_independent_construction_and_cover_epoch_once(tok):
  examples = make_examples(24)
  examples[1] = {"prompt": examples[1][0], "answer": examples[1][1]}  # dicts work too
  examples[2] = pipeline.SFTExample(*examples[2])
  seq_len = 24
  expected = {}
  for i, ex in enumerate(examples):
    prompt, answer = (ex["prompt"], ex["answer"]) if isinstance(ex, dict) else ex
    tokens, mask = expected_sft_row(prompt, answer, seq_len)
    expected[tokens] = (i, mask)
  ds = pipeline.sft_dataset(examples, tok, seq_len=seq_len, eos_id=EOS, seed=3, batch_size=4,
                            num_epochs=1, shard_by_process=False)
  batches = list(ds)
  assert len(batches) == 6
  for b in batches:
    assert b["tokens"].shape == b["prompt_mask"].shape == (4, seq_len)
    assert b["tokens"].dtype == b["prompt_mask"].dtype == np.int32
  seen = []
  for row in all_rows(ds):
    key = tuple(row["tokens"].tolist())
    assert key in expected, "row is not [prompt | answer | EOS...] of any example"
    index, mask = expected[key]
    assert tuple(row["prompt_mask"].tolist()) == mask
    seen.append(index)
  assert sorted(seen) == list(range(24))  # each example exactly once
  assert seen != list(range(24))  # and shuffled


def test_sft_epochs_are_reshuffled_and_complete(tok):
  examples = make_examples(12)
  ds = pipeline.sft_dataset(examples, tok, seq_len=24, eos_id=EOS, seed=0, batch_size=3,
                            num_epochs=2, shard_by_process=False)
  rows = [tuple(r["tokens"].tolist()) for r in all_rows(ds)]
  first, second = rows[:12], rows[12:]
  assert sorted(first) == sorted(second) and len(set(first)) == 12
  assert first != second


def test_sft_too_long_example_is_named(tok):
  examples = make_examples(6)
  examples[4] = ("abc", "d" * 30)
  with pytest.raises(ValueError, match=r"SFT example 4 does not fit seq_len=24: prompt 3 \+ "
                                       r"answer 30"):
    pipeline.sft_dataset(examples, tok, seq_len=24, eos_id=EOS, seed=0, batch_size=2,
                         shard_by_process=False)
  # Exactly full (prompt + answer + 1 EOS == seq_len) is fine; one more token is not.
  fits = [("ab", "c" * 21)]
  row = all_rows(pipeline.sft_dataset(fits, tok, seq_len=24, eos_id=EOS, seed=0, batch_size=1,
                                      num_epochs=1, shard_by_process=False))[0]
  assert row["tokens"][-1] == EOS and row["tokens"][-2] == char_ids("c")[0]
  with pytest.raises(ValueError, match="SFT example 0"):
    pipeline.sft_dataset([("ab", "c" * 22)], tok, seq_len=24, eos_id=EOS, seed=0, batch_size=1,
                         shard_by_process=False)
  # Lazily (no up-front check) the same error surfaces while iterating.
  ds = pipeline.sft_dataset(examples, tok, seq_len=24, eos_id=EOS, seed=0, batch_size=2,
                            shard_by_process=False, check_lengths=False, shuffle=False)
  with pytest.raises(ValueError, match="SFT example 4 does not fit"):
    list(zip(range(10), ds))


def test_sft_unknown_character_names_example(tok):
  examples = make_examples(5)
  examples[2] = ("ab", "cé")
  with pytest.raises(ValueError, match=r"SFT example 2: .*'é'"):
    pipeline.sft_dataset(examples, tok, seq_len=24, eos_id=EOS, seed=0, batch_size=2,
                         shard_by_process=False)


def test_eval_prompts_left_pads(tok):
  tokens, mask = pipeline.eval_prompts(["ab", "", "a b\n"], tok, prompt_len=5, pad_id=EOS)
  assert tokens.dtype == mask.dtype == np.int32
  np.testing.assert_array_equal(tokens, [[EOS] * 3 + char_ids("ab"), [EOS] * 5,
                                         [EOS] + char_ids("a b\n")])
  np.testing.assert_array_equal(mask, [[0, 0, 0, 1, 1], [0] * 5, [0, 1, 1, 1, 1]])
  with pytest.raises(ValueError, match="prompt 1 has 6 tokens, more than prompt_len=5"):
    pipeline.eval_prompts(["a", "abcdef"], tok, prompt_len=5, pad_id=EOS)


# ----------------------------------------------------------------------------- pretraining


def make_docs(n: int, seed: int = 0) -> list[str]:
  rng = np.random.default_rng(seed)
  return [f"{i} " + random_text(rng, 30) for i in range(n)]


def doc_stream(docs) -> list[int]:
  return [t for d in docs for t in char_ids(d) + [EOS]]


def flat_tokens(ds) -> list[int]:
  return [t for b in ds for t in b["tokens"].reshape(-1).tolist()]


def check_packed(ds, docs, seq_len: int, batch_size: int):
  """Unshuffled: batches are exactly the document stream, cut into rows, partial tail dropped."""
  stream = doc_stream(docs)
  per_batch = seq_len * batch_size
  n_batches = (len(stream) // seq_len) // batch_size
  batches = list(ds)
  assert len(batches) == n_batches > 0
  assert all(b["tokens"].shape == (batch_size, seq_len) and b["tokens"].dtype == np.int32
             for b in batches)
  assert flat_tokens(batches) == stream[:n_batches * per_batch]


def test_pretrain_jsonl_packing_preserves_stream(tok, tmp_path):
  docs = make_docs(40)
  path = tmp_path / "docs.jsonl"
  with open(path, "w") as f:
    for i, d in enumerate(docs):
      f.write(json.dumps({"id": i, "text": d}) + "\n")
      if i == 5:
        f.write("\n")  # blank lines are skipped
  source = pipeline.jsonl_source(path, "text")
  assert len(source) == 40 and source[7] == docs[7]
  ds = pipeline.pretrain_dataset(source, tok, seq_len=16, eos_id=EOS, seed=0, batch_size=3,
                                 shuffle=False, num_epochs=1, shard_by_process=False)
  check_packed(ds, docs, 16, 3)
  # Whole-record mode gives the objects (usable as SFT examples).
  assert pipeline.jsonl_source(path, None)[3] == {"id": 3, "text": docs[3]}


def test_pretrain_shuffled_is_a_permutation_of_documents(tok):
  docs = make_docs(30)
  seq_len, batch_size = 10, 2
  ds = pipeline.pretrain_dataset(docs, tok, seq_len=seq_len, eos_id=EOS, seed=5,
                                 batch_size=batch_size, num_epochs=1, shard_by_process=False)
  stream = flat_tokens(ds)
  pieces = [[]]
  for t in stream:
    if t == EOS:
      pieces.append([])
    else:
      pieces[-1].append(t)
  complete, tail = pieces[:-1], pieces[-1]
  by_ids = {tuple(char_ids(d)): i for i, d in enumerate(docs)}
  order = [by_ids[tuple(p)] for p in complete]  # KeyError: a piece that is not a document
  assert len(set(order)) == len(order)  # no document twice
  assert order != sorted(order)  # shuffled
  remaining = set(range(len(docs))) - set(order)
  assert not tail or any(char_ids(docs[i])[:len(tail)] == tail for i in remaining)
  # Only the partial last row/batch is dropped: fewer than batch_size * seq_len tokens.
  assert 0 <= len(doc_stream(docs)) - len(stream) < batch_size * seq_len


def test_pretrain_array_record_packing_preserves_stream(tok, tmp_path):
  from array_record.python.array_record_module import ArrayRecordWriter

  docs = make_docs(25, seed=2)
  path = str(tmp_path / "docs.array_record")
  writer = ArrayRecordWriter(path, "group_size:1")
  for d in docs:
    writer.write(d.encode("utf-8"))
  writer.close()
  source = pipeline.array_record_source(path)
  assert len(source) == 25
  ds = pipeline.pretrain_dataset(source, tok, seq_len=12, eos_id=EOS, seed=0, batch_size=2,
                                 shuffle=False, num_epochs=1, shard_by_process=False)
  check_packed(ds, docs, 12, 2)


def test_pretrain_tfds_data_source(tok, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  docs = make_docs(9, seed=4)

  class TinyDocs(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i, d in enumerate(docs):
        yield i, {"text": d}

  TinyDocs(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  source = pipeline.tfds_source("tiny_docs", split="train", data_dir=tmp_path)
  source_docs = [source[i]["text"].decode() for i in range(len(source))]  # TFDS's stored order
  assert sorted(source_docs) == sorted(docs)
  ds = pipeline.pretrain_dataset(source, tok, seq_len=8, eos_id=EOS, seed=0, batch_size=2,
                                 shuffle=False, num_epochs=1, shard_by_process=False)
  check_packed(ds, source_docs, 8, 2)


def test_pretrain_record_errors_name_the_record(tok):
  with pytest.raises(KeyError, match="record 1 has no field 'text'"):
    list(pipeline.pretrain_dataset([{"text": "ab"}, {"body": "cd"}], tok, seq_len=2, eos_id=EOS,
                                   seed=0, batch_size=1, shuffle=False, num_epochs=1,
                                   shard_by_process=False))
  with pytest.raises(ValueError, match=r"record 0: .*'é'"):
    list(pipeline.pretrain_dataset(["é"], tok, seq_len=2, eos_id=EOS, seed=0, batch_size=1,
                                   num_epochs=1, shard_by_process=False))


# ----------------------------------------------------------------------------- sharding


def test_sft_process_shards_are_disjoint_and_complete(tok):
  for n in (24, 25):
    examples = make_examples(n)
    index_of = {expected_sft_row(p, a, 24)[0]: i for i, (p, a) in enumerate(examples)}
    shards = []
    for proc in range(2):
      # batch_size=1 so that unequal shares would show (no partial batch to drop).
      ds = pipeline.sft_dataset(examples, tok, seq_len=24, eos_id=EOS, seed=0, batch_size=1,
                                num_epochs=1, process_index=proc, process_count=2)
      shards.append([index_of[tuple(r["tokens"].tolist())] for r in all_rows(ds)])
    assert len(shards[0]) == len(shards[1]) == n // 2  # equal shares: same number of batches
    assert not set(shards[0]) & set(shards[1])
    assert len(set(shards[0]) | set(shards[1])) == 2 * (n // 2)
  # Default: jax's process index/count (one process here) — sees everything.
  ds = pipeline.sft_dataset(make_examples(8), tok, seq_len=24, eos_id=EOS, seed=0, batch_size=2,
                            num_epochs=1)
  assert len(all_rows(ds)) == 8
  with pytest.raises(ValueError, match="process_index must be in"):
    pipeline.sft_dataset(examples, tok, seq_len=24, eos_id=EOS, seed=0, batch_size=2,
                         process_index=2, process_count=2)


def test_sft_global_batches_do_not_depend_on_the_process_count(tok):
  """Two processes' local batches of b rows, side by side, are the single-process batches of 2b
  rows (across epoch boundaries too), and stay so after a restored iterator state."""
  examples = make_examples(13)
  one = iter(pipeline.sft_dataset(examples, tok, seq_len=24, eos_id=EOS, seed=3, batch_size=4,
                                  process_index=0, process_count=1))
  two = [iter(pipeline.sft_dataset(examples, tok, seq_len=24, eos_id=EOS, seed=3, batch_size=2,
                                   process_index=p, process_count=2)) for p in (0, 1)]
  for step in range(10):   # 40 rows: three epochs of 13
    if step == 5:          # resume both processes from their saved positions
      states = [it.get_state() for it in two]
      two = [iter(pipeline.sft_dataset(examples, tok, seq_len=24, eos_id=EOS, seed=3,
                                       batch_size=2, process_index=p, process_count=2))
             for p in (0, 1)]
      for it, state in zip(two, states):
        it.set_state(state)
    want = next(one)
    parts = [next(it) for it in two]
    for key in ("tokens", "prompt_mask"):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), want[key])


def test_pretrain_process_shards_are_disjoint_and_complete(tok):
  docs = make_docs(20)
  for proc in range(2):
    ds = pipeline.pretrain_dataset(docs, tok, seq_len=8, eos_id=EOS, seed=0, batch_size=2,
                                   shuffle=False, num_epochs=1, process_index=proc,
                                   process_count=2)
    check_packed(ds, docs[proc::2], 8, 2)


# ----------------------------------------------------------------------------- state, determinism


def sft_ds(tok, seed=0):
  return pipeline.sft_dataset(make_examples(10), tok, seq_len=24, eos_id=EOS, seed=seed,
                              batch_size=3, shard_by_process=False)


def pretrain_ds(tok, seed=0):
  # Documents longer than a row, so saved states fall inside documents.
  return pipeline.pretrain_dataset(make_docs(12), tok, seq_len=7, eos_id=EOS, seed=seed,
                                   batch_size=2, shard_by_process=False)


@pytest.mark.parametrize("make", [sft_ds, pretrain_ds], ids=["sft", "pretrain"])
def test_iterator_state_resumes_exactly(tok, make):
  m = 6
  for k in (0, 1, 4, 9):  # 9 batches cross an epoch boundary for both
    it = iter(make(tok))
    take(it, k)
    state = json.loads(json.dumps(it.get_state()))  # what grain's orbax handler stores
    expected = take(it, m)
    resumed = iter(make(tok))
    take(resumed, 2)  # a used iterator is fine too
    resumed.set_state(state)
    assert_batches_equal(take(resumed, m), expected)


def test_orbax_checkpoint_round_trip_of_iterator(tok, tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  ds = pretrain_ds(tok)
  it = iter(ds)
  take(it, 3)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(3, args=ocp.args.Composite(data=pipeline.iterator_checkpoint_args(it),
                                         meta=ocp.args.JsonSave({"step": 3})))
    mngr.wait_until_finished()
  expected = take(it, 5)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    assert mngr.latest_step() == 3
    fresh = iter(pretrain_ds(tok))
    restored = mngr.restore(3, args=ocp.args.Composite(
        data=pipeline.iterator_restore_args(fresh), meta=ocp.args.JsonRestore()))
  assert restored.data is fresh and restored.meta == {"step": 3}
  assert_batches_equal(take(fresh, 5), expected)


@pytest.mark.parametrize("make", [sft_ds, pretrain_ds], ids=["sft", "pretrain"])
def test_deterministic_per_seed(tok, make):
  a = take(iter(make(tok, seed=7)), 5)
  b = take(iter(make(tok, seed=7)), 5)
  c = take(iter(make(tok, seed=8)), 5)
  assert_batches_equal(a, b)
  assert not batches_equal(a, c)


def test_argument_errors(tok):
  with pytest.raises(ValueError, match="seq_len must be an int >= 2"):
    pipeline.sft_dataset(make_examples(4), tok, seq_len=1, eos_id=EOS, seed=0, batch_size=2)
  with pytest.raises(ValueError, match="seed must be an int in"):
    pipeline.sft_dataset(make_examples(4), tok, seq_len=24, eos_id=EOS, seed=-1, batch_size=2)
  with pytest.raises(ValueError, match="num_epochs must be an int >= 1"):
    pipeline.pretrain_dataset(make_docs(4), tok, seq_len=8, eos_id=EOS, seed=0, batch_size=2,
                              num_epochs=0)
  with pytest.raises(ValueError, match="batch_size=8 exceeds the 4 rows"):
    pipeline.sft_dataset(make_examples(4), tok, seq_len=24, eos_id=EOS, seed=0, batch_size=8,
                         num_epochs=1, shard_by_process=False)
  with pytest.raises(TypeError, match="SFT example 0 must be a"):
    pipeline.sft_dataset(["just a prompt"], tok, seq_len=24, eos_id=EOS, seed=0, batch_size=1)
