"""Two JAX processes × 4 CPU devices (jax.distributed on localhost, gloo collectives) train
exactly as one process × 8 devices: the same losses step for step and the same final
parameters; the checkpoint the two processes wrote restores in one process, onto the run's
mesh and onto another mesh shape."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from mdpo_jax.models import llada
from mdpo_jax.training import checkpoint, metrics, setup, sft_loop
from run_helpers import fast_compile_flags

TESTS = Path(__file__).parent
CONFIG = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from test_training import _tiny_config

def get_config():
  c = _tiny_config(num_steps=3)
  c.model.n_layers, c.task.train_size = 1, 64
  c.train.checkpoint_every = 3
  c.mesh.data, c.mesh.fsdp = 1, 8   # parameters sharded over both processes' devices
  c.task.eval_size = 0   # no held-out evaluation: this test is about training
  return c
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _losses(workdir):
  return [(r["step"], r["loss"]) for r in metrics.read_jsonl(Path(workdir) / "metrics.jsonl")
          if r.get("loss") is not None]


def test_two_processes_train_exactly_as_one(tmp_path):
  config_path = tmp_path / "mp_config.py"
  config_path.write_text(CONFIG)
  namespace = {}
  exec(compile(CONFIG, str(config_path), "exec"), namespace)
  c = namespace["get_config"]()
  single = sft_loop.train(c, tmp_path / "single")

  port = _free_port()
  procs = []
  for pid in range(2):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4 "
               + fast_compile_flags(),
               JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid),
               JAX_DEFAULT_MATMUL_PRECISION="highest")
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "mdpo_jax.train", "--config", str(config_path), "--workdir",
         str(tmp_path / "multi")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True))
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]

  want, got = _losses(tmp_path / "single"), _losses(tmp_path / "multi")
  assert [s for s, _ in got] == [s for s, _ in want] == [1, 2, 3]
  np.testing.assert_allclose([l for _, l in got], [l for _, l in want], rtol=1e-5)

  cfg = setup.model_config(c, setup.make_tokenizer(c))
  abstract = llada.abstract_params(cfg)
  for mesh_shape in ((1, 8, 1), (2, 4, 1)):   # the run's mesh (fsdp 8), then data 2 × fsdp 4
    mesh = jax.make_mesh(mesh_shape, ("data", "fsdp", "tensor"))
    shardings = llada.param_shardings(cfg, mesh)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
    params, _, step = checkpoint.restore_params(tmp_path / "multi" / "checkpoints", target)
    assert step == 3
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(single["params"])):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert jax.tree.leaves(params)[0].sharding.mesh.devices.shape == mesh_shape
