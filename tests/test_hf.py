"""Hugging Face interop: config mapping, safetensors save/load, the HF weight layout, tokenizer.

Nothing is downloaded: every checkpoint and tokenizer is built in tmp_path. The layout test
writes a checkpoint by hand (PyTorch [out, in] weights under the published names) and checks
the loaded model against a float64 numpy re-implementation of the reference PyTorch forward.
"""

import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from mdpo_jax import parallel
from mdpo_jax.models import hf, llada

P = "model.transformer."

# The published GSAI-ML/LLaDA-8B-Instruct config.json (values as released).
PUBLISHED_CONFIG = {
    "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0,
    "architectures": ["LLaDAModelLM"], "attention_dropout": 0.0, "attention_layer_norm": False,
    "attention_layer_norm_with_affine": True,
    "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                 "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
                 "AutoModel": "modeling_llada.LLaDAModelLM"},
    "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 4096,
    "embedding_dropout": 0.0, "embedding_size": 126464, "eos_token_id": 126081,
    "flash_attention": False, "include_bias": False, "include_qkv_bias": False,
    "init_cutoff_factor": None, "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02,
    "input_emb_norm": False, "layer_norm_type": "rms", "layer_norm_with_affine": True,
    "mask_token_id": 126336, "max_sequence_length": 4096, "mlp_hidden_size": 12288,
    "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None, "n_heads": 32,
    "n_kv_heads": 32, "n_layers": 32, "pad_token_id": 126081, "precision": "amp_bf16",
    "residual_dropout": 0.0, "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True,
    "rope_theta": 500000.0, "scale_logits": False, "transformers_version": "4.46.3",
    "use_cache": False, "vocab_size": 126464, "weight_tying": False,
}


def _bits(x) -> tuple[str, tuple, bytes]:
  a = np.asarray(x)
  return a.dtype.name, a.shape, a.tobytes()


def _assert_bit_equal(a, b):
  la = jax.tree_util.tree_leaves_with_path(a)
  lb = jax.tree_util.tree_leaves_with_path(b)
  assert [jax.tree_util.keystr(p) for p, _ in la] == [jax.tree_util.keystr(p) for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    assert _bits(x) == _bits(y), jax.tree_util.keystr(path)


# ----------------------------------------------------------------------------------------------
# config.json
# ----------------------------------------------------------------------------------------------


def test_published_config_maps_to_llada_8b():
  config = hf.config_from_hf(PUBLISHED_CONFIG)
  assert config == llada.llada_8b()  # bf16 default; bos/eot are LLaDA's (absent in the file)
  # bos_token_id null (as some copies of the file have it) is the same as absent.
  assert hf.config_from_hf({**PUBLISHED_CONFIG, "bos_token_id": None}) == llada.llada_8b()


@pytest.mark.parametrize("config", [
    llada.tiny(n_kv_heads=2),
    llada.tiny(tie_embeddings=True, param_dtype="bfloat16", dtype="bfloat16"),
    llada.llada_8b(),
], ids=["tiny-gqa", "tiny-tied-bf16", "8b"])
def test_config_round_trip(config):
  written = hf.config_to_hf(config)
  assert written["architectures"] == ["LLaDAModelLM"]
  assert written["model_type"] == "llada"
  assert written["auto_map"] == PUBLISHED_CONFIG["auto_map"]
  # Every key of the published file is written (the reference defaults differ from LLaDA's).
  missing = set(PUBLISHED_CONFIG) - set(written) - {"precision", "transformers_version"}
  assert not missing
  assert hf.config_from_hf(json.loads(json.dumps(written))) == config


def test_config_overrides_and_dtype():
  config = hf.config_from_hf(PUBLISHED_CONFIG, dtype="float32", honor_padding=False)
  assert (config.param_dtype, config.dtype, config.honor_padding) == ("float32", "float32", False)
  with pytest.raises(ValueError, match="d_model"):
    hf.config_from_hf(PUBLISHED_CONFIG, d_model=8)
  with pytest.raises(ValueError, match="float64"):
    hf.config_from_hf(PUBLISHED_CONFIG, dtype="float64")


@pytest.mark.parametrize("key,value", [
    ("block_type", "sequential"), ("activation_type", "swiglu"), ("layer_norm_type", "default"),
    ("layer_norm_type", "gemma_rms"), ("alibi", True), ("rope", False),
    ("rope_full_precision", False), ("include_bias", True), ("include_qkv_bias", True),
    ("bias_for_layer_norm", True), ("attention_layer_norm", True), ("scale_logits", True),
    ("input_emb_norm", True), ("block_group_size", 2), ("clip_qkv", 8.0),
    ("layer_norm_with_affine", False), ("model_type", "Dream"), ("multi_query_attention", True),
])
def test_unsupported_config_values_name_the_key(key, value):
  with pytest.raises(ValueError, match=key) as info:
    hf.config_from_hf({**PUBLISHED_CONFIG, key: value})
  assert repr(value) in str(info.value)


def test_absent_keys_take_the_reference_defaults():
  config = {k: v for k, v in PUBLISHED_CONFIG.items() if k != "block_type"}
  with pytest.raises(ValueError, match="block_type='sequential'"):
    hf.config_from_hf(config)
  # weight_tying defaults to true in the reference; embedding_size absent -> vocab_size rows.
  dropped = ("weight_tying", "embedding_size")
  config = {k: v for k, v in PUBLISHED_CONFIG.items() if k not in dropped}
  assert hf.config_from_hf(config).tie_embeddings is True
  assert hf.config_from_hf(config).vocab_size == 126464
  # embedding_size > vocab_size: the embedding rows set our vocabulary.
  assert hf.config_from_hf({**PUBLISHED_CONFIG, "embedding_size": 126592}).vocab_size == 126592
  # multi_query_attention consistent with n_kv_heads is fine; n_kv_heads null follows it.
  assert hf.config_from_hf({**PUBLISHED_CONFIG, "multi_query_attention": False}).n_kv_heads == 32
  mqa = {**PUBLISHED_CONFIG, "multi_query_attention": True, "n_kv_heads": None}
  assert hf.config_from_hf(mqa).n_kv_heads == 1


# ----------------------------------------------------------------------------------------------
# save -> load
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config,max_shard_bytes", [
    (llada.tiny(n_kv_heads=2), None),
    (llada.tiny(param_dtype="bfloat16", dtype="bfloat16"), 6000),
    (llada.tiny(tie_embeddings=True), None),
], ids=["f32-single", "bf16-sharded", "f32-tied"])
def test_save_load_round_trip_is_bit_exact(tmp_path, config, max_shard_bytes):
  params = llada.init_params(config, jax.random.key(1))
  # Norm weights are ones at init; perturb them so a swapped norm would be caught.
  params["blocks"]["ff_norm"] = params["blocks"]["ff_norm"] * 1.5 + 0.25
  path = tmp_path / "ckpt"
  hf.save_pretrained(path, config, params, max_shard_bytes=max_shard_bytes)
  files = sorted(os.listdir(path))
  if max_shard_bytes is None:
    assert files == ["config.json", "model.safetensors"]
  else:
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and set(shards) <= set(files)
    names = set()
    for shard in shards:  # safetensors' own reader accepts every streamed shard.
      with safe_open(str(path / shard), framework="numpy") as f:
        names |= set(f.keys())
        assert all(index["weight_map"][n] == shard for n in f.keys())
    assert names == set(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(
        np.asarray(x).nbytes for x in jax.tree.leaves(params))
  loaded_config, loaded = hf.load_pretrained(path)
  assert loaded_config == config
  _assert_bit_equal(params, loaded)
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_load_with_mesh_places_shards(tmp_path):
  config = llada.tiny(n_kv_heads=2)
  params = llada.init_params(config, jax.random.key(2))
  hf.save_pretrained(tmp_path / "ckpt", config, params, max_shard_bytes=20000)
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  _, loaded = hf.load_pretrained(tmp_path / "ckpt", mesh=mesh)
  expected = llada.param_shardings(config, mesh)
  for (path, leaf), want in zip(jax.tree_util.tree_leaves_with_path(loaded),
                                jax.tree.leaves(expected)):
    assert leaf.sharding.is_equivalent_to(want, leaf.ndim), jax.tree_util.keystr(path)
  assert loaded["blocks"]["q_proj"].sharding.spec[1:3] == ("fsdp", "tensor")
  _assert_bit_equal(params, loaded)
  # Custom rules that split head_dim (the inner factor of an HF H·E axis) across devices.
  rules = tuple((name, None if name == "heads" else ("tensor" if name == "head_dim" else axis))
                for name, axis in parallel.DEFAULT_RULES)
  _, split = hf.load_pretrained(tmp_path / "ckpt", mesh=mesh, rules=rules)
  assert split["blocks"]["q_proj"].sharding.spec[1:] == ("fsdp", None, "tensor")
  assert split["blocks"]["attn_out"].sharding.spec[1:] == (None, "tensor", "fsdp")
  _assert_bit_equal(params, split)
  # Casting on load: bf16 values are the round-to-nearest of the float32 ones.
  cast_config, cast = hf.load_pretrained(tmp_path / "ckpt", dtype="bfloat16", mesh=mesh)
  assert cast_config.param_dtype == "bfloat16"
  want = np.asarray(params["blocks"]["ff_out"]).astype(ml_dtypes.bfloat16)
  assert _bits(cast["blocks"]["ff_out"]) == _bits(want)


def test_save_is_atomic_and_guards_existing_folders(tmp_path, monkeypatch):
  config = llada.tiny()
  params = llada.init_params(config, jax.random.key(3))
  path = tmp_path / "ckpt"
  hf.save_pretrained(path, config, params)
  with pytest.raises(FileExistsError, match="overwrite"):
    hf.save_pretrained(path, config, params)

  calls = []

  def crash(file, items):
    calls.append(file)
    raise OSError("disk full")

  monkeypatch.setattr(hf, "_write_safetensors", crash)
  with pytest.raises(OSError, match="disk full"):
    hf.save_pretrained(tmp_path / "new", config, params)
  with pytest.raises(OSError, match="disk full"):
    hf.save_pretrained(path, config, params, overwrite=True)
  monkeypatch.undo()
  assert calls and not (tmp_path / "new").exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # old kept, no debris
  _assert_bit_equal(params, hf.load_pretrained(path)[1])

  other = llada.init_params(config, jax.random.key(4))
  hf.save_pretrained(path, config, other, overwrite=True)
  _assert_bit_equal(other, hf.load_pretrained(path)[1])
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


# ----------------------------------------------------------------------------------------------
# The HF layout, checked independently.
# ----------------------------------------------------------------------------------------------


def _hf_tensors(config, params) -> dict[str, np.ndarray]:
  """PyTorch-layout weights written out from our params, index by index (no shared code)."""
  c = config
  d, h, k, e, f = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.mlp_hidden_size
  p = jax.tree.map(np.asarray, params)
  out = {P + "wte.weight": p["wte"], P + "ln_f.weight": p["ln_f"],
         P + "ff_out.weight": p["lm_head"].T.copy()}
  for i in range(c.n_layers):
    b = {name: value[i] for name, value in p["blocks"].items()}
    q = np.zeros((h * e, d), np.float32)
    for head in range(h):
      for j in range(e):
        q[head * e + j, :] = b["q_proj"][:, head, j]  # row = output feature head*E + j
    kk = np.zeros((k * e, d), np.float32)
    vv = np.zeros((k * e, d), np.float32)
    for head in range(k):
      for j in range(e):
        kk[head * e + j, :] = b["k_proj"][:, head, j]
        vv[head * e + j, :] = b["v_proj"][:, head, j]
    o = np.zeros((d, h * e), np.float32)
    for head in range(h):
      for j in range(e):
        o[:, head * e + j] = b["attn_out"][head, j, :]  # column = input feature head*E + j
    blk = P + f"blocks.{i}."
    out.update({
        blk + "attn_norm.weight": b["attn_norm"], blk + "ff_norm.weight": b["ff_norm"],
        blk + "q_proj.weight": q, blk + "k_proj.weight": kk, blk + "v_proj.weight": vv,
        blk + "attn_out.weight": o, blk + "ff_proj.weight": b["ff_proj"].T.copy(),
        blk + "up_proj.weight": b["up_proj"].T.copy(), blk + "ff_out.weight": b["ff_out"].T.copy(),
    })
  return out


def _reference_forward(config, w: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
  """float64 numpy transcription of the reference LLaDA PyTorch forward (nn.Linear: x @ W.T)."""
  c = config
  h_, k_, e = c.n_heads, c.n_kv_heads, c.head_dim
  w = {name: value.astype(np.float64) for name, value in w.items()}

  def rms(x, weight):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + c.rms_norm_eps) * weight

  def rope(x):  # x [B, nh, T, E]
    t = x.shape[2]
    inv_freq = 1.0 / c.rope_theta ** (np.arange(0, e, 2) / e)
    freqs = np.arange(t)[:, None] * inv_freq[None]
    pos = np.concatenate([freqs, freqs], -1)
    x1, x2 = x[..., : e // 2], x[..., e // 2:]
    return x * np.cos(pos) + np.concatenate([-x2, x1], -1) * np.sin(pos)

  x = w[P + "wte.weight"][tokens]
  b, t, d = x.shape
  for i in range(c.n_layers):
    blk = P + f"blocks.{i}."
    hn = rms(x, w[blk + "attn_norm.weight"])
    q = (hn @ w[blk + "q_proj.weight"].T).reshape(b, t, h_, e).transpose(0, 2, 1, 3)
    k = (hn @ w[blk + "k_proj.weight"].T).reshape(b, t, k_, e).transpose(0, 2, 1, 3)
    v = (hn @ w[blk + "v_proj.weight"].T).reshape(b, t, k_, e).transpose(0, 2, 1, 3)
    q, k = rope(q), rope(k)
    k, v = np.repeat(k, h_ // k_, axis=1), np.repeat(v, h_ // k_, axis=1)  # repeat_interleave
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(e)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    att = (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, d)
    x = x + att @ w[blk + "attn_out.weight"].T
    hn = rms(x, w[blk + "ff_norm.weight"])
    gate = hn @ w[blk + "ff_proj.weight"].T
    up = hn @ w[blk + "up_proj.weight"].T
    x = x + (gate / (1 + np.exp(-gate)) * up) @ w[blk + "ff_out.weight"].T
  return rms(x, w[P + "ln_f.weight"]) @ w[P + "ff_out.weight"].T


def _write_hand_checkpoint(path, config, tensors, hf_config=None):
  path.mkdir(parents=True, exist_ok=True)
  (path / "config.json").write_text(json.dumps(hf_config or hf.config_to_hf(config)))
  save_file(dict(tensors), str(path / "model.safetensors"), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def gqa_model():
  config = llada.tiny(n_kv_heads=2, n_layers=2)
  params = llada.init_params(config, jax.random.key(5))
  # Non-trivial norms so a mixed-up norm mapping changes the logits.
  rng = np.random.default_rng(0)
  for name in ("attn_norm", "ff_norm"):
    params["blocks"][name] = params["blocks"][name] + rng.normal(
        0, 0.3, params["blocks"][name].shape).astype(np.float32)
  params["ln_f"] = params["ln_f"] + rng.normal(0, 0.3, params["ln_f"].shape).astype(np.float32)
  params = jax.tree.map(lambda x: x * 8.0 if x.ndim > 1 else x, params)  # sharper attention
  return config, params


def test_hand_written_hf_checkpoint_loads_into_our_layout(tmp_path, gqa_model):
  config, params = gqa_model
  tensors = _hf_tensors(config, params)
  _write_hand_checkpoint(tmp_path / "ckpt", config, tensors)
  loaded_config, loaded = hf.load_pretrained(tmp_path / "ckpt")
  assert loaded_config == config
  _assert_bit_equal(params, loaded)

  tokens = np.random.default_rng(1).integers(0, config.vocab_size, (2, 7))
  ref_config = config.replace(honor_padding=False)
  ours = np.asarray(llada.forward(ref_config, loaded, tokens))
  reference = _reference_forward(config, tensors, tokens)
  assert np.abs(reference).max() > 1.0  # logits are not degenerate
  np.testing.assert_allclose(ours, reference, atol=2e-4, rtol=2e-4)

  # Our writer produces exactly the hand-made tensors.
  hf.save_pretrained(tmp_path / "ours", config, loaded)
  with safe_open(str(tmp_path / "ours" / "model.safetensors"), framework="numpy") as f:
    assert set(f.keys()) == set(tensors)
    for name in tensors:
      assert _bits(f.get_tensor(name)) == _bits(tensors[name]), name


def test_hand_written_bf16_checkpoint_keeps_bits(tmp_path, gqa_model):
  config, params = gqa_model
  tensors = {n: t.astype(ml_dtypes.bfloat16) for n, t in _hf_tensors(config, params).items()}
  hf_config = {k: v for k, v in hf.config_to_hf(config).items() if k != "torch_dtype"}
  _write_hand_checkpoint(tmp_path / "ckpt", config, tensors, hf_config)
  loaded_config, loaded = hf.load_pretrained(tmp_path / "ckpt")
  assert (loaded_config.param_dtype, loaded_config.dtype) == ("bfloat16", "bfloat16")
  q = np.asarray(loaded["blocks"]["q_proj"])[1]  # [D, H, E]
  raw = tensors[P + "blocks.1.q_proj.weight"]   # [H*E, D]
  e = config.head_dim
  for head in range(config.n_heads):
    assert _bits(q[:, head, :]) == _bits(raw[head * e:(head + 1) * e].T.copy())


# ----------------------------------------------------------------------------------------------
# Clear errors.
# ----------------------------------------------------------------------------------------------


def test_missing_tensor_is_named(tmp_path, gqa_model):
  config, params = gqa_model
  tensors = _hf_tensors(config, params)
  del tensors[P + "blocks.1.up_proj.weight"]
  _write_hand_checkpoint(tmp_path / "ckpt", config, tensors)
  with pytest.raises(hf.CheckpointError, match=r"missing.*'model\.transformer\.blocks\.1\.up_proj"
                                                r"\.weight' \(expected shape \[64, 32\]\)"):
    hf.load_pretrained(tmp_path / "ckpt")


def test_wrong_shape_names_tensor_and_both_shapes(tmp_path, gqa_model):
  config, params = gqa_model
  tensors = _hf_tensors(config, params)
  name = P + "blocks.0.k_proj.weight"
  tensors[name] = tensors[name].T.copy()  # [D, K*E] instead of [K*E, D]
  _write_hand_checkpoint(tmp_path / "ckpt", config, tensors)
  with pytest.raises(hf.CheckpointError) as info:
    hf.load_pretrained(tmp_path / "ckpt")
  message = str(info.value)
  assert name in message and "expected shape [16, 32]" in message and "got [32, 16]" in message


def test_unexpected_tensor_is_named(tmp_path, gqa_model):
  config, params = gqa_model
  tensors = _hf_tensors(config, params)
  tensors[P + "blocks.0.attn_out.bias"] = np.zeros(config.d_model, np.float32)
  _write_hand_checkpoint(tmp_path / "ckpt", config, tensors)
  with pytest.raises(hf.CheckpointError, match=r"unexpected.*blocks\.0\.attn_out\.bias"):
    hf.load_pretrained(tmp_path / "ckpt")


def test_unsupported_config_in_folder_is_named(tmp_path, gqa_model):
  config, params = gqa_model
  hf_config = {**hf.config_to_hf(config), "scale_logits": True}
  _write_hand_checkpoint(tmp_path / "ckpt", config, _hf_tensors(config, params), hf_config)
  with pytest.raises(ValueError, match="scale_logits=True"):
    hf.load_pretrained(tmp_path / "ckpt")


def test_missing_shard_and_missing_files(tmp_path):
  config = llada.tiny()
  params = llada.init_params(config, jax.random.key(6))
  path = hf.save_pretrained(tmp_path / "ckpt", config, params, max_shard_bytes=8000)
  index = json.loads((path / "model.safetensors.index.json").read_text())
  victim = sorted(set(index["weight_map"].values()))[1]
  os.remove(path / victim)
  with pytest.raises(FileNotFoundError, match=victim):
    hf.load_pretrained(path)
  os.remove(path / "config.json")
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.load_pretrained(path)
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "config.json").write_text(json.dumps(hf.config_to_hf(config)))
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    hf.load_pretrained(empty)


def test_save_rejects_params_that_do_not_match_config(tmp_path):
  config = llada.tiny()
  params = llada.init_params(config, jax.random.key(7))
  with pytest.raises(ValueError, match="lm_head"):
    hf.save_pretrained(tmp_path / "a", config.replace(tie_embeddings=True), params)
  with pytest.raises(ValueError, match=r"params\['(wte|lm_head)'\]: shape .* does not match"):
    hf.save_pretrained(tmp_path / "b", config.replace(vocab_size=96), params)
  assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------
# Tokenizer and chat template.
# ----------------------------------------------------------------------------------------------

SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>", "<|mdm_mask|>"]


def _tiny_tokenizer():
  from tokenizers import Tokenizer, models, pre_tokenizers
  words = ["[UNK]", "user", "assistant", "what", "is", "2", "+", "?"]
  vocab = {w: i for i, w in enumerate(words + SPECIALS)}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(SPECIALS)
  return tok, vocab


def test_chat_template_matches_reference_string():
  expected = ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n"
              "What is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
  assert hf.apply_chat_template("  What is 2+2?\n") == expected
  assert hf.apply_chat_template("hi", bos_token="") == (
      "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_tokenizer_round_trip_and_encode_chat(tmp_path):
  tok, vocab = _tiny_tokenizer()
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    hf.load_tokenizer(tmp_path)
  tok.save(str(tmp_path / "tokenizer.json"))
  loaded = hf.load_tokenizer(tmp_path)
  assert loaded.encode("what is 2 + 2 ?").ids == [vocab[w] for w in "what is 2 + 2 ?".split()]
  ids = hf.encode_chat(loaded, " what is 2+2? ")
  expected = ["<|startoftext|>", "<|start_header_id|>", "user", "<|end_header_id|>", "what", "is",
              "2", "+", "2", "?", "<|eot_id|>", "<|start_header_id|>", "assistant",
              "<|end_header_id|>"]
  assert ids == [vocab[w] for w in expected]
  assert hf.load_tokenizer(tmp_path / "tokenizer.json").get_vocab_size() == len(vocab)
