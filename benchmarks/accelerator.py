"""Accelerator benchmark: a 1B-shaped LLaDA in bf16 — the sampler's tokens/s per cache mode, and
the SFT step's and the MDPO update's tokens/s and MFU against the chip's peak.

  python benchmarks/accelerator.py [--size 1b|tiny] [--peak_tflops X] [--out table.md] [--repeats 5]
  python benchmarks/accelerator.py --size tiny --repeats 2          # CPU smoke run

Runs on `jax.devices()[0]` (one chip; CPU, GPU or TPU), random weights. Every figure is the median
of `--repeats` timed calls after a warm-up call that compiles (`block_until_ready` on all outputs).

* Sampler (`sampling.sampler.generate`, the one jitted scan): `--sampler_batch` prompts of
  `--prompt` tokens, `--gen` generated tokens in blocks of `--block`, `--steps` denoising steps
  (the cap under a threshold), for each of `--modes` (`cache[:threshold]`). Tokens/s counts
  generated tokens. Model FLOPs count the windows each call ran (a cached block's first call is
  a full forward, its others run the window only; under a threshold the calls are spread evenly
  over blocks). Random weights are not confident, so a threshold row commits few extra tokens.
* SFT step (`training.sft_loop.make_train_step`, the trainer's own step: masked-diffusion SFT
  loss, gradient, clipped AdamW), on `--sft_batch` × `--sft_len` tokens (the first quarter of
  each row is prompt), state donated as the loop does.
* MDPO update (`training.rl_loop.make_update` with the `mdpo` algorithm: loss + gradient over
  `--micro_batch`-row micro-batches, one AdamW step) on the rows one update trains:
  `--rl_prompts` × G=`--group` rollouts × top-`--top_k` steps, each `--prompt` + `--gen` tokens,
  shaped by `memory_plan.rl_rows` (the loop's own row layout) with random masks and advantages.

MFU = model FLOP/s ÷ the chip's dense bf16 peak (`training.hardware.peak_flops`, detected from
`device_kind`, or `--peak_tflops`; unknown chip → "n/a"). Model FLOPs (`model_flops`) are the
standard dense-transformer count: 2·N per token for a forward, 6·N for forward + backward, N the
matmul parameters (the blocks' projections and the LM head; the input embedding is a lookup),
plus attention's 4·layers·d·L per token forward (12·layers·d·L with the backward). Remat's
recomputation is not counted (it is hardware FLOPs, not model FLOPs), so `--remat full` lowers
MFU by design. The count agrees with XLA's own `cost_analysis()` within 2% on unrolled layers
(`tests/test_accelerator_benchmark.py`).

The 1B shape: the width and MLP of TinyLlama-1.1B (d_model 2048, mlp 5632), LLaDA-8B's head
size (128: 16 heads, multi-head attention as LLaDA), 16 layers, LLaDA's vocabulary (126,464):
1.34B parameters of which 0.52B are the embedding and head — the same shape as
`benchmarks/sampler_speed.py --sizes 1b`.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import llada8b_countdown_mdpo, llada8b_sft
from mdpo_jax import config as config_lib
from mdpo_jax.models import llada
from mdpo_jax.rl import algorithms
from mdpo_jax.sampling.sampler import SamplerConfig, generate
from mdpo_jax.training import hardware, memory_plan, optim, rl_loop, sft_loop
from mdpo_jax.training import state as state_lib
from mdpo_jax.training.policy import Policy

SHAPES = {
    "1b": dict(vocab_size=126464, d_model=2048, n_layers=16, n_heads=16, n_kv_heads=16,
               mlp_hidden_size=5632, init_std=0.02),
    "tiny": dict(vocab_size=512, d_model=128, n_layers=2, n_heads=2, n_kv_heads=2,
                 mlp_hidden_size=512, init_std=0.3),
}
# Shapes per size (each a flag). 1b: sized for one H100/H200 or TPU v5p chip. Per-chip bytes at
# these defaults from an ahead-of-time compile (XLA CPU's memory analysis; state = bf16 params
# and AdamW moments, 7.5 GiB): SFT 8 × 1024, remat none, 59 GiB; the MDPO update (128 rows of
# 384, micro-batch 8) 32 GiB; with --remat full 23 GiB (SFT at 16 × 1024) and 20 GiB; the
# sampler 9.5 (none), 16.7 (prefix), 11.3 GiB (dual), weights included. On an
# 80 GB GPU raise XLA_PYTHON_CLIENT_MEM_FRACTION (XLA takes 75% by default); on a 32 GB chip
# (v6e) use --remat full; on v5e (16 GB) also smaller batches.
DEFAULTS = {
    "1b": dict(sampler_batch=16, prompt=128, gen=256, block=32, steps=128, sft_batch=8,
               sft_len=1024, rl_prompts=2, group=8, top_k=8, micro_batch=8),
    "tiny": dict(sampler_batch=2, prompt=16, gen=32, block=16, steps=32, sft_batch=4,
                 sft_len=64, rl_prompts=1, group=2, top_k=2, micro_batch=2),
}


def model_of(size: str, remat: str = "none", dtype: str = "bfloat16") -> llada.LLaDAConfig:
  return llada.tiny(dtype=dtype, param_dtype=dtype, max_sequence_length=4096, remat=remat,
                    **SHAPES[size])


# ---------------------------------------------------------------------------------------- FLOPs


def matmul_params(cfg: llada.LLaDAConfig) -> int:
  """N: the parameters that take part in a matmul per token — each layer's q/k/v/o and SwiGLU
  projections and the LM head (norm weights and biases are elementwise; the input embedding is a
  lookup; a tied head still multiplies by the embedding)."""
  d, e = cfg.d_model, cfg.head_dim
  q, kv = cfg.n_heads * e, cfg.n_kv_heads * e
  per_layer = 2 * d * q + 2 * d * kv + 3 * d * cfg.mlp_hidden_size
  return cfg.n_layers * per_layer + cfg.vocab_size * d


def forward_flops(cfg: llada.LLaDAConfig, queries: int, keys: int) -> float:
  """Model FLOPs of one row's forward of `queries` positions attending to `keys` positions:
  2·N per query (every matmul, LM head included) + 4·layers·(heads·head_dim)·keys per query
  (scores q·k and the weighted sum of values)."""
  attention = 4 * cfg.n_layers * cfg.n_heads * cfg.head_dim * keys
  return float(queries) * (2 * matmul_params(cfg) + attention)


def model_flops(cfg: llada.LLaDAConfig, batch: int, length: int, training: bool) -> float:
  """Standard dense-transformer FLOPs of `batch` rows of `length` tokens (bidirectional: every
  query sees every key): forward = batch·L·(2N + 4·layers·d·L); training (forward + backward,
  the backward twice the forward) = 3× that, i.e. 6N + 12·layers·d·L per token."""
  flops = batch * forward_flops(cfg, length, length)
  return 3 * flops if training else flops


def sampler_flops(cfg, batch: int, prompt: int, sc: SamplerConfig, nfe: int) -> float:
  """Model FLOPs of one `generate` call that made `nfe` model calls: full forwards without a
  cache; with one, each block's first call is full and its other calls run the window (prefix:
  the block and all after it; dual: the block), spread evenly over blocks under a threshold."""
  total = prompt + sc.gen_length
  if sc.cache == "none":
    return batch * nfe * forward_flops(cfg, total, total)
  n_blocks = sc.gen_length // sc.block_length
  per_block = nfe / n_blocks
  flops = 0.0
  for b in range(n_blocks):
    width = sc.block_length if sc.cache == "dual" else total - prompt - b * sc.block_length
    flops += forward_flops(cfg, total, total) + (per_block - 1) * forward_flops(cfg, width, total)
  return batch * flops


# -------------------------------------------------------------------------------------- timing


def median_call_s(fn, repeats: int):
  """(median seconds of `fn()` over `repeats` calls after a warm-up call, last output)."""
  out = jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times), out


def committed(tree):
  """`tree` placed on the benchmark's device. A fresh state is uncommitted and a step's output
  state committed: jit would compile the step twice (the second at the first timed call)."""
  return jax.device_put(tree, jax.devices()[0])


def median_step_s(step, state, batch, repeats: int) -> float:
  """Median seconds of `state = step(state, batch)[0]` (the state is donated and threaded
  through, as in the training loops), after a warm-up step that compiles."""
  state = jax.block_until_ready(step(state, batch))[0]
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    state = jax.block_until_ready(step(state, batch))[0]
    times.append(time.perf_counter() - start)
  return statistics.median(times)


@dataclasses.dataclass(frozen=True)
class Row:
  part: str
  setting: str
  shape: str
  seconds: float
  tokens: int
  flops: float

  def cells(self, peak: hardware.PeakFlops | None) -> list[str]:
    achieved = self.flops / self.seconds
    mfu = f"{100 * achieved / (peak.bf16_tflops * 1e12):.1f}%" if peak else "n/a"
    rate = self.tokens / self.seconds
    return [self.part, self.setting, self.shape, f"{self.seconds * 1e3:.1f}",
            f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}", f"{achieved / 1e12:.3g}", mfu]


# -------------------------------------------------------------------------------- measurements


def sampler_rows(cfg, params, args) -> list[Row]:
  """tokens/s of `generate` for each `--modes` entry (cache[:threshold])."""
  b, p = args.sampler_batch, args.prompt
  prompt_BxP = jax.random.randint(jax.random.key(1), (b, p), 0, cfg.vocab_size - 8, jnp.int32)
  fwd = llada.forward_fn(cfg)
  rows = []
  for mode in args.modes.split(","):
    cache, _, tau_text = mode.partition(":")
    tau = float(tau_text) if tau_text else None
    sc = SamplerConfig.for_model(cfg, gen_length=args.gen, block_length=args.block,
                                 steps=args.steps, cache=cache, threshold=tau)
    call = lambda sc=sc: generate(fwd, params, prompt_BxP, sc, jax.random.key(0),  # noqa: E731
                                  return_nfe=True)
    seconds, (_, nfe) = median_call_s(call, args.repeats)
    setting = f"cache={cache}" + (f", τ={tau}" if tau is not None else "") + f", NFE {int(nfe)}"
    rows.append(Row("sampler", setting,
                    f"{b} × ({p}+{args.gen}), block {args.block}, {args.steps} steps",
                    seconds, b * args.gen, sampler_flops(cfg, b, p, sc, int(nfe))))
  return rows


def sft_row(cfg, params, args) -> Row:
  """The SFT trainer's step (loss, gradient, AdamW as in `configs/llada8b_sft.py`)."""
  opt_cfg = llada8b_sft.get_config().optim
  optimizer = optim.make_optimizer(opt_cfg, 1000)
  policy = Policy(cfg, None, None)
  step = jax.jit(sft_loop.make_train_step("sft", policy, optimizer,
                                          optim.learning_rate_schedule(opt_cfg, 1000), accum=1,
                                          mask_eps=1e-3), donate_argnums=0)
  b, n = args.sft_batch, args.sft_len
  rng = np.random.default_rng(0)
  batch = jax.device_put({
      "tokens": rng.integers(0, cfg.vocab_size - 8, (b, n), np.int32),
      "prompt_mask": np.broadcast_to(np.arange(n) < n // 4, (b, n)).copy()})
  state = committed(state_lib.create(jax.tree.map(jnp.copy, params), optimizer, 0))
  seconds = median_step_s(step, state, batch, args.repeats)
  return Row("SFT step", f"remat={cfg.remat}, AdamW", f"{b} × {n}", seconds, b * n,
             model_flops(cfg, b, n, training=True))


@dataclasses.dataclass(frozen=True)
class _UpdateRun:
  """The fields of `training.run.Run` that `rl_loop.make_update` reads."""
  config: config_lib.RunConfig
  policy: Policy
  optimizer: object
  state_shardings: object


def mdpo_config(args, cfg) -> config_lib.RunConfig:
  """`configs/llada8b_countdown_mdpo.py` (AdamW, clip, β = 0.02) at this benchmark's shapes."""
  c = llada8b_countdown_mdpo.get_config()
  c.data.prompt_len = args.prompt
  c.model.remat = cfg.remat
  rl = c.rl
  rl.prompts_per_update, rl.group_size, rl.top_k = args.rl_prompts, args.group, args.top_k
  rl.micro_batch, rl.gen_length, rl.steps = args.micro_batch, args.gen, args.steps
  rl.block_lengths = (args.gen,)
  return config_lib.parse(c)


def mdpo_rows(config, cfg, seed: int = 0) -> dict:
  """One update's rows in the loop's layout, with random masks over the generated positions,
  random targets, confidences and advantages (the cost does not depend on the values)."""
  rows = dict(memory_plan.rl_rows(config, cfg))
  rng = np.random.default_rng(seed)
  n, length = rows["x_t"].shape
  generated_NxL = np.arange(length)[None, :] >= config.data.prompt_len
  masked_NxL = generated_NxL & (rng.random((n, length)) < rng.random((n, 1)))
  target_NxL = rng.integers(0, cfg.vocab_size - 8, (n, length)).astype(rows["target"].dtype)
  rows.update(target=target_NxL, masked=masked_NxL,
              x_t=np.where(masked_NxL, cfg.mask_token_id, target_NxL).astype(rows["x_t"].dtype),
              conf=rng.random((n, length)).astype(np.float32),
              adv=rng.standard_normal(n).astype(np.float32))
  for key in ("old_logp", "ref_logp"):
    if key in rows:
      rows[key] = -rng.random((n, length)).astype(np.float32)
  return rows


def mdpo_row(cfg, params, args) -> Row:
  """The RL loop's update (`rl_loop.make_update`, algorithm `mdpo`) on one update's rows."""
  config = mdpo_config(args, cfg)
  optimizer = optim.make_optimizer(config.optim, config.optimizer_steps)
  state = committed(state_lib.create(jax.tree.map(jnp.copy, params), optimizer, config.seed))
  run = _UpdateRun(config, Policy(cfg, None, None), optimizer,
                   jax.tree.map(lambda x: x.sharding, state))
  update = rl_loop.make_update(algorithms.get("mdpo"), run)
  rows = jax.device_put(mdpo_rows(config, cfg))
  n, length = rows["x_t"].shape
  seconds = median_step_s(lambda s, r: update(s, r, None), state, rows, args.repeats)
  return Row("MDPO update", f"remat={cfg.remat}, micro-batch {args.micro_batch}, AdamW",
             f"{n} rows × {length} ({args.rl_prompts}×G{args.group}×top-{args.top_k})",
             seconds, n * length, model_flops(cfg, n, length, training=True))


# ----------------------------------------------------------------------------------------- main


def table(cfg, rows: list[Row], peak, args) -> str:
  device = jax.devices()[0]
  peak_text = (f"{peak.bf16_tflops:g} TFLOP/s dense bf16 ({peak.chip}; {peak.source})" if peak
               else "unknown (give --peak_tflops for MFU)")
  lines = [f"device: {device.device_kind} ({device.platform}, {jax.device_count()} visible, "
           f"one used); peak {peak_text}",
           f"model: {args.size} LLaDA, {cfg.num_params() / 1e9:.3f}B params "
           f"(N = {matmul_params(cfg) / 1e9:.3f}B in matmuls), d {cfg.d_model}, "
           f"{cfg.n_layers} layers, {cfg.n_heads} heads, mlp {cfg.mlp_hidden_size}, "
           f"vocab {cfg.vocab_size}, {cfg.dtype}; median of {args.repeats} after a warm-up",
           "",
           "| part | setting | rows × tokens | ms | tokens/s | model TFLOP/s | MFU |",
           "|---|---|---|---|---|---|---|"]
  lines += ["| " + " | ".join(row.cells(peak)) + " |" for row in rows]
  return "\n".join(lines)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--size", default="1b", choices=tuple(SHAPES))
  parser.add_argument("--peak_tflops", type=float, default=None,
                      help="the chip's dense bf16 peak (default: detected from device_kind)")
  parser.add_argument("--out", default=None, help="also write the table to this file")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--remat", default="none", choices=("none", "full", "save_dots"))
  parser.add_argument("--parts", default="sampler,sft,mdpo")
  parser.add_argument("--modes", default="none,prefix,dual,dual:0.9",
                      help="sampler cache[:threshold] modes, comma-separated")
  for name in DEFAULTS["1b"]:
    parser.add_argument(f"--{name}", type=int, default=None,
                        help="default per --size: " + ", ".join(
                            f"{s} {d[name]}" for s, d in DEFAULTS.items()))
  args = parser.parse_args(argv)
  for name, value in DEFAULTS[args.size].items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  return args


def main(argv=None):
  args = parse_args(argv)
  peak = hardware.peak_flops(jax.devices()[0].device_kind, args.peak_tflops)
  cfg = model_of(args.size, args.remat)
  params = llada.init_params(cfg, jax.random.key(0))
  parts = args.parts.split(",")
  rows = sampler_rows(cfg, params, args) if "sampler" in parts else []
  if "sft" in parts:
    rows.append(sft_row(cfg, params, args))
  if "mdpo" in parts:
    rows.append(mdpo_row(cfg, params, args))
  text = table(cfg, rows, peak, args)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
