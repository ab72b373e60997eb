"""notebooks/quickstart.ipynb runs top to bottom (small settings, CPU) and computes what it says.

The notebook is executed in a fresh kernel with nbclient, as a user would run it; its values are
then checked against sources read here independently: the runs' metrics.jsonl files, the
sampler's commit schedule, and the evaluation rows' own statistics.
"""

import json
import os
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from run_helpers import fast_compile_flags

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "quickstart.ipynb"


def _jsonl(path):
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_notebook_is_stored_without_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and all(not c.outputs and c.execution_count is None for c in code)
  assert "pip" in code[0].source and 'find_spec("mdpo_jax") is None' in code[0].source


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_quickstart_notebook_runs_top_to_bottom(tmp_path):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  env = dict(os.environ, MDPO_NOTEBOOK_SMALL="1", MDPO_NOTEBOOK_WORKDIR=str(tmp_path),
             JAX_PLATFORMS="cpu")
  # One CPU device, as on a laptop or a Colab CPU runtime; XLA's cheaper CPU compilation, since
  # compiling (~12 s of default optimisation) is nearly all this run's time and the tiny
  # programs run in microseconds either way.
  env["XLA_FLAGS"] = fast_compile_flags() + " --xla_llvm_disable_expensive_passes=true"
  NotebookClient(nb, timeout=240, kernel_name="python3",
                 resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute(env=env)
  errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
  assert not errors
  summary = json.loads((tmp_path / "summary.json").read_text())

  # The curves it drew are the runs' logs, read here on their own.
  sft_log = _jsonl(tmp_path / "sft" / "metrics.jsonl")
  steps, losses = zip(*[(r["step"], r["loss"]) for r in sft_log if "loss" in r])
  assert summary["sft_loss"] == [list(steps), list(losses)]
  assert steps[-1] == 20 and losses[-1] < losses[0] - 0.5   # SFT learnt something
  mdpo_log = _jsonl(tmp_path / "mdpo" / "metrics.jsonl")
  rewards = [(r["step"], r["reward/final_mean"]) for r in mdpo_log if "reward/final_mean" in r]
  assert summary["reward_curve"] == [[s for s, _ in rewards], [v for _, v in rewards]]
  assert [s for s, _ in rewards] == [1, 2]   # RL_UPDATES in the small settings

  # Both evaluations: low-confidence and RCR on the same 16 problems; the per-step curves agree
  # with the rows' own accuracy and over-denoising rate (computed along another path).
  for rows in (summary["sft_eval"], summary["mdpo_eval"]):
    assert [r["remasking"] for r in rows] == ["low_confidence", "rcr"]
    for r in rows:
      curves = r["step_curves"]
      assert r["n"] == curves["n"] == 16 and len(curves["right_final_right"]) == 6
      assert curves["right_final_right"][-1] == pytest.approx(r["accuracy"])
      assert curves["over_denoised"] == pytest.approx(r["over_denoised"])

  # Fast sampling: one token per step without a threshold makes all 24 calls; dual cache +
  # threshold makes at least one per block of 8 and never more than the cap.
  plain, fast = summary["fast_eval"]
  assert (plain["cache"], plain["nfe"]) == ("none", 24)
  assert (fast["cache"], fast["threshold"]) == ("dual", 0.9)
  assert 3 <= fast["nfe"] <= 24 and plain["n"] == fast["n"] == 16

  # The RCR trajectory drawn: 24 tokens in 6 steps shows 4 more tokens after every step.
  commit = np.asarray(summary["trajectory"]["commit_step"])
  assert commit.shape == (6, 24)
  np.testing.assert_array_equal((commit >= 0).sum(1), [4, 8, 12, 16, 20, 24])
  for name in ("sft_curves", "trajectory_sft_rcr", "trajectory_sft_lc", "over_denoising_sft",
               "mdpo_curves", "over_denoising_mdpo", "trajectory_mdpo_rcr"):
    assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
