"""Dream: forward parity with an independent NumPy implementation of the Hugging Face model,
the logit shift, padding, GQA, tied/untied heads, HF import/export, tokenizer and chat template.

Nothing is downloaded. Each checkpoint is written by the test in the published layout (PyTorch
[out, in] Linear weights under Qwen2 names, q/k/v biases, sharded safetensors + index) and the
reference reads those HF tensors directly, in float64, following modeling_dream.py and
generation_utils.py: `logits = cat(logits[:, :1], logits[:, :-1])`.
"""

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from safetensors import safe_open
from safetensors.numpy import save_file

from mdpo_jax import parallel
from mdpo_jax.models import dream, hf, hf_dream
from mdpo_jax.sampling import sampler

# The published Dream-org/Dream-v0-Instruct-7B config.json (values as released).
PUBLISHED_CONFIG = {
    "_name_or_path": "Dream-org/Dream-v0-Instruct-7B", "architectures": ["DreamModel"],
    "attention_dropout": 0.0,
    "auto_map": {"AutoConfig": "configuration_dream.DreamConfig",
                 "AutoModel": "modeling_dream.DreamModel"},
    "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 3584,
    "initializer_range": 0.02, "intermediate_size": 18944, "mask_token_id": 151666,
    "max_position_embeddings": 131072, "max_window_layers": 28, "model_type": "Dream",
    "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
    "pad_token_id": 151643, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0,
    "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.46.2", "use_cache": True, "use_mrope": False,
    "use_sliding_window": False, "vocab_size": 152064,
}

# A tiny Dream in the same form: GQA (4 heads, 2 kv heads), a small θ so positions matter.
TINY_HF = {
    **{k: v for k, v in PUBLISHED_CONFIG.items() if k not in ("_name_or_path", "eos_token_id")},
    "hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4,
    "num_key_value_heads": 2, "num_hidden_layers": 2, "max_position_embeddings": 64,
    "rope_theta": 500.0, "vocab_size": 96, "mask_token_id": 95, "eos_token_id": 93,
    "pad_token_id": 93, "bos_token_id": 92, "eot_token_id": 94, "torch_dtype": "float32",
}


# ---------------------------------------------------- HF-layout checkpoint + NumPy reference ----


def _hf_tensors(c: dict, rng: np.random.Generator, dtype=np.float32) -> dict[str, np.ndarray]:
  d, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
  h, k = c["num_attention_heads"], c["num_key_value_heads"]
  e = d // h
  normal = lambda *shape, s=0.3: (s * rng.standard_normal(shape)).astype(dtype)  # noqa: E731
  t = {"model.embed_tokens.weight": normal(v, d, s=1.0),
       "model.norm.weight": (1 + normal(d, s=0.1)).astype(dtype)}
  for i in range(c["num_hidden_layers"]):
    p = f"model.layers.{i}."
    t[p + "input_layernorm.weight"] = (1 + normal(d, s=0.1)).astype(dtype)
    t[p + "post_attention_layernorm.weight"] = (1 + normal(d, s=0.1)).astype(dtype)
    for name, rows in (("q", h * e), ("k", k * e), ("v", k * e)):
      t[p + f"self_attn.{name}_proj.weight"] = normal(rows, d)
      t[p + f"self_attn.{name}_proj.bias"] = normal(rows, s=0.5)
    t[p + "self_attn.o_proj.weight"] = normal(d, h * e)
    t[p + "mlp.gate_proj.weight"] = normal(f, d)
    t[p + "mlp.up_proj.weight"] = normal(f, d)
    t[p + "mlp.down_proj.weight"] = normal(d, f)
  if not c["tie_word_embeddings"]:
    t["lm_head.weight"] = normal(v, d)
  return t


def _write_folder(folder, c: dict, tensors: dict) -> None:
  """config.json + two safetensors shards + model.safetensors.index.json, as HF writes them."""
  folder.mkdir(parents=True, exist_ok=True)
  names = sorted(tensors)
  halves = {"model-00001-of-00002.safetensors": names[::2],
            "model-00002-of-00002.safetensors": names[1::2]}
  for file, part in halves.items():
    save_file({n: tensors[n] for n in part}, str(folder / file), metadata={"format": "pt"})
  index = {"metadata": {"total_size": sum(a.nbytes for a in tensors.values())},
           "weight_map": {n: file for file, part in halves.items() for n in part}}
  (folder / hf.INDEX_FILE).write_text(json.dumps(index))
  (folder / hf.CONFIG_FILE).write_text(json.dumps(c))


def _np_rms(x, w, eps):
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * w


def _np_rope(x_LxHxE, pos_L, theta):
  e = x_LxHxE.shape[-1]
  ang = pos_L[:, None] * theta ** (-np.arange(0, e, 2) / e)[None, :]
  cos, sin = (np.concatenate([fn(ang)] * 2, -1)[:, None, :] for fn in (np.cos, np.sin))
  rotated = np.concatenate([-x_LxHxE[..., e // 2:], x_LxHxE[..., : e // 2]], -1)
  return x_LxHxE * cos + rotated * sin


def _np_dream(c: dict, t: dict, tokens_L, *, shift=True):
  """modeling_dream.DreamModel on one unpadded row (float64, per-head loops), then the shift."""
  t = {n: np.asarray(a, np.float64) for n, a in t.items()}
  h, k = c["num_attention_heads"], c["num_key_value_heads"]
  e, eps, length = c["hidden_size"] // h, c["rms_norm_eps"], len(tokens_L)
  pos = np.arange(length, dtype=np.float64)
  x = t["model.embed_tokens.weight"][tokens_L]
  for i in range(c["num_hidden_layers"]):
    p = f"model.layers.{i}."
    a = _np_rms(x, t[p + "input_layernorm.weight"], eps)
    proj = {n: (a @ t[p + f"self_attn.{n}_proj.weight"].T + t[p + f"self_attn.{n}_proj.bias"])
            .reshape(length, -1, e) for n in "qkv"}
    q, kk = _np_rope(proj["q"], pos, c["rope_theta"]), _np_rope(proj["k"], pos, c["rope_theta"])
    out = np.zeros_like(q)
    for head in range(h):
      g = head // (h // k)  # repeat_kv: query head j reads kv head j // (H/K)
      s = q[:, head] @ kk[:, g].T / np.sqrt(e)
      s = np.exp(s - s.max(-1, keepdims=True))
      out[:, head] = (s / s.sum(-1, keepdims=True)) @ proj["v"][:, g]
    x = x + out.reshape(length, -1) @ t[p + "self_attn.o_proj.weight"].T
    a = _np_rms(x, t[p + "post_attention_layernorm.weight"], eps)
    gate, up = a @ t[p + "mlp.gate_proj.weight"].T, a @ t[p + "mlp.up_proj.weight"].T
    x = x + (gate / (1 + np.exp(-gate)) * up) @ t[p + "mlp.down_proj.weight"].T
  x = _np_rms(x, t["model.norm.weight"], eps)
  head_w = t["model.embed_tokens.weight" if c["tie_word_embeddings"] else "lm_head.weight"]
  logits = x @ head_w.T
  return np.concatenate([logits[:1], logits[:-1]], 0) if shift else logits


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def checkpoint(request, tmp_path_factory):
  c = {**TINY_HF, "tie_word_embeddings": request.param}
  tensors = _hf_tensors(c, np.random.default_rng(7 + request.param))
  folder = tmp_path_factory.mktemp("dream") / "ckpt"
  _write_folder(folder, c, tensors)
  return folder, c, tensors


# --------------------------------------------------------------------------------- forward ----


def test_logits_match_the_reference_with_shift_padding_and_gqa(checkpoint):
  """One forward on a left-padded batch: every real position equals the NumPy reference run on
  the unpadded row (shifted logits, GQA, q/k/v biases, tied or untied head), |Δ| ≤ 1e-4."""
  folder, c, tensors = checkpoint
  config, params = hf_dream.load_pretrained(folder)
  assert (config.n_heads, config.n_kv_heads, config.tie_embeddings) == (
      4, 2, c["tie_word_embeddings"])
  assert config.param_dtype == "float32" and config.mask_token_id == 95
  total, lengths = 11, (11, 8, 5)
  rng = np.random.default_rng(3)
  rows = [rng.integers(0, 96, n).astype(np.int32) for n in lengths]
  tokens = np.full((3, total), config.pad_token_id, np.int32)
  mask = np.zeros((3, total), np.int32)
  for b, row in enumerate(rows):
    tokens[b, total - len(row):], mask[b, total - len(row):] = row, 1
  ours = np.asarray(jax.jit(dream.forward_fn(config))(params, tokens, attention_mask=mask))
  assert ours.dtype == np.float32 and ours.shape == (3, total, 96)
  for b, row in enumerate(rows):
    ref = _np_dream(c, tensors, row)
    np.testing.assert_allclose(ours[b, total - len(row):], ref, atol=1e-4, rtol=0)
  # The comparison sees the shift: the unshifted reference is far from ours.
  unshifted = _np_dream(c, tensors, rows[0], shift=False)
  assert np.abs(ours[0, 1:] - unshifted[1:]).max() > 1e-2
  np.testing.assert_allclose(ours[0, 1:], unshifted[:-1], atol=1e-4, rtol=0)


@pytest.mark.parametrize("checkpoint", [False], indirect=True, ids=["untied"])
def test_unshifted_logits_and_original_padding_mode(checkpoint):
  """`unshifted_logits` are the HF model's rows; honor_padding=False (pads attended, positions
  0..L-1) must change a padded row's logits."""
  folder, c, tensors = checkpoint
  config, params = hf_dream.load_pretrained(folder)
  row = np.arange(3, 12, dtype=np.int32)
  padded = np.concatenate([np.full(3, config.pad_token_id, np.int32), row])[None]
  mask = (np.arange(12) >= 3).astype(np.int32)[None]

  @jax.jit
  def both(p):
    raw = dream.unshifted_logits(config, p, padded, attention_mask=mask)
    orig = dream.forward(config.replace(honor_padding=False), p, padded, attention_mask=mask)
    return raw, orig

  raw, orig = both(params)
  np.testing.assert_allclose(raw[0, 3:], _np_dream(c, tensors, row, shift=False), atol=1e-4,
                             rtol=0)
  assert float(jnp.abs(orig[0, 3:] - _np_dream(c, tensors, row)).max()) > 1e-3


def test_shift_to_targets():
  rows = jnp.arange(5.0)[None, :, None] * jnp.ones((2, 1, 3))
  np.testing.assert_array_equal(dream.shift_to_targets(rows)[0, :, 0], [0, 0, 1, 2, 3])
  key_mask = jnp.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], bool)
  out = dream.shift_to_targets(rows, key_mask)[..., 0]
  # A row's first real position keeps its own row (its predecessor is padding).
  np.testing.assert_array_equal(out, [[0, 0, 1, 2, 3], [0, 1, 2, 2, 3]])


@pytest.mark.parametrize("checkpoint", [False], indirect=True, ids=["untied"])
def test_generate_fills_every_mask(checkpoint):
  """`sampler.generate` takes `dream.forward_fn` unchanged and commits every masked position."""
  folder, _, _ = checkpoint
  config, params = hf_dream.load_pretrained(folder)
  prompt = np.array([[config.pad_token_id, 5, 6, 7], [8, 9, 10, 11]], np.int32)
  prompt_mask = np.array([[0, 1, 1, 1], [1, 1, 1, 1]], np.int32)
  scfg = sampler.SamplerConfig.for_model(config, gen_length=8, block_length=4, steps=4)
  out = np.asarray(sampler.generate(dream.forward_fn(config), params, prompt, scfg,
                                    jax.random.key(0), prompt_mask=prompt_mask))
  assert out.shape == (2, 12)
  np.testing.assert_array_equal(out[:, :4], prompt)
  assert not (out[:, 4:] == config.mask_token_id).any()
  assert ((0 <= out) & (out < config.vocab_size)).all()


# ----------------------------------------------------------------------------- config.json ----


def test_published_config_maps_to_dream_7b():
  config = hf_dream.config_from_hf(PUBLISHED_CONFIG)
  assert config == dream.dream_7b()
  assert (config.mask_token_id, config.eos_token_id, config.eot_token_id) == (
      151666, 151643, 151645)
  shapes = dream.abstract_params(config)
  assert shapes["blocks"]["k_proj"].shape == (28, 3584, 4, 128)
  assert shapes["blocks"]["q_bias"].shape == (28, 28, 128)
  total = sum(np.prod(s.shape) for s in jax.tree.leaves(shapes))
  assert total == config.num_params() == 7_615_616_512  # Qwen2.5-7B's 7.62B


@pytest.mark.parametrize("config", [dream.tiny(), dream.tiny(tie_embeddings=True,
                                                             dtype="bfloat16",
                                                             param_dtype="bfloat16"),
                                    dream.dream_7b()], ids=["tiny", "tiny-tied-bf16", "7b"])
def test_config_round_trip(config):
  written = hf_dream.config_to_hf(config)
  assert written["architectures"] == ["DreamModel"] and written["model_type"] == "Dream"
  missing = set(PUBLISHED_CONFIG) - set(written) - {"_name_or_path", "transformers_version"}
  assert not missing
  assert hf_dream.config_from_hf(json.loads(json.dumps(written))) == config


@pytest.mark.parametrize("key,value", [
    ("hidden_act", "gelu"), ("use_sliding_window", True), ("rope_scaling", {"type": "yarn"}),
    ("use_mrope", True), ("mlp_bias", True), ("attention_bias", False), ("head_dim", 64),
    ("model_type", "llada"), ("tie_word_embeddings", 1)])
def test_unsupported_config_values_name_the_key(key, value):
  with pytest.raises(ValueError, match=key) as info:
    hf_dream.config_from_hf({**PUBLISHED_CONFIG, key: value})
  assert repr(value) in str(info.value)


def test_config_errors_name_the_field():
  for field, value in (("n_kv_heads", 3), ("mask_token_id", 10**6), ("dtype", "int8")):
    with pytest.raises(ValueError, match=field):
      dream.tiny(**{field: value})
  with pytest.raises(ValueError, match="n_layers"):
    hf_dream.config_from_hf(PUBLISHED_CONFIG, n_layers=2)


# -------------------------------------------------------------------- import/export, shards ----


def test_round_trip_is_bit_exact_and_sharded(tmp_path):
  """bf16 HF folder -> sharded load on a (2, 2, 2) mesh -> save (several shards) -> the same
  tensors, bit for bit, under the same names; reload gives the same params."""
  c = {**TINY_HF, "torch_dtype": "bfloat16"}
  tensors = _hf_tensors(c, np.random.default_rng(1), dtype=ml_dtypes.bfloat16)
  _write_folder(tmp_path / "src", c, tensors)
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  config, params = hf_dream.load_pretrained(tmp_path / "src", mesh=mesh)
  assert config.param_dtype == "bfloat16"
  assert params["blocks"]["q_proj"].sharding.spec == P(None, "fsdp", "tensor", None)
  assert params["blocks"]["k_bias"].sharding.spec == P(None, "tensor", None)
  out = hf_dream.save_pretrained(tmp_path / "out", config, params, max_shard_bytes=20_000)
  index = json.loads((out / hf.INDEX_FILE).read_text())
  assert set(index["weight_map"]) == set(tensors) and len(set(index["weight_map"].values())) > 1
  for name, file in index["weight_map"].items():
    with safe_open(str(out / file), framework="numpy") as f:
      got = f.get_tensor(name)
    assert (got.dtype, got.shape, got.tobytes()) == (
        tensors[name].dtype, tensors[name].shape, tensors[name].tobytes()), name
  again_config, again = hf_dream.load_pretrained(out, mesh=mesh)
  assert again_config == config
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_missing_bias_is_named(tmp_path):
  tensors = _hf_tensors(TINY_HF, np.random.default_rng(2))
  del tensors["model.layers.1.self_attn.k_proj.bias"]
  _write_folder(tmp_path, TINY_HF, tensors)
  with pytest.raises(hf.CheckpointError, match=r"model\.layers\.1\.self_attn\.k_proj\.bias"):
    hf_dream.load_pretrained(tmp_path)


# -------------------------------------------------------------- tokenizer and chat template ----


def _tokenizer_folder(folder):
  """A miniature of the published tokenizer files: vocab.json (the 256 byte symbols and a few
  merges), merges.txt, tokenizer_config.json with added tokens after the vocabulary."""
  from tokenizers import pre_tokenizers

  symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
  merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w")]
  vocab = {s: i for i, s in enumerate(symbols)}
  for a, b in merges:
    vocab[a + b] = len(vocab)
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "vocab.json").write_text(json.dumps(vocab))
  (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
  added = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>", "<|mask|>"]
  decoder = {str(len(vocab) + i): {"content": t, "special": True, "normalized": False}
             for i, t in enumerate(added)}
  (folder / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
  return len(vocab)


def test_tokenizer_from_vocab_and_merges(tmp_path):
  base = _tokenizer_folder(tmp_path)
  tok = hf_dream.load_tokenizer(tmp_path)
  assert tok.encode("hello world").tokens == ["hello", "Ġw", "o", "r", "l", "d"]
  text = "héllo\n  wörld 123 ✓ <|im_end|>"
  assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text
  assert tok.encode("e\u0301").ids == tok.encode("é").ids  # NFC, as DreamTokenizer does
  assert tok.encode("<|mask|>").ids == [base + 4]
  # config.json without ids: the tokenizer supplies mask and eot (<|mask|>, <|im_end|>).
  hf_config = {k: v for k, v in TINY_HF.items() if k not in ("mask_token_id", "eot_token_id")}
  config = hf_dream.config_from_hf({**hf_config, "vocab_size": base + 8}, tokenizer=tmp_path)
  assert (config.mask_token_id, config.eot_token_id) == (base + 4, base + 2)


def test_chat_template(tmp_path):
  base = _tokenizer_folder(tmp_path)
  assert hf_dream.apply_chat_template("hi there") == (
      "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
      "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n")
  tok = hf_dream.load_tokenizer(tmp_path)
  ids = hf_dream.encode_chat(tok, "hello")
  assert ids[0] == base + 1 and ids.count(base + 2) == 2  # <|im_start|> first, two <|im_end|>
  assert tok.decode(ids, skip_special_tokens=False) == hf_dream.apply_chat_template("hello")
  with pytest.raises(ValueError, match="im_start"):
    hf_dream.encode_chat(_plain_tokenizer(), "x")


def _plain_tokenizer():
  from mdpo_jax.data import tokenizer as char_tokenizer
  return char_tokenizer.build_char_tokenizer("abc ")
