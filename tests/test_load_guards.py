"""Loading guards (the "Reliability" issue): special ids a small checkpoint leaves null, a tokenizer
the model's embedding cannot hold, NaN/Inf weights, and broken files — each found at load time with
a one-line message that names the file (or a warning that names the tensor).

Every checkpoint, tokenizer and orbax run is built in tmp_path from `llada.tiny` (64 rows).
"""

import json
import logging

import jax
import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from configs import base as base_config
from mdpo_jax import parallel
from mdpo_jax.models import hf, llada
from mdpo_jax.training import checkpoint, setup

LLADA_TOKENS = ["<|startoftext|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>", "<|mdm_mask|>"]


def _tokenizer(n_words: int, specials=LLADA_TOKENS) -> Tokenizer:
  """Words w0..w{n-1}, then `specials` (ids n, n+1, ...): n + len(specials) ids."""
  vocab = {f"w{i}": i for i in range(n_words)}
  vocab.update({s: n_words + j for j, s in enumerate(specials)})
  tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(list(specials))
  return tok


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
  """A tiny checkpoint as `save_pretrained` writes it (every id set)."""
  cfg = llada.tiny()
  params = llada.init_params(cfg, jax.random.key(0))
  return hf.save_pretrained(tmp_path_factory.mktemp("plain") / "ckpt", cfg, params), cfg, params


@pytest.fixture(scope="module")
def small(plain, tmp_path_factory):
  """The tiny checkpoint with a config.json shaped like LLaDA's published one: bos_token_id null,
  no eot_token_id, eos/pad/mask set (here inside the 64-row vocabulary)."""
  folder, cfg, params = plain
  folder = _copy(folder, tmp_path_factory.mktemp("small") / "ckpt")
  hf_config = json.loads((folder / "config.json").read_text())
  hf_config["bos_token_id"] = None
  del hf_config["eot_token_id"]
  (folder / "config.json").write_text(json.dumps(hf_config))
  return folder, cfg, params, hf_config


def _copy(folder, dest):
  dest.mkdir()
  for p in folder.iterdir():
    (dest / p.name).write_bytes(p.read_bytes())
  return dest


# ----------------------------------------------------------------------------------------------
# 1. Special ids: null ones do not block loading; the tokenizer supplies them.
# ----------------------------------------------------------------------------------------------


def test_null_bos_small_vocab_loads_with_eos_in_place(small, caplog):
  folder, cfg, params, _ = small
  with caplog.at_level(logging.WARNING):
    loaded_cfg, loaded = hf.load_pretrained(folder)   # was: "bos_token_id=126080 ... outside"
  assert (loaded_cfg.mask_token_id, loaded_cfg.eos_token_id) == (cfg.mask_token_id,
                                                                  cfg.eos_token_id)
  # No tokenizer, LLaDA defaults (126080/126348) do not fit 64 rows: EOS stands in.
  assert loaded_cfg.bos_token_id == loaded_cfg.eot_token_id == cfg.eos_token_id
  jax.tree.map(np.testing.assert_array_equal, loaded, params)
  text = caplog.text
  assert "bos_token_id is null" in text and "eot_token_id is absent" in text
  assert str(folder / "config.json") in text and "using eos_token_id=61" in text


def test_null_ids_come_from_the_folder_tokenizer(small, tmp_path):
  folder, cfg, _, _ = small
  folder = _copy(folder, tmp_path / "with_tok")
  tok = _tokenizer(40)   # 46 ids: fewer than the 64 rows is fine (a padded embedding)
  tok.save(str(folder / "tokenizer.json"))
  loaded_cfg, _ = hf.load_pretrained(folder)
  assert loaded_cfg.bos_token_id == tok.token_to_id("<|startoftext|>") == 40
  assert loaded_cfg.eot_token_id == tok.token_to_id("<|eot_id|>") == 44
  # Ids config.json sets win over the tokenizer's.
  assert (loaded_cfg.eos_token_id, loaded_cfg.mask_token_id) == (61, 63)


def test_missing_mask_id_names_the_key_and_both_files(small, tmp_path):
  folder, *_ = small
  folder = _copy(folder, tmp_path / "no_mask")
  hf_config = json.loads((folder / "config.json").read_text())
  hf_config["mask_token_id"] = None
  (folder / "config.json").write_text(json.dumps(hf_config))
  _tokenizer(40, specials=LLADA_TOKENS[:5]).save(str(folder / "tokenizer.json"))
  with pytest.raises(ValueError) as info:
    hf.load_pretrained(folder)
  message = str(info.value)
  assert "\n" not in message
  assert message == (
      f"{folder / 'config.json'}: mask_token_id is null, tokenizer {folder / 'tokenizer.json'} "
      "has no "
      "'<|mdm_mask|>' token, and the LLaDA default 126336 is outside the vocabulary [0, 64); "
      f"set mask_token_id in {folder / 'config.json'} (the sampler, losses and decoding need it)")


def test_chat_template_names_a_missing_bos_token():
  tok = _tokenizer(8, specials=LLADA_TOKENS[1:])   # no <|startoftext|>
  with pytest.raises(ValueError, match=r"^the chat template needs token\(s\) the tokenizer does "
                                       r"not define: BOS \(bos_token_id\) '<\|startoftext\|>'; "):
    hf.encode_chat(tok, "w1 w2")
  assert hf.encode_chat(tok, "w1", bos_token="")[0] == tok.token_to_id("<|start_header_id|>")


# ----------------------------------------------------------------------------------------------
# 2. A tokenizer whose ids the embedding cannot hold is an error (ids were clamped before).
# ----------------------------------------------------------------------------------------------


def test_tokenizer_larger_than_the_embedding_is_an_error(small, tmp_path):
  folder, *_ = small
  folder = _copy(folder, tmp_path / "big_tok")
  _tokenizer(70).save(str(folder / "tokenizer.json"))   # 76 ids > 64 rows
  want = (f"tokenizer {folder / 'tokenizer.json'} has token ids up to 75 (76 ids) but "
          f"{folder / 'config.json'} gives the model 64 embedding rows (embedding_size/vocab_size)"
          "; expected a tokenizer with at most 64 ids, such as this checkpoint's own tokenizer.json")
  with pytest.raises(ValueError) as info:
    hf.load_pretrained(folder)
  assert str(info.value) == want
  # Through a run's setup, with data.tokenizer pointing elsewhere: that file is named.
  (folder / "tokenizer.json").unlink()
  other = tmp_path / "other.json"
  _tokenizer(70).save(str(other))
  c = base_config.get_config()
  c.model.hf_checkpoint, c.data.tokenizer = str(folder), str(other)
  mesh = parallel.mesh_from_config(c.mesh)
  with pytest.raises(ValueError, match=rf"^tokenizer {other} has token ids up to 75 \(76 ids\)"):
    setup.load_model(c, setup.make_tokenizer(c), mesh, jax.random.key(0))
  c.data.tokenizer = "char"   # 100 ids, the char tokenizer object: no file to name
  with pytest.raises(ValueError, match=r"^the given tokenizer object has token ids up to 99 "
                                       r"\(100 ids\) but .*config\.json gives the model 64"):
    setup.load_model(c, setup.make_tokenizer(c), mesh, jax.random.key(0))


def test_run_model_has_a_row_for_every_tokenizer_id(tmp_path):
  """A tokenizer.json whose ids have gaps: the model gets max id + 1 rows, not the token count
  (a table of `count` rows would clamp the ids above it)."""
  tok = Tokenizer(models.WordLevel({"w0": 0, "w1": 1, "w50": 50}, unk_token="w0"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(LLADA_TOKENS)   # ids 3..8
  assert tok.get_vocab_size(with_added_tokens=True) == 9 and tok.encode("w50").ids == [50]
  tok.save(str(tmp_path / "tokenizer.json"))
  c = base_config.get_config()
  c.data.tokenizer = str(tmp_path / "tokenizer.json")
  cfg = setup.model_config(c, setup.make_tokenizer(c))
  assert cfg.vocab_size == 51 and cfg.mask_token_id == tok.token_to_id("<|mdm_mask|>")


# ----------------------------------------------------------------------------------------------
# 3. NaN/Inf weights: a warning naming the tensor.
# ----------------------------------------------------------------------------------------------


def test_nonfinite_safetensors_weights_are_named(small, tmp_path, caplog):
  folder, cfg, params, _ = small
  bad = jax.tree.map(np.array, params)
  bad["blocks"]["ff_out"][1, 3, 5] = np.nan
  bad["wte"][2, 0] = np.inf
  path = hf.save_pretrained(tmp_path / "nan", cfg, bad)
  with caplog.at_level(logging.WARNING):
    _, loaded = hf.load_pretrained(path)
  assert np.isnan(np.asarray(loaded["blocks"]["ff_out"])[1, 3, 5])   # loaded as stored
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert warnings == [
      f"checkpoint {path}: 2 tensor(s) hold NaN/Inf values: 'model.transformer.wte.weight' "
      "(params['wte']), 'model.transformer.blocks.1.ff_out.weight' (params['blocks']['ff_out'][1])"]
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    hf.load_pretrained(hf.save_pretrained(tmp_path / "ok", cfg, params))
  assert not [r for r in caplog.records if "NaN" in r.getMessage()]


def test_nonfinite_orbax_params_are_named(tmp_path, caplog):
  cfg = llada.tiny()
  mesh = parallel.make_mesh(data=-1, fsdp=1, tensor=1)
  params = jax.tree.map(np.array, llada.init_params(cfg, jax.random.key(1)))
  params["blocks"]["q_proj"][1, 0, 0, 0] = np.nan
  saver = checkpoint.Checkpointer(tmp_path / "checkpoints", async_save=False)
  saver.save(3, {"params": params}, config={"model": {"lora_rank": 0}})
  saver.close()
  with caplog.at_level(logging.WARNING):
    restored = setup.load_run_params(tmp_path / "checkpoints", cfg, mesh)
  assert np.isnan(np.asarray(restored["blocks"]["q_proj"])[1, 0, 0, 0])
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert warnings == [f"model.init_checkpoint={tmp_path / 'checkpoints'} (step 3): 1 "
                      "parameter(s) hold NaN/Inf values: params['blocks']['q_proj'] (layers [1])"]


# ----------------------------------------------------------------------------------------------
# 4. Broken files: one-line ValueError / FileNotFoundError naming the path.
# ----------------------------------------------------------------------------------------------


def _one_line_error(kind, fn, *args):
  with pytest.raises(kind) as info:
    fn(*args)
  message = str(info.value)
  assert "\n" not in message
  return message


@pytest.mark.parametrize("keep", [0, 20, 0.5, -10], ids=["empty", "header", "half", "tail"])
def test_truncated_safetensors_names_the_file(plain, tmp_path, keep):
  folder, *_ = plain
  folder = _copy(folder, tmp_path / "trunc")
  data = (folder / "model.safetensors").read_bytes()
  n = int(len(data) * keep) if isinstance(keep, float) else keep % len(data) if keep else 0
  (folder / "model.safetensors").write_bytes(data[:n])
  message = _one_line_error(ValueError, hf.load_pretrained, folder)
  assert message.startswith(f"safetensors file {folder / 'model.safetensors'} ({n} bytes) "
                            "cannot be read: Error while deserializing header: ")
  assert message.endswith("; expected a complete safetensors file (truncated download or "
                          "interrupted copy? fetch or save it again)")


def test_broken_json_and_tokenizer_files_name_the_file(plain, tmp_path):
  folder, *_ = plain
  folder = _copy(folder, tmp_path / "broken")
  config = folder / "config.json"
  good = config.read_bytes()
  config.write_bytes(b"\xff\xfe binary")
  assert _one_line_error(ValueError, hf.load_pretrained, folder).startswith(
      f"checkpoint config: {config} is not valid JSON (")
  config.write_text('{"d_model": 32,')
  assert _one_line_error(ValueError, hf.load_pretrained, folder) == (
      f"checkpoint config: {config} is not valid JSON (Expecting property name enclosed in "
      "double quotes: line 1 column 16 (char 15)); expected a JSON object")
  config.write_bytes(good)
  (folder / "model.safetensors.index.json").write_text("[]")
  assert _one_line_error(ValueError, hf.load_pretrained, folder) == (
      f"checkpoint index: {folder / 'model.safetensors.index.json'} must hold a JSON object, "
      "got list")
  (folder / "model.safetensors.index.json").unlink()
  tokenizer = folder / "tokenizer.json"
  assert _one_line_error(FileNotFoundError, hf.load_tokenizer, folder) == (
      f"no tokenizer.json at {tokenizer}: a fast-tokenizer file is required (LLaDA checkpoints "
      "ship one; slow tokenizers are not supported)")
  tokenizer.write_text('{"version": "1.0"')
  message = _one_line_error(ValueError, hf.load_tokenizer, folder)
  assert message.startswith(f"tokenizer file {tokenizer} cannot be read (")
  assert message.endswith("); expected a Hugging Face fast-tokenizer JSON (tokenizer.json)")
  # load_pretrained reads the folder's tokenizer.json too (for ids and the vocabulary check).
  assert _one_line_error(ValueError, hf.load_pretrained, folder) == message
