"""`evaluate --likelihood`: the ELBO bound on held-out completions of a checkpoint.

The estimator itself (`losses.mc_negative_elbo`) is tested against the exact expectation by
enumeration in test_diffusion.py; here, that the scored rows are the SFT rows (built again in
the test from the tokenizer), that batches, padding and keys give the estimator's own numbers,
that the summary's arithmetic holds, and that bad guidance weights fail in one line. (The CLI
module is not imported here: its absl flags would clash with generate's in one test process.)
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from configs import countdown_tiny_sft
from mdpo_jax import config as config_lib
from mdpo_jax import tasks
from mdpo_jax.diffusion import losses
from mdpo_jax.models import families
from mdpo_jax.training import evaluation, likelihood, setup
from tests.run_helpers import tiny_run

DRAWS = 8


@pytest.fixture(scope="module")
def model():
  config = config_lib.parse(tiny_run(countdown_tiny_sft.get_config()))
  tokenizer = setup.make_tokenizer(config)
  model_cfg, params = setup.load_model(config, tokenizer, setup.make_mesh(config),
                                       jax.random.key(0))
  return evaluation.LoadedModel(config, model_cfg, params, tokenizer,
                                tasks.build(config.task, config.seed))


def _rows_by_hand(model, problems):
  """prompt | answer | EOS… to data.seq_len, from the tokenizer directly."""
  seq_len, eos = model.config.data.seq_len, model.model_cfg.eos_token_id
  tokens, prompt_mask = [], []
  for p in problems:
    prompt = model.tokenizer.encode(model.task.prompt(p), add_special_tokens=False).ids
    answer = model.tokenizer.encode(model.task.sft_answer(p), add_special_tokens=False).ids
    row = prompt + answer + [eos] * (seq_len - len(prompt) - len(answer))
    tokens.append(row)
    prompt_mask.append([1] * len(prompt) + [0] * (seq_len - len(prompt)))
  return np.asarray(tokens, np.int32), np.asarray(prompt_mask, np.int32)


def test_scores_are_the_estimator_on_the_sft_rows(model):
  problems = model.task.held_out()[:5]
  tokens, prompt_mask = _rows_by_hand(model, problems)
  got_tokens, got_mask = likelihood.completion_rows(model.task, problems, model.tokenizer,
                                                    seq_len=model.config.data.seq_len,
                                                    eos_id=model.model_cfg.eos_token_id)
  np.testing.assert_array_equal(got_tokens, tokens)
  np.testing.assert_array_equal(got_mask, prompt_mask)

  # Batches of 3: rows [0, 1, 2] and [3, 4, 4 (padding)], batch j keyed fold_in(key(seed), j).
  fwd, seed = families.forward_fn(model.model_cfg), model.config.seed
  want = np.concatenate([np.asarray(losses.mc_negative_elbo(
      fwd, model.params, tokens[rows], prompt_mask[rows].astype(bool),
      jax.random.fold_in(jax.random.key(seed), j), mask_id=model.model_cfg.mask_token_id,
      num_draws=DRAWS))[:keep] for j, (rows, keep) in enumerate((([0, 1, 2], 3), ([3, 4, 4], 2)))])
  rows = likelihood.evaluate(model, problems, num_draws=DRAWS, cfg_scales=(0.0,), batch_size=3)
  row = rows[0]
  n_tokens = (1 - prompt_mask).sum()
  assert row["n"] == 5 and row["draws"] == DRAWS
  assert row["nll"] == pytest.approx(want.mean(), rel=1e-5)
  assert row["nats_per_token"] == pytest.approx(want.sum() / n_tokens, rel=1e-5)
  assert row["ppl_bound"] == pytest.approx(math.exp(want.sum() / n_tokens), rel=1e-5)
  half = 1.96 * want.std(ddof=1) / math.sqrt(5)
  assert row["nll_ci_low"] == pytest.approx(want.mean() - half, rel=1e-4)
  assert want.min() > 0   # a bound on a negative log-likelihood


def test_guidance_weights_parse_or_fail_in_one_line():
  assert likelihood.parse_cfg_scales(["0", "1.5"]) == [0.0, 1.5]
  for texts, bad in ((["0", "-1"], "'-1'"), (["nan"], "'nan'"), (["w"], "'w'")):
    with pytest.raises(ValueError) as e:
      likelihood.parse_cfg_scales(texts)
    assert str(e.value) == f"--cfg_scales={','.join(texts)}: {bad} is not a number ≥ 0"
