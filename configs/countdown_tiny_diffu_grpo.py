"""The diffu-GRPO (d1) baseline on the tiny Countdown model, from the same SFT start (CPU).

  python -m mdpo_jax.train --config configs/countdown_tiny_diffu_grpo.py \
      --workdir /tmp/countdown_grpo --config.model.init_checkpoint=/tmp/countdown_sft/checkpoints

One-step log-prob estimate (every completion token masked, prompt tokens masked with p = 0.15,
the same mask for new/old/reference), clipped ratio ε = 0.5, advantage r − group mean, and d1's
k3 KL to the SFT start with β = 0.04. MDPO's budget exactly: 100 rollout batches, one optimiser
step each, lr 1e-4. d1 takes 12 inner updates per batch; here 4 inner updates at this lr drove
the token ratio to 3.6 within one batch and fell below the SFT start (validation 0.178 vs
0.206), while 1 inner update gave 0.232 (the best of four settings on seed 0's validation
split). That recipe had no KL term (β = 0) and collapsed to 0% on seed 1's held-out problems
(rollout reward 0.28 → 0 by update 71); with d1's β = 0.04 — d1's value, not tuned, adopted after
that collapse — it improves steadily on both seeds (README "The miniature reproduction").
"""

from configs import countdown_tiny_mdpo


def get_config():
  return with_diffu_grpo(countdown_tiny_mdpo.get_config())


def with_diffu_grpo(c):
  """An MDPO recipe turned into the tiny diffu-GRPO one (also Sudoku's): MDPO's rollouts,
  prompts, lr and update count; one clipped update (ε = 0.5) per rollout batch; d1's KL."""
  c.trainer = "diffu_grpo"
  c.rl.clip_eps = 0.5
  c.rl.inner_iters = 1
  c.rl.beta = 0.04
  return c
