"""The launch scripts (launch/): a dry run prints exactly the commands a real launch runs —
executing the printed GPU line runs the command with the environment it sets — and the SLURM
example's directives are all where sbatch reads them."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _dry(script: str, *args: str, **env: str) -> list[str]:
  done = subprocess.run(["bash", f"launch/{script}", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "DRY_RUN": "1", **env})
  assert done.returncode == 0, done.stderr
  return [line for line in done.stdout.splitlines() if line.startswith("+ ")]


def test_gpu_node_dry_run_prints_the_line_that_runs_the_command(tmp_path):
  probe = ("import os; print(os.environ['XLA_PYTHON_CLIENT_MEM_FRACTION'], "
           "os.environ['JAX_COMPILATION_CACHE_DIR'], 'latency_hiding' in os.environ['XLA_FLAGS'])")
  cache = str(tmp_path / "xla cache")   # a space: the printed line must quote it
  lines = _dry("gpu_node.sh", sys.executable, "-c", probe, COMPILE_CACHE=cache)
  assert len(lines) == 1
  ran = subprocess.run(["bash", "-c", lines[0][2:]], capture_output=True, text=True, timeout=60)
  assert ran.returncode == 0, ran.stderr
  assert ran.stdout.split() == ["0.9", *cache.split(), "True"]


def test_tpu_vm_copies_then_runs_the_command_on_every_worker(tmp_path):
  """With a stand-in `gcloud` that records its arguments: the real launch and the dry run's
  printed lines (executed) make the same two calls."""
  bin_dir, log = tmp_path / "bin", tmp_path / "calls.jsonl"
  bin_dir.mkdir()
  fake = bin_dir / "gcloud"
  fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                  f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
  fake.chmod(0o755)
  path = f"{bin_dir}:/usr/bin:/bin"
  args = ["my-tpu", "us-east5-a", "python -m mdpo_jax.train --workdir gs://b/r"]
  env = {"PATH": path, "COMPILE_CACHE": "gs://b/xla"}
  real = subprocess.run(["bash", "launch/tpu_vm.sh", *args], cwd=ROOT, env=env, timeout=60)
  assert real.returncode == 0
  calls = [json.loads(line) for line in log.read_text().splitlines()]
  log.unlink()
  for line in _dry("tpu_vm.sh", *args, COMPILE_CACHE="gs://b/xla"):
    subprocess.run(["bash", "-c", line[2:]], env={"PATH": path}, check=True, timeout=60)
  assert [json.loads(line) for line in log.read_text().splitlines()] == calls
  scp, ssh = calls
  assert scp[:4] == ["compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
  assert scp[-2:] == [str(ROOT), "my-tpu:~/"]
  assert ssh[:5] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
  assert "--worker=all" in ssh and ssh[ssh.index("--zone") + 1] == "us-east5-a"
  remote = ssh[ssh.index("--command") + 1]
  assert "export JAX_COMPILATION_CACHE_DIR=gs://b/xla" in remote
  assert remote.rstrip().endswith("python -m mdpo_jax.train --workdir gs://b/r")


def test_slurm_example_runs_one_gpu_node_process_per_node():
  lines = _dry("slurm_gpu.sbatch", "python", "-m", "mdpo_jax.train", "--workdir", "/shared/r")
  assert shlex.split(lines[0][2:]) == ["srun", "--kill-on-bad-exit=1", "launch/gpu_node.sh",
                                       "python", "-m", "mdpo_jax.train", "--workdir", "/shared/r"]
  text = (ROOT / "launch" / "slurm_gpu.sbatch").read_text().splitlines()
  first_command = next(i for i, line in enumerate(text) if line and not line.startswith("#"))
  directives = [i for i, line in enumerate(text) if line.startswith("#SBATCH")]
  assert directives and max(directives) < first_command   # sbatch stops at the first command
  assert "#SBATCH --ntasks-per-node=1" in text and "#SBATCH --signal=TERM@300" in text
  bare = subprocess.run(["bash", "launch/slurm_gpu.sbatch"], cwd=ROOT, capture_output=True,
                        text=True, timeout=60)
  assert bare.returncode == 2 and bare.stderr.startswith("usage: ")
