"""One device mesh, logical axis names, and the shardings they give.

Parameters carry logical axis names (`vocab`, `embed`, `heads`, `kv_heads`, `head_dim`, `mlp`,
`layers`, `norm`); a rules table maps each onto mesh axes `('data', 'fsdp', 'tensor')`. The batch
is split over `data` × `fsdp` (FSDP shards parameters along `embed` and gathers them per layer;
`tensor` splits heads, MLP width and vocabulary). Meshes use `AxisType.Auto` so XLA's sharding
propagation places the activations (jax defaults to Explicit axes in newer versions).

This module knows no model family and imports nothing from `mdpo_jax`: a model supplies its own
tree of logical axes (e.g. `llada.param_logical_axes`) and turns it into shardings with
`shardings_from_axes` (see `llada.param_shardings`, `lora.adapter_shardings`). A run may
override the rules table from its config (`mesh.rules`, read with `parse_rules`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("norm", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, *,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh with Auto axes. One size may be −1: it takes the rest."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
  for name, size in sizes.items():
    if not isinstance(size, int) or (size < 1 and size != -1):
      raise ValueError(f"mesh.{name}={size!r}: must be a positive integer or -1 (use the rest)")
  free = [name for name, size in sizes.items() if size == -1]
  if len(free) > 1:
    raise ValueError(f"mesh: only one axis may be -1, got {free}")
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if free:
    if len(devices) % fixed:
      raise ValueError(f"mesh: {len(devices)} devices are not divisible by the fixed axes "
                       f"{ {k: v for k, v in sizes.items() if v != -1} }")
    sizes[free[0]] = len(devices) // fixed
  if math.prod(sizes.values()) != len(devices):
    raise ValueError(f"mesh: data×fsdp×tensor = {sizes} uses {math.prod(sizes.values())} devices "
                     f"but {len(devices)} are available")
  shape = tuple(sizes[name] for name in MESH_AXES)
  if devices == list(jax.devices()):
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
              axis_types=(jax.sharding.AxisType.Auto,) * 3)


def mesh_from_config(mesh_config: Mapping[str, Any]) -> Mesh:
  """Mesh from a config section `{data: .., fsdp: .., tensor: .., rules: ..}`.

  Only data/fsdp/tensor shape the mesh; `rules` (the logical-axis rules, see `parse_rules`) and
  `constrain_rows` (see `mesh_context`) are allowed in the section and ignored here. Any other
  key is an error.
  """
  unknown = set(mesh_config) - set(MESH_AXES) - {"rules", "constrain_rows"}
  if unknown:
    raise ValueError(f"mesh: unknown keys {sorted(unknown)}; allowed "
                     f"{MESH_AXES + ('rules', 'constrain_rows')}")
  return make_mesh(**{k: int(v) for k, v in mesh_config.items() if k in MESH_AXES})


_RULES_FORMAT = f"comma-separated logical=axis[+axis] with axes from {MESH_AXES}"


def parse_rules(text: str, base: Sequence[tuple[str, Any]] = DEFAULT_RULES
                ) -> tuple[tuple[str, Any], ...]:
  """The rules table from its config form (`mesh.rules`), applied on top of `base`.

  "" gives `base` unchanged. Otherwise comma-separated `logical=target` entries, each overriding
  (or, for a new logical name, appending) one entry of `base`; target is empty (replicated), a
  mesh axis, or several joined by "+" (`batch=data+fsdp`). Example: "embed=,mlp=fsdp". The
  order of `base` is kept, new logical names come last.
  """
  def fail(problem: str):
    raise ValueError(f"mesh.rules={text!r}: {problem}; allowed: {_RULES_FORMAT}")

  if not isinstance(text, str):
    fail(f"must be a string, got {type(text).__name__}")
  if not text.strip():
    return tuple(base)
  overrides: dict[str, Any] = {}
  for entry in text.split(","):
    entry = entry.strip()
    if not entry:
      fail("empty entry")
    if "=" not in entry:
      fail(f"entry {entry!r} has no '='")
    name, target = (part.strip() for part in entry.split("=", 1))
    if not name.isidentifier():
      fail(f"entry {entry!r}: logical axis name {name!r} must be an identifier")
    if name in overrides:
      fail(f"logical axis {name!r} is given twice")
    if not target:
      overrides[name] = None
      continue
    axes = tuple(axis.strip() for axis in target.split("+"))
    bad = [axis for axis in axes if axis not in MESH_AXES]
    if bad:
      fail(f"entry {entry!r}: unknown mesh axis {bad[0]!r}")
    if len(set(axes)) != len(axes):
      fail(f"entry {entry!r}: a mesh axis is repeated")
    overrides[name] = axes[0] if len(axes) == 1 else axes
  table = dict(base)
  table.update(overrides)
  return tuple(table.items())


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int] | None = None, *,
                    mesh: Mesh | None = None,
                    rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> PartitionSpec:
  """PartitionSpec for a tensor with the given logical axes.

  A mesh axis is used at most once per tensor (first dimension wins). With `shape` and `mesh`
  given, a mesh axis that does not divide its dimension is dropped (that dimension is replicated
  instead), so tiny test models and odd vocabularies still place on any mesh.
  """
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for i, name in enumerate(axes):
    if name is not None and name not in table:
      raise ValueError(f"logical axis {name!r} has no sharding rule; known: {sorted(table)}")
    target = table.get(name) if name is not None else None
    targets = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
    kept = []
    for mesh_axis in targets:
      if mesh_axis in used:
        continue
      if shape is not None and mesh is not None:
        size = math.prod(mesh.shape[a] for a in kept) * mesh.shape[mesh_axis]
        if shape[i] % size:
          continue
      kept.append(mesh_axis)
    used.update(kept)
    spec.append(None if not kept else (kept[0] if len(kept) == 1 else tuple(kept)))
  return PartitionSpec(*spec)


def shardings_from_axes(axes_tree, abstract_tree, mesh: Mesh,
                        rules: Sequence[tuple[str, Any]] = DEFAULT_RULES):
  """A NamedSharding per leaf, from a tree of logical-axis tuples and the matching tree of shapes
  (`jax.ShapeDtypeStruct`s or arrays). Mesh axes that do not divide a dimension are dropped, as
  in `logical_to_spec`."""
  return jax.tree.map(
      lambda ax, sd: NamedSharding(mesh, logical_to_spec(ax, sd.shape, mesh=mesh, rules=rules)),
      axes_tree, abstract_tree, is_leaf=lambda x: isinstance(x, tuple))


def batch_sharding(mesh: Mesh, ndim: int = 2,
                   rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> NamedSharding:
  """Sharding for a [B, ...] batch: B over the data-parallel axes, the rest replicated."""
  return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), rules=rules))


def shard_batch(batch, mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES):
  """Place a pytree of host [B, ...] arrays onto the mesh, batch split over the data axes.

  Single-process only; multi-host input goes through `jax.make_array_from_process_local_data`.
  """
  def place(x):
    sharding = batch_sharding(mesh, np.ndim(x), rules)
    data_size = data_degree(mesh)
    if np.shape(x)[0] % data_size:
      raise ValueError(f"batch size {np.shape(x)[0]} is not divisible by the data-parallel "
                       f"degree data×fsdp = {data_size}")
    return jax.device_put(x, sharding)
  return jax.tree.map(place, batch)


def data_degree(mesh: Mesh) -> int:
  """How many ways a batch is split: the product of the data-parallel axes (data × fsdp)."""
  return math.prod(mesh.shape[a] for a in ("data", "fsdp"))


def shard_rows(x, mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES):
  """A host [N, ...] array split over the data axes when data × fsdp divides N (as
  `shard_batch`), else unchanged (jit then holds it whole on every device)."""
  if np.shape(x)[0] % data_degree(mesh):
    return x
  return jax.device_put(x, batch_sharding(mesh, np.ndim(x), rules))


def mesh_context(mesh: Mesh, enabled: bool = True):
  """A context manager making `mesh` the one in context while tracing (`jax.set_mesh`; on jax
  < 0.7 `jax.sharding.use_mesh`): model code then constrains activations to it
  (`constrain_rows`). The loops trace their programs inside it (config `mesh.constrain_rows`;
  `enabled=False`: a context that does nothing)."""
  if not enabled:
    return contextlib.nullcontext()
  setter = getattr(jax, "set_mesh", None) or jax.sharding.use_mesh
  return setter(mesh)


def constrain_rows(x_BxN):
  """`x_BxN` with its leading (row) axis split over the data axes of the mesh in context
  (`mesh_context`), the rest replicated; unchanged without a mesh or when the split is uneven.

  Why: without it XLA's propagation may follow the FSDP-sharded weights and keep activations
  whole per device — the 8B rollout sampler needed 18.4 GiB of temporaries per device at 8
  rows per device on fsdp=16, 3.1 GiB with this constraint at the block boundaries."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    return x_BxN
  axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names and mesh.shape[a] > 1)
  if not axes or x_BxN.shape[0] % math.prod(mesh.shape[a] for a in axes):
    return x_BxN
  return jax.lax.with_sharding_constraint(x_BxN, PartitionSpec(axes))


def to_host(x) -> np.ndarray:
  """The whole of a (possibly sharded, possibly multi-process) array as a host NumPy array."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def initialize_distributed() -> None:
  """Start multi-host JAX when running on several processes (TPU pod slices, multi-node GPU).

  On TPU VMs and SLURM/Open MPI clusters `jax.distributed.initialize()` discovers the
  coordinator itself; elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID.
  A no-op for a single process.
  """
  explicit = os.environ.get("JAX_COORDINATOR_ADDRESS")
  on_cluster = any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID",
                                             "OMPI_COMM_WORLD_SIZE"))
  if not explicit and not on_cluster:
    return
  # CPU collectives across processes (a CPU-only cluster, or the multi-process test on one
  # machine) need gloo; accelerator collectives are unaffected by this setting.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    jax.distributed.initialize(
        coordinator_address=explicit,
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]))
  else:
    jax.distributed.initialize()
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def tree_shardings(tree, mesh: Mesh):
  """Each leaf's NamedSharding on `mesh`; leaves not laid out on the mesh (e.g. an optimiser's
  step counter) are replicated. Use it to pin `out_shardings` of a jitted update so a step never
  silently changes a layout."""
  def of(x):
    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, NamedSharding) and sharding.mesh == mesh:
      return sharding
    return NamedSharding(mesh, PartitionSpec())
  return jax.tree.map(of, tree)
