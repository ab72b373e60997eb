"""A Dream model selected by `model.family = "dream"` through the trainers, the evaluation and
`python -m mdpo_jax.generate` (issue 19, item 4): the same code paths as LLaDA, with Dream's
(shifted) forward underneath."""

import json

import jax
import numpy as np
import pytest

from configs import countdown_tiny_mdpo
from mdpo_jax import tasks
from mdpo_jax.data import pipeline
from mdpo_jax.diffusion import losses
from mdpo_jax.models import dream, families, hf_dream
from mdpo_jax.sampling.sampler import SamplerConfig, generate
from mdpo_jax.training import metrics, rl_loop, setup, sft_loop
from run_helpers import digit_share, tiny_run, use_reward
from test_generate_cli import _main   # `generate.main` in this process

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:qwix.*")


def _dream_run(trainer):
  c = tiny_run(countdown_tiny_mdpo.get_config())
  c.trainer = trainer
  c.model.family = "dream"
  c.train.log_every = 1
  c.rl.prompts_per_update, c.rl.group_size, c.rl.top_k = 2, 4, 2
  c.rl.gen_length, c.rl.steps, c.rl.block_lengths, c.rl.micro_batch = 8, 4, (8,), 8
  return c


def _logged(workdir):
  return [r for r in metrics.read_jsonl(workdir / "metrics.jsonl") if "loss" in r]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("dream_sft")
  c = _dream_run("sft")
  c.train.num_steps, c.train.checkpoint_every, c.optim.warmup_steps = 2, 2, 1
  c.task.eval_size = 0   # no end-of-run evaluation here: the MDPO run below has it
  return c, workdir, sft_loop.train(c, workdir)


def test_sft_trains_dream_with_its_shifted_forward(sft_run):
  c, workdir, result = sft_run
  cfg = result["model_config"]
  assert isinstance(cfg, dream.DreamConfig)
  # The first logged loss is `sft_loss` with `dream.forward_fn` on the first batch, from the
  # run's initial params (`dream.init_sharded_params(key(seed))`) and the step's key.
  tokenizer = setup.make_tokenizer(c)
  assert setup.model_config(c, tokenizer) == cfg
  mesh = jax.make_mesh((8, 1, 1), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  params0 = dream.init_sharded_params(cfg, jax.random.key(c.seed), mesh)
  params0 = jax.device_get(params0)   # one device: the reference loss compiles in a blink
  task = tasks.build(c.task, c.seed)
  examples = [{"prompt": task.prompt(p), "answer": task.sft_answer(p)} for p in task.train()]
  batch = next(iter(pipeline.sft_dataset(examples, tokenizer, seq_len=c.data.seq_len,
                                         eos_id=cfg.eos_token_id, seed=c.seed, batch_size=8)))
  key = jax.random.fold_in(jax.random.key(c.seed), 0)   # step 0, one micro-batch
  loss = jax.jit(lambda p, t, m, k: losses.sft_loss(
      dream.forward_fn(cfg), p, t, m, k, mask_id=cfg.mask_token_id, eps=c.optim.mask_eps)[0])
  want = loss(params0, batch["tokens"], batch["prompt_mask"], key)
  rows = _logged(workdir)
  assert [r["step"] for r in rows] == [1, 2]
  np.testing.assert_allclose(rows[0]["loss"], float(want), rtol=2e-5)
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                       result["params"], params0)
  assert set(result["params"]["blocks"]) >= {"q_bias", "k_bias", "v_bias"}
  assert min(jax.tree.leaves(moved)) > 0   # every leaf trained, biases included


def test_mdpo_update_on_the_dream_sft_checkpoint(sft_run, tmp_path, monkeypatch):
  use_reward(monkeypatch, digit_share)
  sft_cfg, sft_dir, sft_result = sft_run
  c = _dream_run("mdpo")
  c.model.init_checkpoint = str(sft_dir / "checkpoints")
  c.rl.num_updates, c.rl.beta = 1, 0.02
  # The evaluation samples as the rollouts do (T, trajectory), so it reuses their compiled sampler.
  c.eval.temperature, c.eval.trajectory_stats = c.rl.temperature, True
  result = rl_loop.train(c, tmp_path)
  (row,) = _logged(tmp_path)
  assert np.isfinite(row["loss"]) and row["grad_norm"] > 1e-6   # dense reward: a real gradient
  assert isinstance(result["model_config"], dream.DreamConfig)
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                       result["params"], sft_result["params"])
  assert max(jax.tree.leaves(moved)) > 0
  (row,) = result["eval"]   # the end-of-run evaluation, with the Dream model
  assert row["n"] == c.eval.num_problems and 0 <= row["accuracy"] <= 1
  # A LLaDA run cannot start from the Dream run's checkpoint: named, not a shape error.
  c.model.family = "llada"
  with pytest.raises(ValueError, match=r"model\.init_checkpoint=.*model\.family='dream'"):
    rl_loop.train(c, tmp_path / "llada")


# ------------------------------------------------------------------ python -m mdpo_jax.generate --


def _dream_folder(folder):
  """A tiny Dream checkpoint in the published layout: config.json (model_type "Dream"),
  safetensors, and the slow tokenizer files (vocab.json, merges.txt, tokenizer_config.json)."""
  from tokenizers import pre_tokenizers

  symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
  merges = [("h", "i"), ("Ġ", "a")]
  vocab = {s: i for i, s in enumerate(symbols)}
  for a, b in merges:
    vocab[a + b] = len(vocab)
  base = len(vocab)
  added = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>", "<|mask|>"]
  cfg = dream.tiny(vocab_size=base + len(added), eos_token_id=base, pad_token_id=base,
                   eot_token_id=base + 2, bos_token_id=base + 3, mask_token_id=base + 4)
  rng = np.random.default_rng(0)   # NumPy draws: no per-shape compilation of an eager init
  params = jax.tree.map(lambda a: rng.normal(0, 0.3, a.shape).astype(a.dtype),
                        dream.abstract_params(cfg))
  tok_dir = folder.parent / "tok"
  tok_dir.mkdir()
  (tok_dir / "vocab.json").write_text(json.dumps(vocab))
  (tok_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
  decoder = {str(base + i): {"content": t, "special": True} for i, t in enumerate(added)}
  (tok_dir / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
  hf_dream.save_pretrained(folder, cfg, params, extra_files=sorted(tok_dir.iterdir()))
  return cfg, params


def test_generate_cli_on_a_dream_folder_equals_the_library(tmp_path, capsys):
  folder = tmp_path / "tiny-dream"
  cfg, params = _dream_folder(folder)
  assert not (folder / "tokenizer.json").exists() and families.detect(folder).name == "dream"
  prompt = "hi a"
  args = ["--checkpoint", str(folder), "--prompt", prompt, "--gen_length", "8",
          "--block_length", "4", "--steps", "4", "--remasking", "low_confidence"]
  assert _main(*args) is None
  answer = capsys.readouterr().out.rstrip("\n").split("\n")[-1]
  # Independently: Dream's chat template, `dream.forward_fn`, cut at EOS / <|im_end|>.
  tok = hf_dream.load_tokenizer(folder)
  ids = hf_dream.encode_chat(tok, prompt)
  assert ids.count(cfg.eot_token_id) == 2   # <|im_end|> closes the system and user turns
  sc = SamplerConfig.for_model(cfg, gen_length=8, block_length=4, steps=4,
                               remasking="low_confidence")
  # Called as the CLI calls it (the loaded params, a prompt mask, the trajectory), so the
  # compiled sampler is shared: only the test's time, not what is compared, depends on it.
  loaded_cfg, loaded = hf_dream.load_pretrained(folder)
  assert loaded_cfg == cfg
  jax.tree.map(np.testing.assert_array_equal, loaded, params)
  tokens = np.asarray([ids], np.int32)
  out, _ = generate(dream.forward_fn(cfg), loaded, tokens, sc, jax.random.key(0),
                    prompt_mask=np.ones_like(tokens), return_trajectory=True)
  out = np.asarray(out)[0, len(ids):].tolist()
  cut = min([out.index(s) for s in (cfg.eos_token_id, cfg.eot_token_id) if s in out] + [8])
  assert answer == tok.decode(out[:cut], skip_special_tokens=True)
  # The Dream folder without its tokenizer files: named, with what a Dream folder needs.
  (folder / "merges.txt").unlink()
  assert _main(*args) == (f"--checkpoint={folder}: no tokenizer.json or vocab.json + merges.txt "
                          "in the folder; allowed: a Hugging Face Dream folder (config.json, "
                          "weights, tokenizer.json or vocab.json + merges.txt)")
