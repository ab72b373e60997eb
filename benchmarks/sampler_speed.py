"""Sampler speed: the one-jit scan vs a Python loop, and the fast-sampling grid (KV cache and
confidence-threshold decoding) — all measured in one run, as ratios.

  python benchmarks/sampler_speed.py [--d_model 256 --layers 4 --batch 8 --gen 128 --steps 64]
  python benchmarks/sampler_speed.py --grid [--sizes tiny,25m --gens 256:32 --batches 1,8]

Default mode: both samplers run the same model and remasking rule; the loop version is what a
straightforward port of the PyTorch reference does (one dispatch and one host round trip per
denoising step). Prints milliseconds per call (median of repeats, after a warm-up compile) and the
ratio; also the compile time of the scan version.

--grid: for cache none / prefix / dual, each without and with a threshold (--modes), at one
token per step (steps = gen_length, the cap under a threshold): wall time per call, model calls
(NFE), model GFLOP per generated token (counted from the windows each call ran: 2·params·tokens
for the matmuls plus 4·d·tokens·keys per layer for attention), achieved GFLOP/s against this
machine's matmul peak measured in the same run, the first call's time (compile + run), and the
speed-up over the first mode (cache=none without a threshold by default). The none baseline at one token per step is slow on a CPU; `--baseline_calls`
times it over fewer steps (the cost of a full-sequence call does not depend on the step count)
and scales to gen_length calls — marked "extrapolated" in the table. Random weights: NFE under a
threshold depends on the model's confidences (`--head_scale` sharpens them); the README's
accuracy table gives NFE on a trained model.
"""

import argparse
import functools
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mdpo_jax.models import llada
from mdpo_jax.sampling import remask
from mdpo_jax.sampling.sampler import SamplerConfig, generate


def loop_generate(fwd, params, prompt, sc: SamplerConfig):
  """Low-confidence decoding, one jitted step per Python iteration (host syncs each step)."""
  counts = sc.schedule_counts()

  @functools.partial(jax.jit, static_argnames=("n",))
  def step(x, block_end, n):
    logits = fwd(params, x).at[..., sc.mask_id].set(-jnp.inf)
    x0 = jnp.argmax(logits, -1)
    conf = remask.confidence("low_confidence", logits, x0)
    eligible = (x == sc.mask_id) & (jnp.arange(x.shape[1]) < block_end)
    return remask.commit_low_confidence(x, x0, conf, eligible, n, n)[0]

  b, p = prompt.shape
  x = jnp.concatenate([prompt, jnp.full((b, sc.gen_length), sc.mask_id, jnp.int32)], 1)
  for t in range(sc.steps):
    blk, i = divmod(t, sc.steps_per_block)
    x = step(x, p + (blk + 1) * sc.block_length, int(counts[i]))
    x.block_until_ready()  # as a per-step loop with host-side logic must
  return x


def timed(fn, repeats):
  out = fn()
  jax.block_until_ready(out)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times) * 1e3, out


def matmul_peak_gflops(n: int = 2048, repeats: int = 10, dtype: str = "float32") -> float:
  """GFLOP/s of one large jitted matmul in `dtype`, best of `repeats` (a shared machine only
  ever slows it down): the roofline the grid's numbers are read against (MFU on accelerators)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(f(a, a))
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(f(a, a))
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best / 1e9


def model_of(size: str, dtype: str = "float32"):
  """LLaDA-shaped benchmark models (SwiGLU, RoPE, MHA); `dtype` for matmuls and parameters."""
  kw = dict(dtype=dtype, param_dtype=dtype, max_sequence_length=4096)
  if size == "tiny":
    return llada.tiny(vocab_size=512, d_model=128, n_layers=2, n_heads=2, n_kv_heads=2,
                      mlp_hidden_size=512, init_std=0.3, **kw)
  if size == "25m":   # ~23M parameters
    return llada.tiny(vocab_size=4096, d_model=512, n_layers=6, n_heads=8, n_kv_heads=8,
                      mlp_hidden_size=1376, init_std=0.05, **kw)
  if size == "1b":    # ~1.2B parameters, LLaDA's vocabulary: for accelerators (--dtype bfloat16)
    return llada.tiny(vocab_size=126464, d_model=2048, n_layers=16, n_heads=16, n_kv_heads=16,
                      mlp_hidden_size=5632, init_std=0.02, **kw)
  raise SystemExit(f"--sizes: unknown size {size!r} (allowed tiny, 25m, 1b)")


def call_gflop(cfg, queries: int, keys: int) -> float:
  """Model FLOPs of one forward of `queries` positions attending to `keys` (one row)."""
  dense = cfg.num_params() - cfg.vocab_size * cfg.d_model   # the embedding lookup is free
  return (2 * dense * queries + 4 * cfg.n_layers * cfg.d_model * queries * keys) / 1e9


def grid(args):
  peak = matmul_peak_gflops(4096 if jax.default_backend() != "cpu" else 2048, dtype=args.dtype)
  print(f"device: {jax.devices()[0].device_kind} ×{jax.device_count()}; {args.dtype} matmul "
        f"peak {peak:.0f} GFLOP/s (square matmul, this run)")
  print("| model | gen/block | batch | cache | τ | ms / call | NFE | GFLOP / token | GFLOP/s | "
        "% peak | 1st call s | speed-up |\n|" + "---|" * 12)
  for size in args.sizes.split(","):
    cfg = model_of(size, args.dtype)
    params = llada.init_params(cfg, jax.random.key(0))
    params = {**params, "lm_head": params["lm_head"] * args.head_scale}
    fwd = llada.forward_fn(cfg)
    for gen_block in args.gens.split(","):
      gen, block = (int(v) for v in gen_block.split(":"))
      for batch in (int(b) for b in args.batches.split(",")):
        prompt = jax.random.randint(jax.random.key(1), (batch, args.prompt), 0,
                                    cfg.vocab_size - 8, jnp.int32)
        total, n_blocks = args.prompt + gen, gen // block
        base_ms = None
        for mode in args.modes.split(","):
          cache, _, tau_text = mode.partition(":")
          tau = float(tau_text) if tau_text else None
          sc = SamplerConfig.for_model(cfg, gen_length=gen, block_length=block, steps=gen,
                                       cache=cache, threshold=tau)
          note = ""
          if cache == "none" and tau is None and args.baseline_calls < gen:
            sc = sc.replace(steps=args.baseline_calls)   # same per-call cost, fewer calls
            note = f" (extrapolated from {args.baseline_calls} calls)"
          run = lambda sc=sc: generate(fwd, params, prompt, sc, jax.random.key(0),
                                       return_nfe=True)
          start = time.perf_counter()
          jax.block_until_ready(run())
          compile_s = time.perf_counter() - start
          ms, (_, nfe) = timed(run, args.repeats)
          nfe = int(nfe)
          if note:   # scale the measured calls to one token per step
            ms, nfe = ms * gen / sc.steps, gen
          # FLOPs: one full call per block start, windows for the rest
          width = block if cache == "dual" else None
          flop = 0.0
          if cache == "none":
            flop = nfe * call_gflop(cfg, total, total)
          else:
            per_block_calls = nfe / n_blocks   # the threshold's calls, spread over blocks
            for b in range(n_blocks):
              w = width or (total - args.prompt - b * block)
              flop += call_gflop(cfg, total, total) + (per_block_calls - 1) * call_gflop(
                  cfg, w, total)
          flop *= batch
          base_ms = base_ms or ms
          achieved = flop / (ms / 1e3)
          print(f"| {size} ({cfg.num_params() / 1e6:.1f}M) | {gen}/{block} | {batch} | "
                f"{cache} | {tau or '-'} | {ms:.0f}{note} | {nfe} | "
                f"{flop / (batch * gen):.3f} | {achieved:.0f} | {100 * achieved / peak:.0f} | "
                f"{compile_s:.1f} | {base_ms / ms:.2f}× |", flush=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--grid", action="store_true", help="the fast-sampling table")
  parser.add_argument("--sizes", default="tiny,25m")
  parser.add_argument("--gens", default="256:32", help="gen_length:block_length, comma-separated")
  parser.add_argument("--batches", default="1,8")
  parser.add_argument("--modes", default="none,none:0.9,prefix,prefix:0.9,dual,dual:0.9",
                      help="cache[:threshold], comma-separated; the first is the speed-up's base")
  parser.add_argument("--head_scale", type=float, default=1.0)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--baseline_calls", type=int, default=1 << 30)
  parser.add_argument("--d_model", type=int, default=128)
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--prompt", type=int, default=32)
  parser.add_argument("--gen", type=int, default=64)
  parser.add_argument("--block", type=int, default=32)
  parser.add_argument("--steps", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  if args.grid:
    return grid(args)

  cfg = llada.tiny(vocab_size=512, d_model=args.d_model, n_layers=args.layers,
                   n_heads=max(args.d_model // 64, 1), n_kv_heads=max(args.d_model // 64, 1),
                   mlp_hidden_size=4 * args.d_model, init_std=0.3)
  params = llada.init_params(cfg, jax.random.key(0))
  prompt = jax.random.randint(jax.random.key(1), (args.batch, args.prompt), 0, 500, jnp.int32)
  sc = SamplerConfig.for_model(cfg, gen_length=args.gen, block_length=args.block,
                               steps=args.steps)
  fwd = llada.forward_fn(cfg)

  start = time.perf_counter()
  jax.block_until_ready(generate(fwd, params, prompt, sc, jax.random.key(0)))
  compile_s = time.perf_counter() - start
  scan_ms, scan_out = timed(lambda: generate(fwd, params, prompt, sc, jax.random.key(0)),
                            args.repeats)
  loop_ms, loop_out = timed(lambda: loop_generate(fwd, params, prompt, sc), args.repeats)
  same = bool(np.array_equal(np.asarray(scan_out), np.asarray(loop_out)))

  print(f"device: {jax.devices()[0].device_kind} ×{jax.device_count()}; model "
        f"{cfg.num_params() / 1e6:.1f}M params; batch {args.batch}, prompt {args.prompt}, "
        f"gen {args.gen}, block {args.block}, steps {args.steps}")
  print("| sampler | ms / call | ms / step | ratio |\n|---|---|---|---|")
  print(f"| scan (one jit) | {scan_ms:.1f} | {scan_ms / args.steps:.2f} | 1.00 |")
  print(f"| Python loop of jitted steps | {loop_ms:.1f} | {loop_ms / args.steps:.2f} | "
        f"{loop_ms / scan_ms:.2f} |")
  print(f"scan first call (compile + run): {compile_s:.1f}s; outputs identical: {same}")


if __name__ == "__main__":
  main()
