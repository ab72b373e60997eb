"""RL plumbing: MDPO examples from a synthetic trajectory, the over-denoising filter, and a few
MDPO / diffu-GRPO updates end to end (CLI included) with checkpoint/resume, full or LoRA."""

import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import countdown_tiny_diffu_grpo, countdown_tiny_mdpo
from mdpo_jax import parallel, tasks
from mdpo_jax.models import llada, lora
from mdpo_jax.rl import rollout
from mdpo_jax.sampling.sampler import Trajectory
from mdpo_jax.training import checkpoint, metrics, rl_loop, setup, sft_loop
from run_helpers import cli_env, digit_share, tiny_run, use_reward

# qwix 0.1.8 still reads Variable.value / VariableState, deprecated in flax 0.12.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:qwix.*")

MASK = 9


def _synthetic_batch():
  """2 prompts × G=2, prompt width 2, 3 generated tokens, T=3 steps (one token per step)."""
  n, p, g, t = 4, 2, 3, 3
  rng = np.random.default_rng(0)
  final = rng.integers(0, 8, (n, p + g))
  xs, x0s = [], []
  for step in range(t):
    x = final.copy()
    x[:, p + step:] = MASK  # positions ≥ p+step still masked before this step
    x0 = np.where(x == MASK, rng.integers(0, 8, (n, p + g)), x)
    xs.append(x)
    x0s.append(x0)
  traj = Trajectory(np.stack(xs), np.stack(x0s), rng.random((t, n, p + g)).astype(np.float32),
                    np.zeros((t, n, p + g), bool))
  return rollout.RolloutBatch(final[:, :p], np.ones((n, p), np.int32), final, traj,
                              ["a", "a", "b", "b"], group_size=2)


def _hand_advantages(r_GxT):
  g, t = r_GxT.shape
  a = np.zeros((g, t))
  for i in range(g):
    for s in range(t):
      prev = r_GxT[i, s - 1] if s else 0.0
      tail = r_GxT[i, s + 1:].mean() if s < t - 1 else r_GxT[i, s]
      a[i, s] = (r_GxT[i, s] - prev) + 1 + tail
  return (a - a.mean(0)) / (a.std(0, ddof=1) + 1e-4)


def test_mdpo_examples_pick_top_k_steps_and_copy_the_record():
  batch = _synthetic_batch()
  rewards = np.array([[0, 1, 0], [0, 0, 0], [1, 1, 1], [0, 1, 1]], np.float32)
  ex = rollout.mdpo_examples(batch, rewards, top_k=2, mask_id=MASK)
  adv = np.concatenate([_hand_advantages(rewards[:2]), _hand_advantages(rewards[2:])])
  assert ex["x_t"].shape == (8, 5)
  for row in range(4):
    want_steps = np.argsort(-np.abs(adv[row]), kind="stable")[:2]
    for j, step in enumerate(want_steps):
      e = row * 2 + j
      np.testing.assert_allclose(ex["adv"][e], adv[row, step], rtol=1e-5, atol=1e-5)
      np.testing.assert_array_equal(ex["x_t"][e], batch.traj.x[step, row])
      np.testing.assert_array_equal(ex["target"][e], batch.traj.x0[step, row])
      np.testing.assert_array_equal(ex["conf"][e], batch.traj.confidence[step, row])
      want_masked = batch.traj.x[step, row] == MASK
      want_masked[:2] = False
      np.testing.assert_array_equal(ex["masked"][e], want_masked)


def test_over_denoising_filter_on_synthetic_rewards():
  r = np.array([[0, 1, 0], [1, 1, 1], [0, 0, 0], [1, 0, 0], [0, 0, 1]], np.float32)
  np.testing.assert_array_equal(rollout.over_denoised(r, r[:, -1]),
                                [True, False, False, True, False])
  # Dense rewards (Sudoku's fraction of cells): "right" means full reward, not any reward.
  d = np.array([[0.5, 0.9, 0.5], [1.0, 0.5, 0.5], [0.2, 1.0, 1.0]], np.float32)
  np.testing.assert_array_equal(rollout.over_denoised(d, d[:, -1]), [False, True, False])


def _tiny(config):
  c = tiny_run(config)
  c.train.checkpoint_every = 10   # a run's last update is always saved
  c.rl.prompts_per_update, c.rl.group_size, c.rl.top_k = 2, 4, 2
  c.rl.gen_length, c.rl.steps, c.rl.block_lengths = 8, 4, (8,)   # one rollout program to compile
  c.rl.micro_batch = 8
  return c


@pytest.fixture(scope="module")
def sft_checkpoint(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("sft")
  c = _tiny(countdown_tiny_mdpo.get_config())
  c.trainer = "sft"
  c.train.num_steps = 3
  c.train.checkpoint_every = 3
  c.task.eval_size = 0   # no end-of-run evaluation: the RL runs below only start from its params
  sft_loop.train(c, workdir)
  return str(workdir / "checkpoints")


@pytest.fixture
def dense_reward(monkeypatch):
  use_reward(monkeypatch, digit_share)


def _rows(workdir):
  return [r for r in metrics.read_jsonl(workdir / "metrics.jsonl") if "loss" in r]


@pytest.mark.parametrize("recipe,beta,inner,filt,rank,cache", [
    (countdown_tiny_mdpo, 0.02, 2, "over_denoising", 0, "none"),
    (countdown_tiny_diffu_grpo, 0.04, 2, "none", 0, "prefix"),
    (countdown_tiny_mdpo, 0.02, 2, "over_denoising", 4, "dual")])
def test_rl_updates_resume_exactly(tmp_path, sft_checkpoint, dense_reward, recipe, beta, inner,
                                   filt, rank, cache):
  """Also: rollouts and the evaluation with a KV cache (LoRA's forward honours the cache
  contract), and a threshold in the evaluation."""
  c = _tiny(recipe.get_config())
  c.model.init_checkpoint = sft_checkpoint
  c.model.lora_rank = rank
  c.rl.block_lengths = (4, 8)   # the block drawn per update must replay on resume
  c.rl.beta, c.rl.inner_iters = beta, inner
  c.rl.filter, c.rl.filter_pool_size, c.rl.filter_refresh_updates = filt, 8, 1
  c.rl.num_updates = 2
  c.rl.cache = c.eval.cache = cache
  c.eval.threshold = 0.0 if cache == "none" else 0.5
  straight = rl_loop.train(c, tmp_path / "straight")
  assert straight["update"] == 2 and len(straight["eval"]) == 1
  row = straight["eval"][0]
  assert row["cache"] == cache and 1 <= row["nfe"] <= row["steps"]
  want = _rows(tmp_path / "straight")
  assert [r["step"] for r in want] == [1, 2]
  assert all(np.isfinite(r["loss"]) for r in want)
  assert all(r["grad_norm"] > 1e-6 for r in want)   # the rewards give real gradients
  assert {r["block_length"] for r in want} <= {4.0, 8.0}
  if "ratio_mean" in want[0]:   # per inner iteration: on-policy first, the logged mean of both
    for r in want:
      np.testing.assert_allclose(r["inner/0/ratio_mean"], 1.0, rtol=1e-5)
      np.testing.assert_allclose((r["inner/0/ratio_mean"] + r["inner/1/ratio_mean"]) / 2,
                                 r["ratio_mean"], rtol=1e-6)
      assert r["inner/1/ratio_mean"] != 1.0 and 0.0 <= r["inner/1/clip_frac"] <= 1.0

  c.rl.num_updates = 1
  rl_loop.train(c, tmp_path / "resumed")
  c.rl.num_updates = 2
  again = rl_loop.train(c, tmp_path / "resumed")
  assert again["update"] == 2
  got = _rows(tmp_path / "resumed")
  assert [r["step"] for r in got] == [1, 2]  # update 1 was not redone
  for key in ("loss", "reward/final_mean", "grad_norm"):
    np.testing.assert_allclose([r[key] for r in got], [r[key] for r in want], rtol=1e-4,
                               err_msg=key)


@pytest.mark.parametrize("recipe", [countdown_tiny_mdpo, countdown_tiny_diffu_grpo])
def test_lora_rl_starts_as_full_fine_tune_and_trains_only_adapters(tmp_path, sft_checkpoint,
                                                                    dense_reward, monkeypatch,
                                                                    recipe):
  """B = 0 at init, so a LoRA run's first update sees the same policy as a full fine-tune with
  the same seed: same rollouts, rewards, old/reference log-probs and loss. After that only the
  adapters move; the frozen base (and KL reference) stays the SFT params bit for bit, and each
  update's rollouts sample the current policy (base + the adapters so far)."""
  c = _tiny(recipe.get_config())
  c.model.init_checkpoint = sft_checkpoint
  c.rl.beta, c.rl.inner_iters, c.rl.num_updates = 0.04, 1, 1
  c.optim.lr = 1e-3
  c.task.eval_size = 0   # no end-of-run evaluations: this is about the updates and the params
  full = rl_loop.train(c, tmp_path / "full")
  assert "adapters" not in full
  c.model.lora_rank, c.model.lora_alpha, c.model.lora_targets = 4, 8.0, "q_proj,v_proj,ff_out"
  c.rl.num_updates = 2
  c.train.checkpoint_every = 1   # update 1's adapters are read back below
  probe = np.arange(12, dtype=np.int32)[None] % 60
  sampled_logits = []   # the rollout policy's logits on `probe`, at each update

  def recording_sample(forward_fn, params, *args, **kwargs):
    sampled_logits.append(np.asarray(forward_fn(params, probe)))
    return real_sample(forward_fn, params, *args, **kwargs)
  real_sample = rollout.sample
  monkeypatch.setattr(rollout, "sample", recording_sample)
  low_rank = rl_loop.train(c, tmp_path / "lora")
  want, got = _rows(tmp_path / "full")[0], _rows(tmp_path / "lora")[0]
  assert want["reward/mixed_groups"] > 0 and want["grad_norm"] > 1e-3   # a real gradient
  compared = set(want) - {"grad_norm", "seconds", "time"}
  assert {"loss", "kl", "reward/final_mean", "block_length"} <= compared
  for key in sorted(compared):   # diffu-GRPO's loss is ~0 on-policy (ρ = 1, centred advantages)
    np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-12, err_msg=key)
  assert got["grad_norm"] != want["grad_norm"]   # different trainable params
  second = _rows(tmp_path / "lora")[1]
  assert second["kl"] > 0                         # the reference stayed the base
  if "ratio_mean" in second:                      # old-policy log-probs are the policy's
    np.testing.assert_allclose(second["ratio_mean"], 1.0, rtol=1e-6)

  mesh = parallel.mesh_from_config(c.mesh)
  cfg = low_rank["model_config"]
  lcfg = lora.LoraConfig(rank=4, alpha=8.0, targets=("q_proj", "v_proj", "ff_out"))
  sft_params = setup.load_run_params(sft_checkpoint, cfg, mesh)
  adapters = low_rank["adapters"]
  fresh = setup.init_adapters(c, cfg, lcfg, mesh)
  assert jax.tree.structure(adapters) == jax.tree.structure(fresh)
  for name, ab in adapters["blocks"].items():
    assert np.any(np.asarray(ab["lora_b"])), name                    # B left 0
    assert not np.array_equal(ab["lora_a"], fresh["blocks"][name]["lora_a"]), name
  # The returned policy is exactly the SFT params with these adapters merged: the base the run
  # used to the end was not changed.
  merged = jax.jit(lora.merge, static_argnums=0)(lcfg, sft_params, adapters)
  jax.tree.map(np.testing.assert_array_equal, low_rank["params"], merged)
  assert not np.array_equal(low_rank["params"]["blocks"]["q_proj"], sft_params["blocks"]["q_proj"])
  # Update 1 sampled the SFT model, update 2 the SFT model + the adapters after update 1.
  after_1, _, _ = checkpoint.restore_params(tmp_path / "lora" / "checkpoints",
                                            lora.abstract_adapters(cfg, lcfg), step=1)
  assert len(sampled_logits) == 2
  for logits, params in ((sampled_logits[0], sft_params),
                         (sampled_logits[1], lora.merge(lcfg, sft_params, after_1))):
    np.testing.assert_allclose(logits, llada.forward(cfg, params, probe), rtol=1e-5, atol=1e-5)
  assert np.max(np.abs(sampled_logits[1] - sampled_logits[0])) > 1e-4
  # Its checkpoint holds the adapters; read as a run (evaluate, a later init_checkpoint) it is
  # the merged policy, its base rebuilt from the saved config's model.init_checkpoint.
  saved, _, step = checkpoint.restore_params(tmp_path / "lora" / "checkpoints",
                                             lora.abstract_adapters(cfg, lcfg))
  assert step == 2
  jax.tree.map(np.testing.assert_array_equal, saved, adapters)
  jax.tree.map(np.testing.assert_array_equal,
               setup.load_run_params(tmp_path / "lora" / "checkpoints", cfg, mesh), merged)


def test_rl_from_a_lora_sft_run_starts_from_its_merged_params(tmp_path, dense_reward):
  """model.init_checkpoint = a LoRA SFT run (on a fresh base): RL loads that run's base + adapters
  merged; a LoRA RL run on it reads back (two LoRA runs deep) as what it returned."""
  sft = _tiny(countdown_tiny_mdpo.get_config())
  sft.trainer = "sft"
  sft.optim.lr = 3e-3
  sft.train.num_steps = sft.train.checkpoint_every = 2
  sft.model.lora_rank, sft.model.lora_alpha = 4, 8.0
  sft.task.eval_size = 0   # no held-out evaluation in either run: this is about the params
  sft_result = sft_loop.train(sft, tmp_path / "sft")
  assert np.any(np.asarray(sft_result["adapters"]["blocks"]["q_proj"]["lora_b"]))
  mesh = parallel.mesh_from_config(sft.mesh)

  c = _tiny(countdown_tiny_diffu_grpo.get_config())
  c.model.init_checkpoint = str(tmp_path / "sft" / "checkpoints")
  c.task.eval_size = 0
  tokenizer = setup.make_tokenizer(c)
  cfg, start = setup.load_model(c, tokenizer, mesh, jax.random.key(123))
  jax.tree.map(np.testing.assert_array_equal, start, sft_result["params"])

  c.model.lora_rank, c.rl.num_updates, c.optim.lr = 2, 1, 1e-3
  result = rl_loop.train(c, tmp_path / "rl")
  lcfg = lora.LoraConfig(rank=2, alpha=c.model.lora_alpha)
  jax.tree.map(np.testing.assert_array_equal, result["params"],
               jax.jit(lora.merge, static_argnums=0)(lcfg, sft_result["params"],
                                                     result["adapters"]))
  jax.tree.map(np.testing.assert_array_equal,
               setup.load_run_params(tmp_path / "rl" / "checkpoints", cfg, mesh),
               result["params"])

  c.model.d_model, c.model.mlp_hidden_size = 16, 32
  with pytest.raises(ValueError, match=r"model\.init_checkpoint=.*sft/checkpoints: a LoRA run "
                                       r"whose base model .* does not match"):
    setup.load_run_params(tmp_path / "sft" / "checkpoints", setup.model_config(c, tokenizer),
                          mesh)


def test_mdpo_through_the_cli(tmp_path, sft_checkpoint):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  flags = [
      "--config.model.d_model=32", "--config.model.n_layers=1", "--config.model.n_heads=2",
      "--config.model.n_kv_heads=2", "--config.model.mlp_hidden_size=64",
      "--config.task.train_size=64", "--config.task.eval_size=8",
      "--config.eval.num_problems=8", "--config.eval.batch_size=8",
      "--config.eval.gen_length=8", "--config.eval.block_length=8", "--config.eval.steps=4",
      "--config.eval.remasking=rcr", "--config.logging.tensorboard=False",
      "--config.rl.prompts_per_update=2", "--config.rl.group_size=4", "--config.rl.top_k=2",
      "--config.rl.gen_length=8", "--config.rl.steps=4", "--config.rl.block_lengths=8",
      "--config.rl.micro_batch=8", "--config.rl.num_updates=2",
      f"--config.model.init_checkpoint={sft_checkpoint}"]
  env = cli_env()
  res = subprocess.run([sys.executable, "-m", "mdpo_jax.train", "--config",
                        "configs/countdown_tiny_mdpo.py", "--workdir", str(tmp_path), *flags],
                       capture_output=True, text=True, env=env, cwd=repo, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  assert "| rcr | 4 |" in res.stdout
  assert [r["step"] for r in _rows(tmp_path)] == [1, 2]
  assert sorted(os.listdir(tmp_path / "checkpoints"))[-1] == "2"


def test_rollouts_draw_only_the_configured_prompts(tmp_path, sft_checkpoint, monkeypatch):
  """rl.prompt_source=fresh: every rollout problem is a fresh one, none SFT trained on; train:
  every one is a training problem."""
  drawn = []
  real_sample = rollout.sample

  def recording_sample(forward_fn, params, prompts, pmask, problems, *args, **kwargs):
    drawn.extend(problems)
    return real_sample(forward_fn, params, prompts, pmask, problems, *args, **kwargs)
  monkeypatch.setattr(rollout, "sample", recording_sample)
  for source in ("fresh", "train"):
    c = _tiny(countdown_tiny_mdpo.get_config())
    c.model.init_checkpoint = sft_checkpoint
    c.task.val_size, c.rl.fresh_size, c.rl.num_updates = 16, 32, 2
    c.rl.prompt_source = source
    drawn.clear()
    rl_loop.train(c, tmp_path / source)
    task = tasks.build(c.task, c.seed)
    train, held = task.train(), task.held_out()
    allowed = train if source == "train" else task.fresh(c.rl.fresh_size)
    assert len(drawn) == 2 * c.rl.prompts_per_update
    assert all(p in allowed for p in drawn), source
    if source == "fresh":
      assert not any(p in train or p in held for p in drawn)


def test_sigterm_saves_the_update_and_resumes(tmp_path, sft_checkpoint, monkeypatch):
  """SIGTERM during update 2: that update finishes and is saved, the run returns "preempted"
  (no end-of-run evaluation), and the same command then does only update 3."""
  calls = {"n": 0}
  real_sample = rollout.sample

  def sample(*args, **kwargs):
    calls["n"] += 1
    if calls["n"] == 2:
      os.kill(os.getpid(), signal.SIGTERM)
    return real_sample(*args, **kwargs)
  monkeypatch.setattr(rollout, "sample", sample)
  c = _tiny(countdown_tiny_mdpo.get_config())
  c.model.init_checkpoint = sft_checkpoint
  c.rl.num_updates, c.train.checkpoint_every = 3, 10
  first = rl_loop.train(c, tmp_path)
  assert first["stopped"] == "preempted" and first["update"] == 2 and first["eval"] == []
  assert sorted(os.listdir(tmp_path / "checkpoints"))[-1] == "2"
  again = rl_loop.train(c, tmp_path)
  assert again["stopped"] is None and again["update"] == 3 and calls["n"] == 3
  assert [r["step"] for r in _rows(tmp_path)] == [1, 2, 3]
