"""Accelerators a run may be planned for: memory per chip, slice names, and the fit verdict;
and each chip's peak bf16 FLOP/s, the denominator of a benchmark's MFU (`peak_flops`).

The memory planner (`training/memory_plan.py`, `python -m mdpo_jax.plan`) measures bytes per
device; this module says how many devices a slice has and how much memory each one holds.

HBM per chip, from the vendors' published specifications:
- TPU v5e: 16 GiB (cloud.google.com/tpu/docs/v5e, "HBM capacity per chip 16 GB"), one
  TensorCore per chip, so `v5e-16` is 16 chips;
- TPU v5p: 95 GiB (cloud.google.com/tpu/docs/v5p, "HBM capacity per chip (GiB) 95"), two
  TensorCores per chip, and a v5p slice is named by its TensorCores: `v5p-8` is 4 chips (2x2x1);
- TPU v6e (Trillium): 32 GiB (cloud.google.com/tpu/docs/v6e, "HBM capacity per chip 32 GB"),
  one TensorCore per chip;
- NVIDIA H100 SXM: 80 GB, H200 SXM: 141 GB (NVIDIA's H100 / H200 product specifications,
  decimal gigabytes). With JAX on a GPU, XLA preallocates 75% of it unless
  `XLA_PYTHON_CLIENT_MEM_FRACTION` is raised (e.g. to 0.95), and the CUDA context takes some.

The Cloud TPU pages write "GB" for v5e and v6e; they are taken here as GiB (2^30 bytes), like
v5p's. The verdict keeps 10% of a chip free for the runtime, fragmentation and
what the compiler's estimate misses (`HEADROOM`).
"""

from __future__ import annotations

import dataclasses
import re

GIB = 2**30
GB = 10**9
HEADROOM = 0.10   # a plan "fits" when it uses at most 90% of a chip's memory


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: int
  cores_per_chip: int    # how many of a slice name's count make one chip (TPU v5p: 2)
  source: str


CHIPS: dict[str, Chip] = {
    "v5e": Chip("TPU v5e", 16 * GIB, 1, "cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("TPU v5p", 95 * GIB, 2, "cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("TPU v6e", 32 * GIB, 1, "cloud.google.com/tpu/docs/v6e"),
    "h100": Chip("H100 80GB", 80 * GB, 1, "NVIDIA H100 Tensor Core GPU datasheet"),
    "h200": Chip("H200 141GB", 141 * GB, 1, "NVIDIA H200 Tensor Core GPU datasheet"),
}
DEFAULT_SLICES = ("v5e-16", "v5p-8", "v6e-8", "8xh100", "8xh200")
_FORMAT = ("a TPU slice v5e-N | v5p-N | v6e-N (v5p counts TensorCores: v5p-8 = 4 chips) or "
           "a GPU node NxH100 | NxH200")


@dataclasses.dataclass(frozen=True)
class Slice:
  name: str       # as given: "v5p-8", "8xh100"
  chip: Chip
  devices: int    # chips, i.e. JAX devices

  @property
  def hbm_bytes(self) -> int:
    return self.chip.hbm_bytes


def parse_slice(text: str) -> Slice:
  """A slice from its name: `v5e-16`, `v5p-8` (4 chips), `v6e-8`, `8xh100`, `8xH200`."""
  name = text.strip()
  tpu = re.fullmatch(r"(v5e|v5p|v6e)-(\d+)", name.lower())
  gpu = re.fullmatch(r"(\d+)x(h100|h200)", name.lower())
  if not (tpu or gpu):
    raise ValueError(f"--slices: {text!r} is not a slice name; allowed: {_FORMAT}")
  kind, count = (tpu.group(1), int(tpu.group(2))) if tpu else (gpu.group(2), int(gpu.group(1)))
  chip = CHIPS[kind]
  if count < 1 or count % chip.cores_per_chip:
    raise ValueError(f"--slices: {text!r}: {chip.name} slices count TensorCores, "
                     f"{chip.cores_per_chip} per chip; allowed: a positive multiple of "
                     f"{chip.cores_per_chip}")
  return Slice(name, chip, count // chip.cores_per_chip)


def slices_of(devices: int) -> list[Slice]:
  """Every chip of the table at `devices` chips (for a plan whose mesh is given, not a slice)."""
  return [Slice(f"{devices}x {chip.name}", chip, devices) for chip in CHIPS.values()]


def verdict(total_bytes: int, hbm_bytes: int) -> str:
  """"fits" (≤ 90% of the chip), "tight" (90–100%: may fit, no margin) or "does not fit"."""
  if total_bytes <= (1 - HEADROOM) * hbm_bytes:
    return "fits"
  if total_bytes <= hbm_bytes:
    return "tight"
  return "does not fit"


# ----------------------------------------------------------------------------------------------
# Peak dense bf16 matmul throughput per chip: the denominator of MFU (`benchmarks/accelerator.py`).
# Dense figures (no 2:4 structured sparsity; NVIDIA's headline numbers are the sparse ones, twice
# these). Sources, checked while writing this table:
# - TPU v5e 197, v5p 459, v6e 918 TFLOP/s: "Peak compute per chip (bf16)" on
#   cloud.google.com/tpu/docs/v5e, /v5p, /v6e;
# - H100 SXM 989.4, H100 PCIe 756 (1,513 with sparsity, "1/2 lower without sparsity"), A100 312:
#   NVIDIA's H100 / A100 datasheets (as tabulated by glennklockwood.com/garden/processors/h100 and
#   /A100, and the datasheet copy at archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html);
# - H200 SXM 989: the same GH100 tensor cores as H100 SXM with more HBM (NVIDIA H200 datasheet;
#   "FP16 / BF16 (dense) ~989 TFLOPS", itkb.uw.cz's H200 vs B300 comparison).
# JAX's `device_kind` strings: TPUs "TPU v5 lite" (v5e), "TPU v5" (v5p), "TPU v6 lite" (v6e);
# GPUs the CUDA name, e.g. "NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA A100-SXM4-80GB".
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PeakFlops:
  chip: str
  bf16_tflops: float   # dense, per chip (one JAX device)
  source: str


_GOOGLE = "cloud.google.com/tpu/docs/{}, peak compute per chip (bf16)"
_TPU_PEAKS = {   # exact device_kind (lower case) → peak
    "tpu v5 lite": PeakFlops("TPU v5e", 197.0, _GOOGLE.format("v5e")),
    "tpu v5e": PeakFlops("TPU v5e", 197.0, _GOOGLE.format("v5e")),
    "tpu v5": PeakFlops("TPU v5p", 459.0, _GOOGLE.format("v5p")),
    "tpu v5p": PeakFlops("TPU v5p", 459.0, _GOOGLE.format("v5p")),
    "tpu v6 lite": PeakFlops("TPU v6e", 918.0, _GOOGLE.format("v6e")),
    "tpu v6e": PeakFlops("TPU v6e", 918.0, _GOOGLE.format("v6e")),
}
_GPU_PEAKS = (   # substring of device_kind (lower case) → peak; the first match wins
    ("nvl", None),   # H100 / H200 NVL cards have a lower peak than SXM: not tabulated
    ("h100 pcie", PeakFlops("H100 PCIe", 756.0, "NVIDIA H100 datasheet (dense bf16)")),
    ("h100", PeakFlops("H100 SXM", 989.4, "NVIDIA H100 datasheet (dense bf16)")),
    ("h200", PeakFlops("H200 SXM", 989.4, "NVIDIA H200 datasheet (dense bf16)")),
    ("a100", PeakFlops("A100", 312.0, "NVIDIA A100 datasheet (dense bf16)")),
)


def peak_flops(device_kind: str, override_tflops: float | None = None) -> PeakFlops | None:
  """The dense bf16 peak of a JAX `device_kind` (`jax.devices()[0].device_kind`), or None when
  the chip is not in the table (MFU is then not reported). `override_tflops` (a benchmark's
  `--peak_tflops`) wins over the table, for any device."""
  if override_tflops is not None:
    if not override_tflops > 0:
      raise ValueError(f"--peak_tflops={override_tflops!r}: must be > 0")
    return PeakFlops(device_kind, float(override_tflops), "--peak_tflops")
  kind = device_kind.strip().lower()
  if kind in _TPU_PEAKS:
    return _TPU_PEAKS[kind]
  if kind.startswith("tpu"):
    return None
  for pattern, peak in _GPU_PEAKS:
    if pattern in kind:
      return peak
  return None
