"""What a run needs per device, from the compiler: the run's own jitted programs lowered against
abstract parameters on a mesh, compiled, and read back with `compiled.memory_analysis()`.

No weight is materialised. Parameters are the family's `abstract_params` placed by its
`param_shardings`; the training state is `state.abstract_sharded` (the optimiser state by
`jax.eval_shape` of the run's optimiser init, sharded exactly as `state.create_sharded` shards
it); every input is a `jax.ShapeDtypeStruct` placed the way the loops place it: a training batch
split over the data axes (`parallel.batch_sharding`, as `shard_batch` does), and the host NumPy
arrays the loops hand to jit directly — rollout and evaluation prompts, the rows whose old or
reference log-probs are computed — replicated, which is where jit puts a NumPy argument. The
programs, each the real function of the loops:

  sft       the supervised step (`sft_loop.make_train_step`, jitted as `sft_loop.train` does)
  update    the RL update (`rl_loop.make_update`): micro-batched gradients, one optimiser step
  logprobs  old-policy / reference log-probs of an update's rows (`rl_loop.logprob_fn`)
  rollout   the rollout sampler (`sampler.generate`), once per `rl.block_lengths` entry
  eval      the evaluation sampler of each distinct `eval` setting (`evaluation.sample_fn`)

The RL rows are made by the algorithm's own `rows` from a zero-filled rollout batch of the real
shapes, so any registered algorithm is planned without knowing its row layout.

Accounting, per device: what stays resident for the whole run — trainable params, a LoRA run's
frozen base, the optimiser state (with the step counter and RNG key), the frozen reference copy
for β > 0 — is counted once. Each program adds what it needs beyond the resident arrays it is
given: arguments + outputs − donated (aliased) + temporaries − resident arguments. The run
needs the resident bytes plus the largest such addition (`Plan.total`).

These are XLA's buffer assignments for the *CPU* backend on virtual devices: the sharding
decisions (the SPMD partitioner) are those an accelerator compile makes, fusion and layout are
the CPU compiler's, so the figures estimate a TPU/GPU compile rather than reproduce it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from mdpo_jax import config as config_lib
from mdpo_jax import parallel
from mdpo_jax.models import families, lora
from mdpo_jax.rl import algorithms
from mdpo_jax.rl.rollout import RolloutBatch
from mdpo_jax.sampling.sampler import SamplerConfig, Trajectory, generate
from mdpo_jax.training import evaluation, optim, rl_loop, setup, sft_loop
from mdpo_jax.training import state as state_lib
from mdpo_jax.training import policy as policy_lib
from mdpo_jax.training.policy import Policy

PROGRAMS = ("sft", "update", "logprobs", "rollout", "eval")


def tree_bytes(tree) -> int:
  """Bytes one device holds of `tree` (arrays, or ShapeDtypeStructs with shardings): the sum of
  each leaf's shard (equal shards: `logical_to_spec` drops mesh axes that do not divide)."""
  total = 0
  for x in jax.tree.leaves(tree):
    total += math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
  return total


def _sds(shape, dtype, sharding) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def _placed(tree, shardings):
  return jax.tree.map(lambda s, sh: _sds(s.shape, s.dtype, sh), tree, shardings)


def _replicated(mesh, tree):
  """`tree`'s shapes as jit receives host NumPy arguments: whole on every device."""
  everywhere = NamedSharding(mesh, PartitionSpec())
  return jax.tree.map(lambda x: _sds(x.shape, x.dtype, everywhere), tree)


def _batch(mesh, rules, tree):
  """`tree`'s shapes as `parallel.shard_batch` places them: leading axis over the data axes."""
  return jax.tree.map(lambda x: _sds(x.shape, x.dtype,
                                     parallel.batch_sharding(mesh, len(x.shape), rules)), tree)


# ----------------------------------------------------------------------------------------------
# The run, abstractly.
# ----------------------------------------------------------------------------------------------


_HF_OVERRIDES = setup.HF_RUNTIME_FIELDS   # what `setup._load_hf` passes on


def model_config(config: config_lib.RunConfig) -> families.ModelConfig:
  """The run's model config without loading weights.

  A Hugging Face folder (`model.hf_checkpoint`): its config.json with the run's remat, scan and
  padding settings and its dtypes where set (`_run_dtypes`), as `setup.load_model` reads it. `data.tokenizer=""` without a folder (the
  8B recipes, planned before the checkpoint is downloaded; their run reads the folder named on
  the command line): the preset as published — its shape, vocabulary and special ids — with
  those same runtime settings, since a folder's config.json, not `model.d_model` & co., sets
  the shape. Otherwise the preset with the run's overrides and tokenizer ids
  (`setup.model_config`)."""
  m = config.model
  family = families.get(m.family)
  runtime = {k: getattr(m, k) for k in _HF_OVERRIDES if getattr(m, k) not in (None, "")}
  if m.hf_checkpoint:
    hf_json = json.loads((Path(m.hf_checkpoint) / families.CONFIG_FILE).read_text())
    return _run_dtypes(family.hf.config_from_hf(hf_json, **runtime), m)
  if config.data.tokenizer:
    return setup.model_config(config, setup.make_tokenizer(config))
  return _run_dtypes(dataclasses.replace(families.preset(m.family, m.preset), **runtime), m)


def _run_dtypes(model_cfg, m):
  """The compute and parameter dtypes `setup._load_hf` loads a folder with: the run's
  `model.dtype` / `model.param_dtype` where set, else the folder's own type."""
  dtype = m.dtype or model_cfg.dtype
  return dataclasses.replace(model_cfg, dtype=dtype, param_dtype=m.param_dtype or dtype)


@dataclasses.dataclass(frozen=True)
class Abstract:
  """A run's model, policy, optimiser and training state as abstract arrays on `mesh`."""

  config: config_lib.RunConfig
  mesh: jax.sharding.Mesh
  rules: tuple
  model_cfg: families.ModelConfig
  policy: Policy          # with LoRA its `base` is the abstract frozen base
  optimizer: Any
  schedule: Any
  state: state_lib.TrainState          # ShapeDtypeStructs with shardings
  state_shardings: state_lib.TrainState
  reference: Any          # the frozen reference copy (full fine-tune, β > 0) or None

  @property
  def resident(self) -> dict[str, int]:
    """Bytes per device held for the whole run, by kind."""
    state = self.state
    return {"params": tree_bytes(state.params), "base": tree_bytes(self.policy.base),
            "optimizer": tree_bytes((state.opt_state, state.step, state.rng)),
            "reference": tree_bytes(self.reference)}


def abstract_run(config: config_lib.RunConfig, mesh: jax.sharding.Mesh) -> Abstract:
  """`config`'s run as `training.run.setup_run` builds it, with abstract arrays on `mesh`."""
  rules = setup.rules(config)
  model_cfg = model_config(config)
  model = families.of_config(model_cfg).model
  params = _placed(model.abstract_params(model_cfg),
                   model.param_shardings(model_cfg, mesh, rules))
  lora_cfg = setup.lora_config(config, model_cfg)
  policy, trainable = Policy(model_cfg, None, None), params
  frozen = jax.tree.map(   # `policy.frozen_copy`: weights that never train, in compute dtype
      lambda s: _sds(s.shape, policy_lib.frozen_dtype(s.dtype, model_cfg), s.sharding), params)
  if lora_cfg is not None:
    policy = Policy(model_cfg, lora_cfg, frozen)
    trainable = _placed(lora.abstract_adapters(model_cfg, lora_cfg),
                        lora.adapter_shardings(model_cfg, lora_cfg, mesh, rules))
  optimizer = optim.make_optimizer(config.optim, config.optimizer_steps)
  state = state_lib.abstract_sharded(trainable, optimizer, config.seed, mesh)
  reference = None   # rl_loop: a copy of the start for a full fine-tune; LoRA's is the base
  if config.is_rl and config.rl.beta > 0 and lora_cfg is None:
    reference = frozen
  return Abstract(config=config, mesh=mesh, rules=rules, model_cfg=model_cfg, policy=policy,
                  optimizer=optimizer,
                  schedule=optim.learning_rate_schedule(config.optim, config.optimizer_steps),
                  state=state, state_shardings=jax.tree.map(lambda x: x.sharding, state),
                  reference=reference)


# ----------------------------------------------------------------------------------------------
# The programs, each a `Lowering`: lower() gives (jax Lowered, resident argument bytes).
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Lowering:
  """A program to compile. Its memory depends on the mesh, `name`, and the micro-batch and
  remat when they are set (None: it does not depend on them), so a grid compiles it once."""

  kind: str                 # one of PROGRAMS
  name: str
  micro_batch: int | None
  remat: str | None
  lower: Callable[[], tuple[Any, int]]   # () -> (jax Lowered, resident argument bytes)


def _resident_state(ab: Abstract) -> int:
  return tree_bytes(ab.state) + tree_bytes(ab.policy.base)


def sft_programs(ab: Abstract) -> list[Lowering]:
  """The supervised step, jitted as `sft_loop.train` jits it, on one global batch."""
  c = ab.config

  def lower():
    step = sft_loop.make_train_step(c.trainer, ab.policy, ab.optimizer, ab.schedule,
                                    accum=c.optim.grad_accum_steps, mask_eps=c.optim.mask_eps)
    jitted = jax.jit(step, donate_argnums=0, out_shardings=(ab.state_shardings, None))
    keys = ("tokens", "prompt_mask") if c.trainer == "sft" else ("tokens",)   # the pipeline's
    host = {k: jax.ShapeDtypeStruct((c.data.batch_size, c.data.seq_len), jnp.int32)
            for k in keys}
    return (jitted.lower(ab.state, _batch(ab.mesh, ab.rules, host), ab.policy.base),
            _resident_state(ab))

  return [Lowering("sft", "sft step", rows_per_micro_batch(c), c.model.remat, lower)]


class _ZeroScorer:
  """Rewards of 0 for every prediction: an algorithm's row shapes do not depend on them."""

  def step_rewards(self, batch: RolloutBatch):
    t, n = batch.traj.x.shape[:2]
    return np.zeros((n, t), np.float32), {"timeouts": 0, "errors": 0, "crashes": 0}

  def final_rewards(self, batch: RolloutBatch):
    return (np.zeros(batch.tokens_NxL.shape[0], np.float32),
            {"timeouts": 0, "errors": 0, "crashes": 0})


def rl_rows(config: config_lib.RunConfig, model_cfg) -> dict[str, np.ndarray]:
  """One update's training rows as the loop makes them (zeros of the real shapes and dtypes):
  the algorithm's `rows` on a zero rollout batch, plus the log-probs `_with_logprobs` adds."""
  rl, algorithm = config.rl, algorithms.get(config.trainer)
  n, p = rl.prompts_per_update * rl.group_size, config.data.prompt_len
  length = p + rl.gen_length
  zeros = lambda shape, dtype: np.zeros(shape, dtype)  # noqa: E731
  traj = Trajectory(**{f: zeros((rl.steps, n, length), np.float32 if f == "confidence" else
                                bool if f == "committed" else np.int32)
                       for f in ("x", "x0", "confidence", "committed")},
                    **{f: zeros((rl.steps, n), bool) for f in Trajectory._fields[4:]})
  batch = RolloutBatch(zeros((n, p), np.int32), np.ones((n, p), np.int32),
                       zeros((n, length), np.int32), traj, [None] * n, rl.group_size)
  rows = dict(algorithm.rows(batch, _ZeroScorer(), jax.random.key(0), rl,
                             mask_id=model_cfg.mask_token_id, eos_id=model_cfg.eos_token_id).rows)
  tokens_in, _ = algorithm.logprob_io(rows)
  for key, needed in (("old_logp", algorithm.needs_old_logp(rl)), ("ref_logp", rl.beta > 0)):
    if needed:
      rows[key] = zeros(np.shape(tokens_in), np.float32)
  return rows


@dataclasses.dataclass(frozen=True)
class _UpdateRun:
  """The fields of `training.run.Run` that `rl_loop.make_update` reads."""
  config: config_lib.RunConfig
  policy: Policy
  optimizer: Any
  state_shardings: Any


def rl_programs(ab: Abstract) -> list[Lowering]:
  """The RL update on one update's rows (batch-sharded, as `shard_batch` places them), the
  old/reference log-prob pass the loss needs, and the rollout sampler per block length."""
  c = ab.config
  algorithm = algorithms.get(c.trainer)
  rows = rl_rows(c, ab.model_cfg)

  def update():
    fn = rl_loop.make_update(algorithm, _UpdateRun(c, ab.policy, ab.optimizer,
                                                   ab.state_shardings))
    return (fn.lower(ab.state, _batch(ab.mesh, ab.rules, rows), ab.policy.base),
            _resident_state(ab))

  out = [Lowering("update", "rl update", c.rl.micro_batch, c.model.remat, update)]
  return out + _logprob_programs(ab, algorithm, rows) + _rollout_programs(ab, algorithm)


def _logprob_programs(ab: Abstract, algorithm, rows) -> list[Lowering]:
  """`rl_loop.logprob_fn` as `_Learner._with_logprobs` calls it: the policy's (old) log-probs
  when the loss has a ratio, the reference's when β > 0 (one program when they coincide)."""
  rl = ab.config.rl
  tokens_in, targets = algorithm.logprob_io(rows)
  host = _replicated(ab.mesh, (tokens_in, targets, rows["attention_mask"]))
  temperature = algorithm.logp_temperature(rl)
  lora_on = ab.policy.lora_cfg is not None
  wanted = []   # (name, forward, params)
  if algorithm.needs_old_logp(rl):
    wanted.append(("old", ab.policy.sample_fn, ab.policy.sample_params(ab.state.params)))
  if rl.beta > 0:
    wanted.append(("ref", families.forward_fn(ab.model_cfg) if lora_on else ab.policy.sample_fn,
                   ab.policy.base if lora_on else ab.reference))
  if len(wanted) == 2 and not lora_on:   # the same program on the same shapes
    wanted = [("old/ref", wanted[0][1], wanted[0][2])]

  def lowering(name, forward, params):
    def lower():
      fn = rl_loop.logprob_fn(forward, temperature, rl.micro_batch)
      return fn.lower(params, *host), tree_bytes(params)
    return Lowering("logprobs", f"{name} log-probs", rl.micro_batch, None, lower)

  return [lowering(*w) for w in wanted]


def _sampler_lowering(ab: Abstract, sample, forward_fn, params, rows: int,
                      sc: SamplerConfig, trajectory: bool, resident: int, *,
                      split_rows: bool = False):
  """`sample(forward_fn, params, prompts, sc, key, ...)` on `rows` host prompts: replicated, or
  with `split_rows` placed as `parallel.shard_rows` places them (the RL loop's rollouts)."""
  p = ab.config.data.prompt_len
  prompts = jax.ShapeDtypeStruct((rows, p), jnp.int32)
  if split_rows and rows % parallel.data_degree(ab.mesh) == 0:
    prompts = _batch(ab.mesh, ab.rules, prompts)
  else:
    prompts = _replicated(ab.mesh, prompts)
  key = _replicated(ab.mesh, jax.eval_shape(lambda: jax.random.key(0)))
  fn = jax.jit(lambda params, prompts, mask, rng: sample(
      forward_fn, params, prompts, sc, rng, prompt_mask=mask, return_trajectory=trajectory))
  return fn.lower(params, prompts, prompts, key), resident


def _rollout_programs(ab: Abstract, algorithm) -> list[Lowering]:
  """`rollout.sample`'s `generate` call: B·G rows split over the data axes, the sampler
  `_Learner.sampler_config` builds for each block length, the trajectory record when the
  algorithm uses it."""
  rl = ab.config.rl
  params = ab.policy.sample_params(ab.state.params)
  resident = tree_bytes(params)
  out = []
  for block in sorted(set(rl.block_lengths)):
    sc = SamplerConfig.for_model(ab.model_cfg, gen_length=rl.gen_length, block_length=block,
                                 steps=rl.steps, remasking=rl.remasking, cache=rl.cache,
                                 temperature=rl.temperature, head_chunk=rl.head_chunk)
    lower = (lambda sc=sc: _sampler_lowering(
        ab, generate, ab.policy.sample_fn, params, rl.prompts_per_update * rl.group_size, sc,
        algorithm.uses_trajectory, resident, split_rows=True))
    out.append(Lowering("rollout", f"rollout (block {block})", None, None, lower))
  return out


def eval_programs(ab: Abstract) -> list[Lowering]:
  """`evaluation.evaluate`'s sampler calls: one per distinct setting of `eval`, on
  `eval.batch_size` prompts; the params are the trained ones (LoRA: a merged copy)."""
  ev, model_cfg = ab.config.eval, ab.model_cfg
  lora_on = ab.policy.lora_cfg is not None
  params = ab.policy.base if lora_on else ab.state.params   # merged: the base's shapes
  resident = 0 if lora_on else tree_bytes(params)
  rows = min(ev.batch_size, ev.num_problems)
  out, seen = [], set()
  for setting in evaluation.settings_from_config(ev):
    sc = setting.sampler_config(model_cfg, gen_length=ev.gen_length,
                                block_length=ev.block_length)
    trajectory = bool(ev.trajectory_stats) and setting.sampler != "ar"
    if (setting.sampler, sc, trajectory) in seen:
      continue
    seen.add((setting.sampler, sc, trajectory))
    sample = evaluation.sample_fn(setting.sampler, nfe=True)
    lower = (lambda sc=sc, sample=sample, trajectory=trajectory: _sampler_lowering(
        ab, sample, families.forward_fn(model_cfg), params, rows, sc, trajectory, resident))
    out.append(Lowering("eval", f"eval {setting.name}", None, None, lower))
  return out


# ----------------------------------------------------------------------------------------------
# Measuring and accounting.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Program:
  """One compiled program's bytes per device (XLA's `memory_analysis()`) and how many of its
  argument bytes are resident anyway."""

  kind: str                 # one of PROGRAMS
  name: str
  micro_batch: int | None   # those the program depends on (None: it does not)
  remat: str | None
  argument: int
  output: int
  alias: int      # outputs written into donated arguments (the updated training state)
  temp: int
  resident_args: int
  seconds: float  # lower + compile

  @property
  def peak(self) -> int:
    return self.argument + self.output - self.alias + self.temp

  @property
  def extra(self) -> int:
    """What the program needs beyond the run's resident arrays."""
    return self.peak - self.resident_args


def measure(lowering: Lowering) -> Program:
  """Lower and compile one program; its memory analysis per device."""
  start = time.perf_counter()
  lowered, resident = lowering.lower()
  stats = lowered.compile().memory_analysis()
  return Program(lowering.kind, lowering.name, lowering.micro_batch, lowering.remat,
                 int(stats.argument_size_in_bytes),
                 int(stats.output_size_in_bytes), int(stats.alias_size_in_bytes),
                 int(stats.temp_size_in_bytes), int(resident), time.perf_counter() - start)


@dataclasses.dataclass(frozen=True)
class Plan:
  """Per-device bytes of a run on one mesh: resident arrays by kind, and each program."""

  mesh: dict[str, int]
  params: int       # trainable: full params, or LoRA adapters
  base: int         # a LoRA run's frozen base
  optimizer: int    # optimiser state (+ step counter and RNG key)
  reference: int    # the frozen reference copy (full fine-tune with β > 0)
  programs: tuple[Program, ...]

  @property
  def resident(self) -> int:
    return self.params + self.base + self.optimizer + self.reference

  @property
  def largest(self) -> Program | None:
    return max(self.programs, key=lambda p: p.extra, default=None)

  @property
  def total(self) -> int:
    """Resident bytes plus the most any one program needs beyond them."""
    return self.resident + (self.largest.extra if self.programs else 0)

  def to_json(self) -> dict:
    out = dataclasses.asdict(self)
    out["programs"] = [{**dataclasses.asdict(p), "peak": p.peak, "extra": p.extra}
                       for p in self.programs]
    out.update(resident=self.resident, total=self.total)
    return out


def lowerings(ab: Abstract) -> list[Lowering]:
  """Every program of the run: its training program(s), then evaluation."""
  train = rl_programs(ab) if ab.config.is_rl else sft_programs(ab)
  return train + eval_programs(ab)


def plan(config: config_lib.RunConfig, mesh: jax.sharding.Mesh, *,
         programs: tuple[str, ...] = PROGRAMS, cache: dict | None = None) -> Plan:
  """The run's per-device memory on `mesh`: the programs whose kind is in `programs` are
  compiled (or taken from `cache`, keyed by mesh shape and what each program depends on)."""
  ab = abstract_run(config, mesh)
  cache = {} if cache is None else cache
  measured = []
  for lowering in lowerings(ab):
    if lowering.kind not in programs:
      continue
    key = (tuple(mesh.shape.items()), lowering.name, lowering.micro_batch, lowering.remat)
    if key not in cache:
      # traced as the run's loops trace it (`Run`)
      with parallel.mesh_context(mesh, config.mesh.constrain_rows):
        cache[key] = measure(lowering)
    measured.append(cache[key])
  return Plan(mesh=dict(mesh.shape), **ab.resident, programs=tuple(measured))


def variant(config: config_lib.RunConfig, *, micro_batch: int | None = None,
            remat: str | None = None) -> config_lib.RunConfig:
  """`config` with another micro-batch (RL: `rl.micro_batch` rows; SFT: rows per micro-batch,
  i.e. `optim.grad_accum_steps = data.batch_size / micro_batch`) and/or `model.remat`,
  validated again."""
  tree = config.to_json()
  if remat is not None:
    tree["model"]["remat"] = remat
  if micro_batch is not None and config.is_rl:
    tree["rl"]["micro_batch"] = micro_batch
  elif micro_batch is not None:
    if micro_batch < 1 or config.data.batch_size % micro_batch:
      raise ValueError(f"micro-batch {micro_batch}: an SFT micro-batch must divide "
                       f"data.batch_size={config.data.batch_size}")
    tree["optim"]["grad_accum_steps"] = config.data.batch_size // micro_batch
  return config_lib.parse(tree)


def rows_per_micro_batch(config: config_lib.RunConfig) -> int:
  """Rows per forward/backward: `rl.micro_batch`, or the SFT batch over its accumulation."""
  if config.is_rl:
    return config.rl.micro_batch
  return config.data.batch_size // config.optim.grad_accum_steps
