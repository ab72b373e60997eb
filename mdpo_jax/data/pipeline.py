"""Grain input pipelines: SFT pairs and pretraining text → fixed-shape, process-sharded batches.

Both pipelines have the same shape (DESIGN.md: source → tokenize → batch → shard by process):

  source (random access) ─ map_with_index(tokenize) ─ slice(process shard) ─ shuffle(seed)
        ─ repeat(num_epochs) ─ to_iter_dataset ─ [pack into seq_len rows] ─ batch(batch_size)

SFT batches: `tokens` int32 [B, L] = [prompt ids | answer ids | EOS … EOS] and `prompt_mask` int32
[B, L] (1 on prompt positions), the layout `diffusion.losses.sft_loss(tokens, prompt_mask)`
expects: LLaDA pads every answer with EOS to the fixed length and trains the padding like any
answer token, which is how the model learns to stop. No attention mask is needed (every position
is real).

Pretraining batches: `tokens` int32 [B, L], cut from the stream of all documents' ids, each
document followed by one EOS, in (shuffled) document order, without padding
(`diffusion.losses.pretrain_loss(tokens)`). Documents span row and batch boundaries. With a finite
`num_epochs`, the last partial row (fewer than L tokens) and partial batch are dropped.

Sharding by JAX process. `batch_size` is the per-process batch: the global batch is
`n · batch_size`, assembled from the processes' local batches (e.g. with
`jax.make_array_from_process_local_data`). SFT: every process shuffles all examples the same way
and takes rows [i·b, (i+1)·b) of each global batch of n·b rows, so the global batches are the
ones a single process with batch n·b would see — a run gives the same batches on any number of
processes (and can resume on another number); a process tokenizes only its own rows.
Pretraining: process i keeps the source documents i, i+n, i+2n, … of the first `n·⌊N/n⌋` (every
process has ⌊N/n⌋ documents) and packs its own stream, so batches depend on n.
`process_index`/`process_count` default to `jax.process_index()`/`jax.process_count()`; pass them
to simulate processes in tests.

Determinism: the order is a function of (seed, source, process shard) only: grain's index shuffle,
reseeded every epoch. The same seed gives the same batches.

Checkpointing: `it = iter(dataset)` has `it.get_state()` (a small JSON-able dict) and
`it.set_state(state)`; a restored iterator continues with exactly the batches the saved one would
have produced. With orbax:

  mngr.save(step, args=ocp.args.Composite(state=..., data=iterator_checkpoint_args(it)))
  mngr.restore(step, args=ocp.args.Composite(state=..., data=iterator_restore_args(it)))

(`grain.checkpoint.CheckpointSave/CheckpointRestore`, handled by
`grain.checkpoint.CheckpointHandler`, which writes one `process_{i}-of-{n}.json` per process;
restoring needs the same process count.)
"""

from __future__ import annotations

import array
import copy
import functools
import json
import numbers
import os
from typing import Any, Mapping, NamedTuple, Sequence

import grain
import numpy as np
import tokenizers

from mdpo_jax.data.tokenizer import encode_text

PathLike = str | os.PathLike

# Reading/tokenizing threads and elements buffered ahead, per iterator. Grain's own default (16
# threads, 500 elements) makes each new iterator spend ~0.4 s of a 2-core machine filling its
# buffer under the GIL, competing with the training step; rows here are cheap, so a small pool
# keeps up. Pass `read_options` to read from slow/remote storage with more threads.
DEFAULT_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=64)


class SFTExample(NamedTuple):
  """One supervised pair; plain `(prompt, answer)` tuples and `{"prompt", "answer"}` dicts work
  too."""
  prompt: str
  answer: str


# ----------------------------------------------------------------------------- validation


def _check_int(name: str, value: Any, *, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
  return int(value)


def _check_seed(seed: Any) -> int:
  if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**32:
    raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
  return int(seed)


def _check_epochs(num_epochs: Any) -> int | None:
  if num_epochs is None:
    return None
  return _check_int("num_epochs", num_epochs, minimum=1)


def _process_shard(shard_by_process: bool, process_index: int | None,
                   process_count: int | None) -> tuple[int, int]:
  """(index, count) of this process's shard; (0, 1) when not sharding."""
  if not shard_by_process:
    return 0, 1
  if process_index is None or process_count is None:
    import jax  # Local: reading data needs no accelerator until sharding asks which process we are.
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  process_count = _check_int("process_count", process_count, minimum=1)
  process_index = _check_int("process_index", process_index, minimum=0)
  if process_index >= process_count:
    raise ValueError(f"process_index must be in [0, process_count={process_count}), "
                     f"got {process_index}")
  return process_index, process_count


def _shard(ds: grain.MapDataset, index: int, count: int, what: str) -> grain.MapDataset:
  """Records index, index+count, … of the first count·⌊N/count⌋ (equal shard sizes)."""
  usable = (len(ds) // count) * count
  if usable == 0:
    raise ValueError(f"{what} has {len(ds)} records, fewer than process_count={count}: some "
                     "processes would get no data")
  return ds[:usable][index::count]


def _as_map_dataset(source: Any, what: str) -> grain.MapDataset:
  if isinstance(source, grain.MapDataset):
    return source
  if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
    raise TypeError(f"{what} must be a random-access source (a Sequence, a grain "
                    f"RandomAccessDataSource or a grain.MapDataset), got {type(source).__name__}")
  return grain.MapDataset.source(source)


def _finish(ds: grain.MapDataset, *, seed: int, shuffle: bool, num_epochs: int | None,
            read_options: grain.ReadOptions | None) -> grain.IterDataset:
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  return ds.to_iter_dataset(read_options or DEFAULT_READ_OPTIONS)


# ----------------------------------------------------------------------------- SFT


def _example_fields(example: Any, index: int) -> tuple[str, str]:
  if isinstance(example, Mapping):
    missing = [k for k in ("prompt", "answer") if k not in example]
    if missing:
      raise ValueError(f"SFT example {index} lacks key(s) {missing}; it has {sorted(example)}")
    prompt, answer = example["prompt"], example["answer"]
  elif isinstance(example, (tuple, list)) and len(example) == 2:
    prompt, answer = example
  else:
    raise TypeError(f"SFT example {index} must be a (prompt, answer) pair or a dict with keys "
                    f"'prompt' and 'answer', got {type(example).__name__}")
  if not isinstance(prompt, str) or not isinstance(answer, str):
    raise TypeError(f"SFT example {index}: prompt and answer must be str, got "
                    f"{type(prompt).__name__} and {type(answer).__name__}")
  return prompt, answer


def _sft_row(index: int, example: Any, *, tokenizer: tokenizers.Tokenizer, seq_len: int,
             eos_id: int) -> dict[str, np.ndarray]:
  """One SFT row: tokens [seq_len] = prompt | answer | EOS…, prompt_mask [seq_len]."""
  prompt, answer = _example_fields(example, index)
  try:
    prompt_ids = encode_text(tokenizer, prompt)
    answer_ids = encode_text(tokenizer, answer)
  except ValueError as e:
    raise ValueError(f"SFT example {index}: {e}") from e
  n_prompt, n_answer = len(prompt_ids), len(answer_ids)
  if n_prompt + n_answer + 1 > seq_len:
    raise ValueError(
        f"SFT example {index} does not fit seq_len={seq_len}: prompt {n_prompt} + answer "
        f"{n_answer} + at least 1 EOS = {n_prompt + n_answer + 1} tokens; raise seq_len or "
        "shorten/filter the example (rows are never truncated)")
  tokens_L = np.full((seq_len,), eos_id, np.int32)
  tokens_L[:n_prompt] = prompt_ids
  tokens_L[n_prompt:n_prompt + n_answer] = answer_ids
  prompt_mask_L = np.zeros((seq_len,), np.int32)
  prompt_mask_L[:n_prompt] = 1
  return {"tokens": tokens_L, "prompt_mask": prompt_mask_L}


def sft_rows(examples: Sequence[Any], tokenizer: tokenizers.Tokenizer, *, seq_len: int,
             eos_id: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens [N, seq_len], prompt_mask [N, seq_len]) of (prompt, answer) examples: exactly the
  rows SFT trains on (prompt | answer | EOS…), e.g. to score a checkpoint's answer likelihood."""
  rows = [_sft_row(i, ex, tokenizer=tokenizer, seq_len=seq_len, eos_id=eos_id)
          for i, ex in enumerate(examples)]
  return (np.stack([r["tokens"] for r in rows]), np.stack([r["prompt_mask"] for r in rows]))


def sft_dataset(
    examples: Sequence,
    tokenizer: tokenizers.Tokenizer,
    *,
    seq_len: int,
    eos_id: int,
    seed: int,
    batch_size: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    shard_by_process: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    check_lengths: bool = True,
    read_options: grain.ReadOptions | None = None,
) -> grain.IterDataset:
  """Batches of SFT rows `{"tokens", "prompt_mask"}`, each int32 [batch_size, seq_len].

  Row layout: `[prompt ids | answer ids | eos_id …]` (at least one EOS; the EOS padding is part of
  the answer and trained), `prompt_mask` 1 exactly on the prompt ids. Prompt and answer are encoded
  separately with `encode_text` (no special tokens added; put BOS or a chat template in the prompt
  text if the model expects one).

  Args:
    examples: random-access collection (list, grain data source, `jsonl_source(path, None)`) of
      `SFTExample`/`(prompt, answer)` pairs or dicts with keys "prompt" and "answer".
    tokenizer: a `tokenizers.Tokenizer`.
    seq_len: row length L.
    eos_id: the EOS id used as answer padding (`special_ids(tokenizer)["eos"]`).
    seed: shuffle seed, int in [0, 2**32).
    batch_size: rows per batch on this process (see module docstring on sharding).
    shuffle: shuffle examples, differently each epoch (deterministic given seed).
    num_epochs: passes over the data; None repeats forever.
    drop_remainder: drop a last partial batch (finite num_epochs only); keeps shapes static.
    shard_by_process: give each JAX process a disjoint, equal-size share of the examples.
    process_index, process_count: override `jax.process_index()/process_count()`.
    check_lengths: encode every example once up front so that a too-long example or an unknown
      character fails here, naming the example, rather than mid-training. Costs one pass of
      tokenization; turn off for very large data sets (the same errors are then raised lazily).
    read_options: grain `ReadOptions` for the tokenizing threads; None: `DEFAULT_READ_OPTIONS`.

  Returns:
    A `grain.IterDataset`; `iter(ds)` supports `get_state()`/`set_state()`.
  """
  seq_len = _check_int("seq_len", seq_len, minimum=2)
  eos_id = _check_int("eos_id", eos_id, minimum=0)
  seed = _check_seed(seed)
  batch_size = _check_int("batch_size", batch_size, minimum=1)
  num_epochs = _check_epochs(num_epochs)
  index, count = _process_shard(shard_by_process, process_index, process_count)
  row_fn = functools.partial(_sft_row, tokenizer=tokenizer, seq_len=seq_len, eos_id=eos_id)

  ds = _as_map_dataset(examples, "examples")
  if check_lengths:
    for i in range(len(ds)):
      row_fn(i, ds[i])
  # Tokenize lazily, indexed by the example's place in `examples` (errors name it).
  ds = ds.map_with_index(row_fn)
  rows = len(ds) * num_epochs if num_epochs is not None else None
  if rows is not None and drop_remainder and rows < batch_size * count:
    per = f" x {count} processes" if count > 1 else ""
    raise ValueError(f"batch_size={batch_size}{per} exceeds the {rows} rows "
                     f"({len(ds)} examples x num_epochs={num_epochs}); with drop_remainder=True "
                     "no batch would be produced")
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = _process_rows(ds.repeat(num_epochs), index, count, batch_size)
  ds = ds.to_iter_dataset(read_options or DEFAULT_READ_OPTIONS)
  return ds.batch(batch_size, drop_remainder=drop_remainder)


def _process_rows(ds: grain.MapDataset, index: int, count: int, batch: int) -> grain.MapDataset:
  """This process's rows of the global stream `ds`: rows [index·batch, (index+1)·batch) of each
  run of count·batch rows (a partial last global batch is dropped when count > 1)."""
  if count == 1:
    return ds
  block = count * batch
  def pick(j: int):
    return ds[(j // batch) * block + index * batch + j % batch]
  return grain.MapDataset.range((len(ds) // block) * batch).map(pick)


def eval_prompts(prompts: Sequence[str], tokenizer: tokenizers.Tokenizer, *, prompt_len: int,
                 pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded prompt ids for the sampler: (tokens int32 [N, P], mask int32 [N, P]).

  Each prompt is encoded with `encode_text` and right-aligned in a row of `prompt_len` (P) ids,
  padded on the left with `pad_id`; `mask` is 1 on the prompt ids (the sampler's `prompt_mask`).
  Generation then continues right after every prompt's last token.
  """
  prompt_len = _check_int("prompt_len", prompt_len, minimum=1)
  pad_id = _check_int("pad_id", pad_id, minimum=0)
  if isinstance(prompts, str):
    raise TypeError("prompts must be a sequence of str, got a single str")
  rows = []
  for i, prompt in enumerate(prompts):
    try:
      ids = encode_text(tokenizer, prompt)
    except (ValueError, TypeError) as e:
      raise type(e)(f"prompt {i}: {e}") from e
    if len(ids) > prompt_len:
      raise ValueError(f"prompt {i} has {len(ids)} tokens, more than prompt_len={prompt_len}; "
                       "raise prompt_len (prompts are never truncated)")
    rows.append(ids)
  return left_padded(rows, prompt_len, pad_id)


def left_padded(rows: Sequence[Sequence[int]], width: int, pad_id: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """Token rows right-aligned in a [N, width] int32 array padded with `pad_id` on the left, and
  the mask (1 on the tokens): the layout the sampler continues from. Rows must fit `width`."""
  tokens_NxP = np.full((len(rows), width), pad_id, np.int32)
  mask_NxP = np.zeros((len(rows), width), np.int32)
  for i, ids in enumerate(rows):
    if ids:
      tokens_NxP[i, width - len(ids):] = ids
      mask_NxP[i, width - len(ids):] = 1
  return tokens_NxP, mask_NxP


# ----------------------------------------------------------------------------- sources


class JsonlSource:
  """Random-access view of a JSON-lines file (a grain `RandomAccessDataSource`).

  The byte span of every line that is not blank is indexed once; records are read
  lazily with `os.pread`, which is safe from grain's reader threads. Picklable (the file is
  reopened), so it also works with grain's multiprocessing.

  Record i is line i's JSON object, or its `text_key` field when `text_key` is given.
  """

  _CHUNK = 1 << 24

  def __init__(self, path: PathLike, text_key: str | None = "text"):
    self._path = os.fspath(path)
    self._text_key = text_key
    if not os.path.isfile(self._path):
      raise FileNotFoundError(f"JSONL file {self._path!r} does not exist")
    self._starts, self._ends, self._line_numbers = self._index()
    self._fd = os.open(self._path, os.O_RDONLY)

  def _index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Byte spans and 1-based line numbers of the lines that hold more than whitespace."""
    starts, ends, line_numbers = array.array("q"), array.array("q"), array.array("q")
    pos = 0
    with open(self._path, "rb", buffering=self._CHUNK) as f:
      for number, line in enumerate(f, 1):
        if not line.isspace():
          starts.append(pos)
          ends.append(pos + len(line))
          line_numbers.append(number)
        pos += len(line)
    return (np.frombuffer(starts, np.int64), np.frombuffer(ends, np.int64),
            np.frombuffer(line_numbers, np.int64))

  def __len__(self) -> int:
    return len(self._starts)

  def __getitem__(self, index: int) -> Any:
    n = len(self._starts)
    index = int(index)
    if not -n <= index < n:
      raise IndexError(f"index {index} out of range for {self!r}")
    index %= n
    start, end = int(self._starts[index]), int(self._ends[index])
    line = int(self._line_numbers[index])
    try:
      record = json.loads(os.pread(self._fd, end - start, start))
    except json.JSONDecodeError as e:
      raise ValueError(f"{self._path}:{line} is not valid JSON: {e}") from e
    if self._text_key is None:
      return record
    if not isinstance(record, Mapping) or self._text_key not in record:
      keys = sorted(record) if isinstance(record, Mapping) else type(record).__name__
      raise KeyError(f"{self._path}:{line} has no field {self._text_key!r} (it has {keys}); "
                     "pass the right text_key, or text_key=None for whole records")
    return record[self._text_key]

  def __getstate__(self) -> dict[str, Any]:
    state = dict(self.__dict__)
    del state["_fd"]
    return state

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._fd = os.open(self._path, os.O_RDONLY)

  def __del__(self):
    fd = self.__dict__.get("_fd")
    if fd is not None:
      os.close(fd)
      self._fd = None

  def __repr__(self) -> str:
    return f"JsonlSource(path={self._path!r}, text_key={self._text_key!r}, len={len(self)})"


def jsonl_source(path: PathLike, text_key: str | None = "text") -> JsonlSource:
  """A random-access source over a JSONL file: record i = line i's `text_key` (None: the object)."""
  return JsonlSource(path, text_key)


def array_record_source(
    paths: PathLike | Sequence[PathLike]) -> grain.sources.ArrayRecordDataSource:
  """A random-access source over ArrayRecord file(s); for `pretrain_dataset`, each record holds
  one document's UTF-8 text (write with `ArrayRecordWriter(path, "group_size:1")`,
  `writer.write(text.encode())`)."""
  if isinstance(paths, (str, os.PathLike)):
    paths = [paths]
  return grain.sources.ArrayRecordDataSource([os.fspath(p) for p in paths])


def tfds_source(name: str, *, split: str, data_dir: PathLike | None = None,
                download: bool = False, **kwargs) -> Sequence:
  """`tfds.data_source(name, split=..., data_dir=...)`: a random-access source of feature dicts.

  Needs the data set prepared in ArrayRecord format (`file_format="array_record"`), which TFDS
  reads without TensorFlow; text features come back as UTF-8 bytes, which `pretrain_dataset`
  decodes (pick the field with `text_key`). `download=False` by default: prepare data sets
  beforehand (`tfds build --file_format=array_record`, or `builder.download_and_prepare()`)
  rather than from inside a training job.
  """
  import tensorflow_datasets as tfds  # Local: heavy import, only needed for this source.

  return tfds.data_source(name, split=split, data_dir=data_dir, download=download, **kwargs)


# ----------------------------------------------------------------------------- pretraining


def _record_text(record: Any, text_key: str, index: int) -> str:
  if isinstance(record, Mapping):
    if text_key not in record:
      raise KeyError(f"record {index} has no field {text_key!r} (it has {sorted(record)}); "
                     "pass the right text_key")
    record = record[text_key]
  if isinstance(record, np.ndarray) and record.ndim == 0:
    record = record.item()
  if isinstance(record, (bytes, np.bytes_)):
    try:
      return bytes(record).decode("utf-8")
    except UnicodeDecodeError as e:
      raise ValueError(f"record {index} is not UTF-8 text: {e}") from e
  if isinstance(record, str):
    return record
  raise TypeError(f"record {index} must be str, UTF-8 bytes, or a mapping with a {text_key!r} "
                  f"text field, got {type(record).__name__}")


def _document_ids(index: int, record: Any, *, tokenizer: tokenizers.Tokenizer, text_key: str,
                  eos_id: int) -> np.ndarray:
  """One document's ids followed by EOS, int32 [n + 1]."""
  text = _record_text(record, text_key, index)
  try:
    ids = encode_text(tokenizer, text)
  except ValueError as e:
    raise ValueError(f"record {index}: {e}") from e
  ids.append(eos_id)
  return np.asarray(ids, np.int32)


class _PackedTokensIterator(grain.DatasetIterator):
  """Cuts the concatenated parent arrays into consecutive rows of `seq_len`.

  State: the parent's state just before it produced the document being cut, and how many of its
  tokens are already in earlier rows; restoring re-reads that one document and skips the offset.
  So the state is small and exact, whatever the document lengths.
  """

  def __init__(self, parent: grain.DatasetIterator, seq_len: int):
    super().__init__(parent)
    self._seq_len = seq_len
    self._doc: np.ndarray | None = None
    self._doc_state: dict[str, Any] | None = None
    self._offset = 0

  def __next__(self) -> np.ndarray:
    self._assert_not_closed()
    pieces, need = [], self._seq_len
    while need:
      if self._doc is None or self._offset >= len(self._doc):
        doc_state = self._parent.get_state()
        try:
          doc = next(self._parent)
        except StopIteration:
          self._doc, self._doc_state, self._offset = None, None, 0
          raise  # A partial last row is dropped.
        self._doc, self._doc_state, self._offset = np.asarray(doc, np.int32), doc_state, 0
        continue
      take = min(need, len(self._doc) - self._offset)
      pieces.append(self._doc[self._offset:self._offset + take])
      self._offset += take
      need -= take
    return np.concatenate(pieces)

  def get_state(self) -> dict[str, Any]:
    if self._doc is None:
      return {"parent": self._parent.get_state(), "offset": 0}
    return {"parent": copy.deepcopy(self._doc_state), "offset": self._offset}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    offset = int(state["offset"])
    self._doc, self._doc_state, self._offset = None, None, 0
    if offset:
      doc_state = copy.deepcopy(state["parent"])
      try:
        doc = np.asarray(next(self._parent), np.int32)
      except StopIteration as e:
        raise ValueError(f"iterator state {state} does not match this data set: no document "
                         "at the saved position") from e
      if offset > len(doc):
        raise ValueError(f"iterator state {state} does not match this data set: offset {offset} "
                         f"is past the saved document's {len(doc)} tokens")
      self._doc, self._doc_state, self._offset = doc, doc_state, offset

  def __str__(self) -> str:
    return f"PackedTokensIterator(seq_len={self._seq_len})"


class PackedTokensIterDataset(grain.IterDataset):
  """Concatenates a dataset of 1-D int arrays and cuts it into rows of `seq_len` (no padding).

  Unlike grain's `ConcatThenSplitIterDataset`, whose state (grain 0.2.18) holds tuples that do not
  survive the JSON round trip of grain's own orbax `CheckpointHandler` (a restored iterator then
  skips a document), the state here is plain ints and the parent's state.
  """

  def __init__(self, parent: grain.IterDataset, *, seq_len: int):
    super().__init__(parent)
    self._seq_len = _check_int("seq_len", seq_len, minimum=1)

  def __iter__(self) -> grain.DatasetIterator:
    return _PackedTokensIterator(self._parent.__iter__(), self._seq_len)

  def __str__(self) -> str:
    return f"PackedTokensIterDataset(seq_len={self._seq_len})"


def _tokens_dict(row_L: np.ndarray) -> dict[str, np.ndarray]:
  return {"tokens": row_L}


def pretrain_dataset(
    source: Any,
    tokenizer: tokenizers.Tokenizer,
    *,
    seq_len: int,
    eos_id: int,
    seed: int,
    batch_size: int,
    text_key: str = "text",
    shuffle: bool = True,
    num_epochs: int | None = None,
    shard_by_process: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    read_options: grain.ReadOptions | None = None,
) -> grain.IterDataset:
  """Batches `{"tokens": int32 [batch_size, seq_len]}` packed from a corpus of documents.

  Each document becomes `encode_text(text) + [eos_id]`; the documents (shuffled per epoch when
  `shuffle`) are concatenated and cut into rows of `seq_len`, so there is no padding and no
  attention mask. With finite `num_epochs` the final partial row and partial batch are dropped.

  Args:
    source: random-access documents: `jsonl_source(...)`, `array_record_source(...)`,
      `tfds_source(...)`, a list, or a `grain.MapDataset`. A record is a str, UTF-8 bytes, or a
      mapping whose `text_key` field is either.
    tokenizer: a `tokenizers.Tokenizer`.
    seq_len: row length L.
    eos_id: the id appended after every document (`special_ids(tokenizer)["eos"]`).
    seed: document shuffle seed, int in [0, 2**32).
    batch_size: rows per batch on this process.
    text_key: field holding the text when records are mappings (TFDS features, JSON objects).
    shuffle: shuffle documents, differently each epoch.
    num_epochs: passes over the documents; None repeats forever.
    shard_by_process, process_index, process_count: as in `sft_dataset` (documents are sharded).
    read_options: grain `ReadOptions` for the reading/tokenizing threads; None:
      `DEFAULT_READ_OPTIONS`.

  Returns:
    A `grain.IterDataset`; `iter(ds)` supports `get_state()`/`set_state()`.
  """
  seq_len = _check_int("seq_len", seq_len, minimum=1)
  eos_id = _check_int("eos_id", eos_id, minimum=0)
  seed = _check_seed(seed)
  batch_size = _check_int("batch_size", batch_size, minimum=1)
  num_epochs = _check_epochs(num_epochs)
  if not isinstance(text_key, str):
    raise ValueError(f"text_key must be a str, got {text_key!r}")
  index, count = _process_shard(shard_by_process, process_index, process_count)
  doc_fn = functools.partial(_document_ids, tokenizer=tokenizer, text_key=text_key, eos_id=eos_id)

  ds = _as_map_dataset(source, "source")
  ds = _shard(ds.map_with_index(doc_fn), index, count, "source")
  docs = _finish(ds, seed=seed, shuffle=shuffle, num_epochs=num_epochs, read_options=read_options)
  rows = PackedTokensIterDataset(docs, seq_len=seq_len).map(_tokens_dict)
  return rows.batch(batch_size, drop_remainder=True)


# ----------------------------------------------------------------------------- checkpointing


def iterator_checkpoint_args(it: grain.DatasetIterator):
  """Orbax save args for a grain iterator: `ocp.args.Composite(data=iterator_checkpoint_args(it))`.

  The iterator's state is captured synchronously when the manager's `save` is called.
  """
  return grain.checkpoint.CheckpointSave(it)


def iterator_restore_args(it: grain.DatasetIterator):
  """Orbax restore args that set `it`'s state in place:
  `ocp.args.Composite(data=iterator_restore_args(it))`; the restored item is `it` itself.

  `it` must come from the same pipeline (same source, seed and settings) as the saved one.
  """
  return grain.checkpoint.CheckpointRestore(it)
