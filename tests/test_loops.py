"""The run scaffold's loops against hand-written reference loops (behaviour must not move).

Each reference is written out step by step from the documented recipe — data order, per-step and
per-micro-batch keys, gradient means, old-policy / reference log-probs, one AdamW step — with the
package's pure pieces (losses, sampler, rollout records) but none of `training/`'s loop code, and
must give the losses the loops log and the parameters they end with.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base, countdown_tiny_mdpo
from mdpo_jax import tasks
from mdpo_jax.data import pipeline
from mdpo_jax.diffusion import losses
from mdpo_jax.models import llada
from mdpo_jax.rl import mdpo, rollout
from mdpo_jax.rl.scoring import RewardPool
from mdpo_jax.sampling.sampler import SamplerConfig
from mdpo_jax.training import metrics, optim, rl_loop, setup, sft_loop
from run_helpers import digit_share, tiny_run, use_reward

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:qwix.*")


def _tiny(c):
  c = tiny_run(c)
  c.train.log_every = 1
  c.task.eval_size = 0   # no end-of-run evaluation: the references are of the training only
  return c


def _logged(workdir, key="loss"):
  return [r[key] for r in metrics.read_jsonl(workdir / "metrics.jsonl") if key in r]


def _init(config):
  """Tokenizer, model config and initial params exactly as documented: char tokenizer, preset +
  overrides, `init_sharded_params(key(seed))` on the run's mesh."""
  tokenizer = setup.make_tokenizer(config)
  cfg = setup.model_config(config, tokenizer)
  mesh = jax.make_mesh((8, 1, 1), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  return tokenizer, cfg, llada.init_sharded_params(cfg, jax.random.key(config.seed), mesh)


def _adam_on_mean(opt, params, opt_state, *grads):
  """One optimiser step on the mean of equally sized micro-batches' gradients."""
  mean = jax.tree.map(lambda *g: sum(g) / len(g), *grads)
  updates, opt_state = opt.update(mean, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def test_sft_loop_equals_a_hand_written_loop(tmp_path):
  c = _tiny(base.get_config())
  c.train.num_steps, c.optim.warmup_steps, c.optim.grad_accum_steps = 3, 1, 2
  result = sft_loop.train(c, tmp_path)

  tokenizer, cfg, params = _init(c)
  task = tasks.build(c.task, c.seed)
  examples = [{"prompt": task.prompt(p), "answer": task.sft_answer(p)} for p in task.train()]
  data = iter(pipeline.sft_dataset(examples, tokenizer, seq_len=c.data.seq_len,
                                   eos_id=cfg.eos_token_id, seed=c.seed, batch_size=8))
  opt = optim.make_optimizer(c.optim, 3)
  opt_state = opt.init(params)
  fwd = llada.forward_fn(cfg)
  key = jax.random.key(c.seed)

  def loss(p, tokens, prompt_mask, rng):
    return losses.sft_loss(fwd, p, tokens, prompt_mask, rng, mask_id=cfg.mask_token_id,
                           eps=c.optim.mask_eps)[0]

  grad = jax.jit(jax.value_and_grad(loss))
  apply_mean = jax.jit(functools.partial(_adam_on_mean, opt))
  want = []
  for step in range(3):
    batch = next(data)
    step_key = jax.random.fold_in(key, step)
    values, grads = [], []
    for i in range(2):   # two micro-batches of 4 rows, each with its own key
      rows = slice(4 * i, 4 * i + 4)
      v, g = grad(params, batch["tokens"][rows], batch["prompt_mask"][rows],
                  jax.random.fold_in(step_key, i))
      values.append(float(v))
      grads.append(g)
    params, opt_state = apply_mean(params, opt_state, *grads)
    want.append(np.mean(values))
  np.testing.assert_allclose(_logged(tmp_path), want, rtol=2e-5)
  for a, b in zip(jax.tree.leaves(result["params"]), jax.tree.leaves(params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_rl_loop_equals_a_hand_written_mdpo_loop(tmp_path, monkeypatch):
  build = use_reward(monkeypatch, digit_share)
  c = _tiny(countdown_tiny_mdpo.get_config())
  c.rl.prompt_source, c.rl.num_updates, c.rl.inner_iters, c.rl.beta = "train", 2, 2, 0.05
  c.rl.prompts_per_update, c.rl.group_size, c.rl.top_k = 2, 4, 2
  c.rl.gen_length, c.rl.steps, c.rl.block_lengths, c.rl.micro_batch = 8, 4, (8,), 8
  result = rl_loop.train(c, tmp_path)

  tokenizer, cfg, params = _init(c)
  task = build(c.task, c.seed)
  problems = task.train()
  prompts, pmask = pipeline.eval_prompts([task.prompt(p) for p in problems], tokenizer,
                                         prompt_len=c.data.prompt_len, pad_id=cfg.pad_token_id)
  fwd = llada.forward_fn(cfg)
  ref_params = params
  opt = optim.make_optimizer(c.optim, 4)
  opt_state = opt.init(params)
  pool = RewardPool(digit_share, num_workers=0)
  key = jax.random.key(c.seed + 17)
  sc = SamplerConfig.for_model(cfg, gen_length=8, block_length=8, steps=4, temperature=0.5,
                               remasking="low_confidence")
  logp = jax.jit(lambda p, x, y, m: mdpo.token_logprobs(fwd, p, x, y, temperature=0.5,
                                                        attention_mask=m))
  loss_fn = jax.jit(jax.value_and_grad(
      lambda p, rows: mdpo.mdpo_loss(fwd, p, rows, temperature=0.5, gen_length=8,
                                     clip_eps=c.rl.clip_eps, beta=0.05)[0]))
  apply_mean = jax.jit(functools.partial(_adam_on_mean, opt))
  want = []
  for update in range(2):
    pick = np.random.default_rng([c.seed, update]).choice(len(problems), 2, replace=False)
    batch = rollout.sample(fwd, params, prompts[pick], pmask[pick], [problems[i] for i in pick],
                           sc, jax.random.fold_in(key, update), group_size=4)
    r_NxT, _ = rollout.step_rewards(batch, tokenizer, pool, (cfg.eos_token_id, cfg.eot_token_id))
    rows = rollout.mdpo_examples(batch, r_NxT, top_k=2, mask_id=cfg.mask_token_id)
    rows["old_logp"] = np.asarray(logp(params, rows["x_t"], rows["target"],
                                       rows["attention_mask"]))
    rows["ref_logp"] = np.asarray(logp(ref_params, rows["x_t"], rows["target"],
                                       rows["attention_mask"]))
    inner = []
    for _ in range(2):   # inner iterations over the same 16 rows, micro-batches of 8
      parts = [loss_fn(params, {k: v[i:i + 8] for k, v in rows.items()}) for i in (0, 8)]
      params, opt_state = apply_mean(params, opt_state, parts[0][1], parts[1][1])
      inner.append(np.mean([float(v) for v, _ in parts]))
    want.append(np.mean(inner))
  np.testing.assert_allclose(_logged(tmp_path), want, rtol=1e-4, atol=1e-7)
  assert max(abs(w) for w in want) > 1e-4   # the stand-in reward gives non-trivial losses
  for a, b in zip(jax.tree.leaves(result["params"]), jax.tree.leaves(params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-5)
