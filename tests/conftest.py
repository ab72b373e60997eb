"""Test setup: 8 virtual CPU devices so every sharded code path runs on a laptop or CI box.

XLA reads XLA_FLAGS once, when the backend starts, so this must run before anything imports jax.
"""
import os
import subprocess
import sys

# XLA aborts the process on a flag it does not know, so an optional flag is first tried in a
# child that only starts XLA's CPU client (~0.4 s; `import jax` if that private entry point moves).
_PROBE = """
try:
  import jaxlib._jax as j
  j.get_tfrt_cpu_client()
except (ImportError, AttributeError):
  import jax
  jax.devices("cpu")
"""


def _xla_accepts(flag: str) -> bool:
  """Whether this jaxlib's XLA starts with `flag` in XLA_FLAGS."""
  env = dict(os.environ, XLA_FLAGS=flag, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                        timeout=120).returncode == 0


_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  _flags += " --xla_force_host_platform_device_count=8"
# The suite is compile-bound (hundreds of tiny programs, each run a few times): LLVM's backend
# optimisations cost ~25% of the suite's time and buy nothing at these sizes. What the tests
# check (parity, invariants, exact resumes) does not depend on them; benchmarks keep the default.
if "xla_backend_optimization_level" not in _flags:
  _flags += " --xla_backend_optimization_level=0"
# XLA's newer CPU fusion emitters (MLIR) compile these programs ~2.5x slower than its classic
# ones, and splitting each program's LLVM module for parallel codegen costs ~7% more on a busy
# 2-core box. Both are code generation only: every test's property holds either way (a test
# that compares two programs bit for bit compares programs compiled alike). Workers inherit
# XLA_FLAGS, so the probe runs once per session.
for _fast in ("--xla_cpu_use_fusion_emitters=false", "--xla_cpu_parallel_codegen_split_count=1"):
  if _fast.split("=")[0] not in _flags and _xla_accepts(_fast):
    _flags += " " + _fast
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402  (must follow the flag above)

jax.config.update("jax_default_matmul_precision", "highest")
# Many tests compile the same tiny programs (a run's update, sampler, evaluation): a compilation
# cache shared by the session's workers compiles each once. The folder is new per session (one
# per pytest invocation, set by the controller before workers start), so nothing carries over
# between runs; results do not depend on it (XLA compilation is deterministic).
_OWN_CACHE = "MDPO_JAX_TEST_COMPILE_CACHE" not in os.environ   # this process made the folder
if _OWN_CACHE:
  os.environ["MDPO_JAX_TEST_COMPILE_CACHE"] = tempfile.mkdtemp(prefix="mdpo_jax_xla_cache_")
jax.config.update("jax_compilation_cache_dir", os.environ["MDPO_JAX_TEST_COMPILE_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
  """The process that made the session's compilation cache removes it (workers inherit it)."""
  del config
  if _OWN_CACHE:
    shutil.rmtree(os.environ["MDPO_JAX_TEST_COMPILE_CACHE"], ignore_errors=True)
