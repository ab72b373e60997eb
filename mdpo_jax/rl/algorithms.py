"""RL algorithms as plug-ins: what an algorithm is, and the registry the config names them from.

The RL loop (`training/rl_loop.py`) owns everything algorithms share: prompts, rollouts from the
scan sampler, the reward pool, old-policy / reference log-probs, micro-batched updates,
checkpoints and logging. An algorithm says only what differs:

- `uses_trajectory`: whether rollouts record every step (x_t, x̂0_t, confidences);
- `rows_per_rollout(rl)`: training rows one rollout gives (for the micro-batch check);
- `rows(batch, scorer, rng, rl, mask_id=, eos_id=)`: a scored rollout batch → `Rows`;
- `logprob_io(rows)`: (input tokens, target tokens) whose log-probs the loss compares, so the
  loop can compute `old_logp` / `ref_logp` for it; `logp_temperature(rl)` their temperature;
- `needs_old_logp(rl)`: whether the loss's ratio needs stored old-policy log-probs;
- `loss(forward_fn, params, rows, rl)`: (scalar loss, metrics) — differentiated by the loop.

Optional hooks (the loop uses them when an algorithm has them, else its defaults):

- `extra_params(rl)`, `extra_optimizer(rl)`, `extra_name`: the algorithm's own trainable state
  beside the model's (Co-GRPO's schedule policy φ). The loop keeps it, with its optimiser state,
  in the checkpointed train state (`ExtraTrainState.extra`), passes `(params, extra params)` to
  `loss` and steps each with its optimiser; `trains(rl) -> (model, extra)` says which step;
- `loss_context(run) -> dict`: static keyword arguments of `loss` (e.g. the sampler's ids);
- `rollout(sample_fn, params, state, prompts_BxP, prompt_mask_BxP, problems, sampler_config,
  rng, rl) -> RolloutBatch`: the algorithm's own rollouts (default: `rollout.sample`);
- `finish(run, state)`: an end-of-run report (Co-GRPO prints and saves the learned schedule).

`logprob_io` may return [N, S, L] inputs (several per row); the loop flattens them.

Adding an algorithm is a module in `rl/` with such an object and one line in `ALGORITHMS`; the
config selects it with `trainer=<name>`.
"""

from __future__ import annotations

from typing import Any, Protocol

from mdpo_jax.rl import cogrpo, diffu_grpo, mdpo
from mdpo_jax.rl.rollout import Rows


class Algorithm(Protocol):
  name: str
  uses_trajectory: bool

  def rows_per_rollout(self, rl: Any) -> int: ...
  def rows(self, batch, scorer, rng, rl, *, mask_id: int, eos_id: int) -> Rows: ...
  def logprob_io(self, rows: dict) -> tuple[Any, Any]: ...
  def logp_temperature(self, rl: Any) -> float: ...
  def needs_old_logp(self, rl: Any) -> bool: ...
  def loss(self, forward_fn, params, rows: dict, rl: Any): ...


ALGORITHMS: dict[str, Algorithm] = {
    "mdpo": mdpo.MDPO(),
    "diffu_grpo": diffu_grpo.DiffuGRPO(),
    "cogrpo": cogrpo.CoGRPO(),
}
ALGORITHM_NAMES = tuple(ALGORITHMS)


def get(name: str) -> Algorithm:
  if name not in ALGORITHMS:
    raise ValueError(f"trainer={name!r}: allowed RL algorithms {ALGORITHM_NAMES}")
  return ALGORITHMS[name]
