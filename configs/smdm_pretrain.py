"""SMDM's pretraining size ladder (6M – 2121M non-embedding parameters), for accelerators.

  python -m mdpo_jax.train --config configs/smdm_pretrain.py:170M --workdir /tmp/smdm_170m
  python -m mdpo_jax.train --config configs/smdm_pretrain.py:170M,10 ...   # FLOPs budget 10e18

The argument is `SIZE[,FLOPS]`: SIZE one of `SIZES` (SMDM's model names: non-embedding parameters
in millions, rounded), FLOPS the training budget in units of 1e18 as SMDM's `--flops` flag (its
README's examples: `--model 170 --flops 10`, `--model 1028 --flops 1600`). Without FLOPS the
budget is 6·N·(20·N) (20 tokens per non-embedding parameter: our default, not an SMDM number).

Source: ML-GSAI/SMDM. Shapes from lit_gpt/config.py (`Diff_LLaMA_<SIZE>M`: n_layer, n_head,
n_embd, intermediate_size; n_query_groups = n_head, i.e. no GQA; RMSNorm eps 1e-5, SwiGLU MLP,
RoPE base 10000 on the whole head, no biases, untied input/output embeddings, context 2048).
Optimiser and schedule from pretrain/train_mdm.py: AdamW lr 2e-4, betas (0.9, 0.95), weight
decay 0.1 on every parameter (torch's eps 1e-8), gradient clipping at global norm 1.0, linear
warm-up for max(steps / 100, 100) steps then cosine to 2e-5; global batch 256 sequences × 2048
tokens; steps = FLOPS / (6 · N · 256 · 2048) with N the non-embedding parameters; bf16 mixed
precision (float32 parameters, bfloat16 matmuls); no activation checkpointing.
`optim.grad_accum_steps` follows SMDM's micro-batch rule for its 8 GPUs (32 rows per device up to
20M, 16 up to 50M, 8 up to 1B, 4 above: accumulation 1 / 2 / 4 / 8); change it to fit memory.

Data: SMDM pretrained on SlimPajama with the LLaMA-2 tokenizer (32,000 tokens + the mask id). By
default this config reads the generated arithmetic corpus with the character tokenizer, so it
runs anywhere as it is (and the parameter counts that name the sizes do not depend on the
vocabulary); for the real thing point it at tokenized text and a tokenizer.json that has LLaDA's
special tokens (`mdpo_jax.data.tokenizer.LLADA_SPECIALS`):
  --config.data.pretrain_files=/data/slimpajama/train-00000.array_record,...
  --config.data.tokenizer=/path/to/tokenizer.json
Large sizes want FSDP across a slice: --config.mesh.fsdp=8 (or -1 with --config.mesh.data=1).
"""

from configs import base

# SMDM size → (n_layers, n_heads, d_model, mlp_hidden_size), from lit_gpt/config.py.
SHAPES = {
    "6M": (6, 4, 256, 1024), "19M": (8, 6, 384, 1536), "34M": (8, 8, 512, 2048),
    "48M": (9, 9, 576, 2304), "66M": (10, 10, 640, 2560), "75M": (16, 8, 640, 1600),
    "85M": (13, 10, 640, 2560), "113M": (12, 12, 768, 3072), "142M": (15, 12, 768, 3072),
    "170M": (18, 12, 768, 3072), "180M": (14, 14, 896, 3584), "206M": (16, 14, 896, 3584),
    "231M": (18, 14, 896, 3584), "268M": (16, 16, 1024, 4096), "302M": (18, 16, 1024, 4096),
    "336M": (20, 16, 1024, 4096), "472M": (18, 10, 1280, 5120), "551M": (21, 10, 1280, 5120),
    "571M": (18, 11, 1408, 5632), "629M": (24, 10, 1280, 5120), "666M": (21, 11, 1408, 5632),
    "717M": (19, 12, 1536, 6144), "761M": (24, 11, 1408, 5632), "831M": (22, 12, 1536, 6144),
    "944M": (25, 12, 1536, 6144), "1028M": (20, 14, 1792, 7168), "1233M": (24, 14, 1792, 7168),
    "1476M": (22, 16, 2048, 8192), "1678M": (25, 16, 2048, 8192),
    "2121M": (28, 17, 2176, 8704),
}
SIZES = tuple(SHAPES)
SEQ_LEN, BATCH = 2048, 256       # SMDM: block_size, global batch (sequences)
TOKENS_PER_PARAM = 20            # the default budget (ours, not SMDM's)


def non_embedding_params(n_layers: int, d_model: int, mlp_hidden_size: int) -> int:
  """What SMDM names its sizes by: per layer two RMSNorm scales, q/k/v/o (no GQA) and the
  SwiGLU MLP, plus the final norm; no embedding or output head."""
  per_layer = 2 * d_model + 4 * d_model * d_model + 3 * d_model * mlp_hidden_size
  return n_layers * per_layer + d_model


def _parse(arg: str) -> tuple[str, float | None]:
  size, _, flops = arg.partition(",")
  if size not in SHAPES:
    raise ValueError(f"--config=configs/smdm_pretrain.py:{arg}: size {size!r} is not SMDM's; "
                     f"allowed {', '.join(SIZES)} (optionally ,FLOPS in units of 1e18)")
  try:
    budget = float(flops) * 1e18 if flops else None
  except ValueError:
    budget = None
  if flops and not (budget and budget > 0):
    raise ValueError(f"--config=configs/smdm_pretrain.py:{arg}: FLOPS {flops!r} must be a "
                     "number > 0 (units of 1e18, as SMDM's --flops)")
  return size, budget


def get_config(arg: str = "170M"):
  size, flops = _parse(arg)
  n_layers, n_heads, d_model, mlp = SHAPES[size]
  n = non_embedding_params(n_layers, d_model, mlp)
  flops = flops or 6 * n * TOKENS_PER_PARAM * n
  steps = int(flops / (6 * n * BATCH * SEQ_LEN))
  warmup = max(steps // 100, 100)
  if steps < warmup:
    raise ValueError(f"--config=configs/smdm_pretrain.py:{arg}: {flops:.3g} FLOPs give {steps} "
                     f"steps of {BATCH}×{SEQ_LEN} tokens, fewer than SMDM's {warmup} warm-up "
                     "steps; allowed a larger FLOPS")
  c = base.get_config()
  c.trainer = "pretrain"
  c.model.n_layers, c.model.n_heads, c.model.n_kv_heads = n_layers, n_heads, n_heads
  c.model.d_model, c.model.mlp_hidden_size = d_model, mlp
  c.model.rope_theta = 10000.0
  c.model.max_sequence_length = SEQ_LEN
  c.model.dtype, c.model.param_dtype = "bfloat16", "float32"
  c.data.pretrain_files = "generated:countdown_arithmetic"
  c.data.seq_len, c.data.batch_size = SEQ_LEN, BATCH
  c.optim.lr, c.optim.end_lr_ratio, c.optim.schedule = 2e-4, 0.1, "cosine"
  c.optim.warmup_steps = warmup
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.95, 1e-8
  c.optim.weight_decay, c.optim.clip_norm = 0.1, 1.0
  named = int(size[:-1])          # SMDM's thresholds compare the size's name (--model)
  c.optim.grad_accum_steps = 1 if named <= 20 else 2 if named <= 50 else 4 if named <= 1000 else 8
  c.train.num_steps = steps
  c.train.log_every, c.train.checkpoint_every = 10, 5000
  return c
