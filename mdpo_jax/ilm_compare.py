r"""Insertion LM vs masked diffusion vs autoregressive on star-graph path finding, one command.

  python -m mdpo_jax.ilm_compare --workdir /tmp/star_compare

Trains the three recipes `configs/stargraph_{ilm,mdm,ar}.py` — the same task, data, model size
(LLaDA's blocks), optimiser, batch and number of steps; only the objective, the attention mask
(AR: causal) and the sampler differ — then measures, on the same held-out graphs (disjoint from
training), greedy:
1. exact-match accuracy (the path checked along the edges), 95% Wilson intervals: ILM (joint and
   factorised selection), MDM (one token per step, low-confidence), AR (left to right);
2. the ILM stop head's calibration: generated vs true answer length;
3. infilling: the answer's first and last node (source and goal) given, the nodes between to be
   written, their number unknown. ILM inserts between the two and must stop by itself. An MDM
   needs a fixed number of masks: it gets the true number (an oracle the ILM does not have) and,
   as a length-unaware MDM would, the most common number in its training data.

`--split=medium` draws every arm's length from 3–6 nodes, so a path's length is not known in
advance; `--split=small` (degree 2, arms of 3 nodes: one node between source and goal) is the
smallest star graph, a single lookup of the goal's predecessor. Runs already finished in WORKDIR are reused (the trainers resume from their final
checkpoint); the tables go to WORKDIR/table.md and results.json.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from mdpo_jax import cli, tasks
from mdpo_jax import config as config_lib
from mdpo_jax.data import pipeline
from mdpo_jax.data.tokenizer import decode_completions, encode_text
from mdpo_jax.ilm_recipes import RECIPES, SPLITS, recipe
from mdpo_jax.models import families
from mdpo_jax.training import evaluation, ilm_eval, ilm_loop, setup, sft_loop

_WORKDIR = flags.DEFINE_string("workdir", None, "Where the runs and the tables go.")
_SPLIT = flags.DEFINE_enum("split", "easy", list(SPLITS), "easy: degree 3, arms of 5 nodes; "
                           "medium: degree 3, arms of 3-6 nodes; small: degree 2, arms of 3.")
_MODELS = flags.DEFINE_list("models", ["ilm", "mdm", "ar"], "Which of ilm, mdm, ar to run.")
_STEPS = flags.DEFINE_integer("train_steps", None, "Training steps of every model (default: the "
                              "recipes' train.num_steps).")
_LR = flags.DEFINE_float("lr", None, "Peak learning rate of every model (default: the recipes').")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the task splits, init and data order.")
_EVAL = flags.DEFINE_integer("eval_problems", 500, "Problems evaluated.")
_EVAL_SPLIT = flags.DEFINE_enum("eval_split", "held_out", ["held_out", "validation"],
                                "held_out (the result) or validation (for tuning).")


def train(model: str, raw, workdir: Path) -> dict:
  """Train (or resume to the end) and return params, model config and what it cost."""
  start = time.time()
  loop = ilm_loop if model == "ilm" else sft_loop
  result = loop.train(raw, workdir)
  config = config_lib.parse(raw)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(result["params"]))
  return {"params": result["params"], "model_cfg": result["model_config"], "config": config,
          "minutes": (time.time() - start) / 60, "steps": result["step"], "n_params": n_params}


def _mdm_fill(model_cfg, params, tokens_BxL, attention_BxL, steps: int):
  """Greedy masked-diffusion decoding of the MASK positions of fixed templates, one token per
  call, the most confident first (low-confidence remasking at one token per step)."""
  mask_id = model_cfg.mask_token_id
  forward = families.forward_fn(model_cfg)

  def step(x_BxL, _):
    logits = forward(params, x_BxL, attention_mask=attention_BxL).astype(jnp.float32)
    logits = logits.at[..., mask_id].set(-jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1)
    conf_BxL = jnp.where(x_BxL == mask_id, probs.max(-1), -1.0)
    at_B = jnp.argmax(conf_BxL, axis=1)
    token_B = jnp.take_along_axis(logits.argmax(-1), at_B[:, None], 1)[:, 0]
    has_mask = (x_BxL == mask_id).any(1)
    put = jnp.where(has_mask, token_B, jnp.take_along_axis(x_BxL, at_B[:, None], 1)[:, 0])
    return x_BxL.at[jnp.arange(x_BxL.shape[0]), at_B].set(put), None

  return jax.lax.scan(step, tokens_BxL, None, length=steps)[0]


def mdm_infill(run: dict, tokenizer, task, problems, interior: list[int], name: str) -> dict:
  """Accuracy of the MDM given the answer's first and last token with `interior[i]` masks
  between them (then EOS), in its usual [prompt | gen_length] layout."""
  cfg, c = run["model_cfg"], run["config"]
  gen = c.eval.gen_length
  prompts, pmask = pipeline.eval_prompts([task.prompt(p) for p in problems], tokenizer,
                                         prompt_len=c.data.prompt_len, pad_id=cfg.pad_token_id)
  rows, fits = [], []
  for p, m in zip(problems, interior):
    answer = encode_text(tokenizer, task.sft_answer(p))
    fits.append(m + 2 <= gen)
    m = min(m, gen - 2)
    rows.append([answer[0]] + [cfg.mask_token_id] * m + [answer[-1]]
                + [cfg.eos_token_id] * (gen - m - 2))
  tokens = np.concatenate([prompts, np.asarray(rows, np.int32)], 1)
  attention = np.concatenate([pmask, np.ones((len(rows), gen), np.int32)], 1)
  fill = jax.jit(_mdm_fill, static_argnums=(0, 4))
  out = np.asarray(fill(cfg, run["params"], tokens, attention, gen - 2))
  texts = decode_completions(tokenizer, out[:, prompts.shape[1]:],
                             (cfg.eos_token_id, cfg.eot_token_id))
  solved = np.asarray([f and task.reward(t, p) >= 1
                       for t, p, f in zip(texts, problems, fits)])
  lo, hi = evaluation.wilson_interval(int(solved.sum()), len(solved))
  return {"setting": name, "n": len(solved), "accuracy": float(solved.mean()), "ci_low": lo,
          "ci_high": hi, "length_match": float(np.mean(
              [len(t.strip()) == len(task.sft_answer(p)) for t, p in zip(texts, problems)]))}


def evaluate(model: str, run: dict, problems) -> dict:
  """The model's rows: planning accuracy, and for ILM / MDM the infilling rows."""
  c = run["config"]
  tokenizer, task = setup.make_tokenizer(c), tasks.build(c.task, c.seed)
  if model == "ilm":
    settings = [ilm_eval.ILMSetting(sel, 0.0, infill) for infill in (False, True)
                for sel in ("joint", "factorised")]
    rows = ilm_eval.evaluate_ilm(run["model_cfg"], run["params"], tokenizer, task, problems,
                                 settings, prompt_len=c.data.prompt_len,
                                 answer_len=c.eval.gen_length, batch_size=250, seed=c.seed)
    return {"planning": [r for r in rows if not r["infill"]],
            "infill": [r for r in rows if r["infill"]]}
  ev = c.eval
  settings = evaluation.settings_from_config(ev)
  config = dataclasses.replace(c, eval=dataclasses.replace(ev, batch_size=250))
  rows = evaluation.evaluate_task(config, run["model_cfg"], run["params"], tokenizer, task,
                                  problems, settings)
  out = {"planning": rows, "infill": []}
  if model == "mdm":
    true = [len(task.sft_answer(p)) - 2 for p in problems]
    usual = Counter(len(task.sft_answer(p)) - 2 for p in task.train()).most_common(1)[0][0]
    out["infill"] = [mdm_infill(run, tokenizer, task, problems, true, "mdm/oracle length"),
                     mdm_infill(run, tokenizer, task, problems, [usual] * len(problems),
                                f"mdm/fixed length ({usual} between)")]
  return out


def _cell(r: dict) -> str:
  return f"{r['accuracy']:.3f} [{max(r['ci_low'], 0.0):.3f}, {min(r['ci_high'], 1.0):.3f}]"


def tables(results: dict, split: str, n: int, eval_split: str) -> str:
  """The three markdown tables (planning, stop-head calibration, infilling) and the settings."""
  degree, lo, hi = SPLITS[split]
  arms = f"{lo}" if lo == hi else f"{lo}–{hi}"
  lines = [f"Star graphs, {split} split: degree {degree}, arms of {arms} nodes, 20 node labels; "
           f"{n} {eval_split.replace('_', '-')} graphs, greedy; 95% Wilson intervals.", "",
           "| model | sampler | parameters | steps | train min | exact match | mean calls |",
           "|---|---|---|---|---|---|---|"]
  for model, res in results.items():
    for r in res["rows"]["planning"]:
      sampler = r.get("remasking") if model != "ar" else "left to right"
      lines.append(f"| {model.upper()} | {sampler} | {res['n_params']:,} | {res['steps']} | "
                   f"{res['minutes']:.1f} | {_cell(r)} | {r.get('nfe', r.get('steps', 0)):g} |")
  ilm_rows = results.get("ilm", {}).get("rows", {})
  if ilm_rows:
    lines += ["", "ILM stop head (generated vs true answer length, in nodes):", "",
              "| setting | mean generated | mean true | exact length | mean abs. error |",
              "|---|---|---|---|---|"]
    for r in ilm_rows["planning"] + ilm_rows["infill"]:
      lines.append(f"| {r['setting']} | {r['mean_length']:.2f} | {r['mean_true_length']:.2f} | "
                   f"{r['length_match']:.3f} | {r['length_error']:.3f} |")
  infill = [r for res in results.values() for r in res["rows"]["infill"]]
  if infill:
    lines += ["", "Infilling (source and goal given, the nodes between unknown in number):", "",
              "| setting | exact match | right length |", "|---|---|---|"]
    lines += [f"| {r['setting']} | {_cell(r)} | {r['length_match']:.3f} |" for r in infill]
  return "\n".join(lines)


def run(root: Path, models, split: str, *, seed: int, steps, eval_problems: int,
        eval_split: str, lr: float | None = None) -> str:
  """Train and evaluate every model; write table.md and results.json; return the tables."""
  root.mkdir(parents=True, exist_ok=True)
  results = {}
  for model in models:
    raw = recipe(model, split, seed=seed, steps=steps, eval_problems=eval_problems, lr=lr)
    trained = train(model, raw, root / f"{split}_{model}")
    c = trained["config"]
    task = tasks.build(c.task, c.seed)
    problems = (task.validation() if eval_split == "validation" else task.held_out())
    start = time.time()
    rows = evaluate(model, trained, problems[:eval_problems])
    results[model] = {k: trained[k] for k in ("minutes", "steps", "n_params")}
    results[model].update(rows=rows, eval_minutes=(time.time() - start) / 60)
    print(f"{model}: trained {trained['minutes']:.1f} min, evaluated "
          f"{results[model]['eval_minutes']:.1f} min", flush=True)
  text = tables(results, split, min(eval_problems, len(problems)), eval_split)
  (root / "table.md").write_text(text + "\n")
  (root / "results.json").write_text(json.dumps(results, indent=1, default=float))
  return text


def main(argv):
  del argv
  bad = [m for m in _MODELS.value if m not in RECIPES]
  if bad:
    raise ValueError(f"--models={','.join(_MODELS.value)}: allowed any of {tuple(RECIPES)}")
  start = time.time()
  text = run(Path(_WORKDIR.value), _MODELS.value, _SPLIT.value, seed=_SEED.value,
             steps=_STEPS.value, eval_problems=_EVAL.value, eval_split=_EVAL_SPLIT.value,
             lr=_LR.value)
  print(text)
  print(f"\nwall time {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
  cli.run(main, required=["workdir"])
