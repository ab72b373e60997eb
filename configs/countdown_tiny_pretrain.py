"""Pretraining a tiny masked diffusion LM from scratch on generated arithmetic text, on a CPU.

600 steps: 49.7 min measured on this project's 2-core CPU while ~10 other jobs shared it; ~5 min
expected on an idle one (the SFT recipe's 0.43 s per step; not measured idle).

  python -m mdpo_jax.train --config configs/countdown_tiny_pretrain.py --workdir /tmp/cd_pretrain
  python -m mdpo_jax.train --config configs/countdown_tiny_sft.py --workdir /tmp/cd_sft \\
      --config.model.init_checkpoint=/tmp/cd_pretrain/checkpoints      # then SFT from it

The corpus is `generated:countdown_arithmetic` (mdpo_jax/data/generated.py: equations, solution
steps and boxed expressions over 2–3 numbers in 1–20, made on demand from a seed; no file, no
download). It is *unpaired* with respect to Countdown: no "Numbers / Target" prompt is ever
followed by its answer, so SFT on the paired problems afterwards is SMDM's setting for
unsupervised classifier-free guidance (benchmarks/cfg_sweep.py). The model has the SFT recipe's
shape (configs/countdown_tiny_sft.py: d_model 128, 4 layers, character tokens), so SFT starts
from this checkpoint as it is.

Optimiser: SMDM's pretraining settings (ML-GSAI/SMDM, pretrain/train_mdm.py): AdamW with betas
(0.9, 0.95), weight decay 0.1 on every parameter, eps 1e-8 (torch's default), gradient clipping
at global norm 1.0, linear warm-up for max(1% of the steps, 100) steps, then cosine decay to
lr/10 (2e-4 → 2e-5). Scaled down for a CPU:
  * lr 2e-3 instead of 2e-4 (end 2e-4, still lr/10): SMDM's rate is tuned for 6M–2B models at
    0.5M tokens per step; at this model's 4k tokens per step and a few hundred steps 2e-4 is far
    too slow (measured: mean loss over steps 151–200 of this schedule 2.75 at 2e-4, 1.74 at
    2e-3; README, "Pretraining from scratch"); 2e-3 is also the SFT recipe's rate;
  * batch 64 rows × 64 tokens (SMDM: 256 × 2048, packed): what a 2-core CPU steps ~2×/s idle;
  * 600 steps (SMDM: the step count its FLOPs budget gives, C / (6·N·256·2048)).
Everything else is as in SMDM: packed documents (EOS between them), no padding, per-row masking
rate t ~ U(0, 1) with the floor eps = 1e-3, loss Σ_masked CE / p over all B·L tokens.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.trainer = "pretrain"
  c.data.pretrain_files = "generated:countdown_arithmetic"
  c.data.seq_len = 64
  c.data.batch_size = 64
  c.optim.lr = 2e-3
  c.optim.end_lr_ratio = 0.1      # SMDM: min_lr = 2e-5 = lr / 10
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 100      # SMDM: max(num_steps / 100, 100)
  c.optim.b1, c.optim.b2 = 0.9, 0.95
  c.optim.weight_decay = 0.1
  c.optim.eps = 1e-8
  c.optim.clip_norm = 1.0
  c.train.num_steps = 600
  c.train.log_every = 50
  c.train.checkpoint_every = 600
  return c
