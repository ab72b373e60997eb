"""Every configuration key with its default. Recipes import this and override.

  python -m mdpo_jax.train --config configs/base.py --workdir /tmp/run   # tiny Countdown SFT

Override any key on the command line: `--config.optim.lr=1e-3`. The config is locked, so a typo
(`--config.optim.learning_rate=...`) is an error, not a silently ignored setting.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.trainer = "sft"            # pretrain | sft | ilm (insertion LM) | mdpo | diffu_grpo
  c.seed = 0                   # parameter init, data order, noise; everything derives from it

  # ---- model -----------------------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.family = "llada"     # llada | dream | ar (mdpo_jax.models.families: model, presets,
                               # HF; ar: the causal baseline, trainer pretrain|sft, eval.sampler ar)
  c.model.preset = "tiny"      # the family's: llada: tiny | llada_8b; dream: tiny | dream_7b; ar: tiny
  c.model.hf_checkpoint = ""   # a Hugging Face folder of model.family to start from (overrides
                               # preset; its config.json model_type must match the family)
  c.model.init_checkpoint = ""  # a run's WORKDIR/checkpoints to take params from (e.g. SFT → RL)
  c.model.d_model = 128        # the rest override the preset when not None/""
  c.model.n_layers = 4
  c.model.n_heads = 4
  c.model.n_kv_heads = 4
  c.model.mlp_hidden_size = 384
  c.model.rope_theta = 10000.0
  c.model.max_sequence_length = 512
  c.model.dtype = "float32"    # compute dtype: float32 | bfloat16
  c.model.param_dtype = "float32"
  c.model.remat = "none"       # none | full | save_dots
  c.model.scan_layers = True
  c.model.honor_padding = True
  c.model.attention_impl = "xla"  # xla | dot_product_attention | cudnn (GPU) | splash (TPU)
  c.model.lora_rank = 0        # > 0: train LoRA adapters of this rank (qwix) on frozen base weights
  c.model.lora_alpha = 16.0    # adapter scale alpha / rank
  c.model.lora_targets = "q_proj,k_proj,v_proj,attn_out,ff_proj,up_proj,ff_out"  # any subset

  # ---- parallelism -------------------------------------------------------------------------
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1             # -1: all devices not used by the other axes
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.rules = ""            # logical-axis rules overrides, e.g. "embed=,mlp=fsdp"; "" = the
                               # default table in mdpo_jax.parallel
  c.mesh.constrain_rows = True  # pin activations' rows to the data axes at block boundaries
                               # (parallel.constrain_rows; False: XLA's propagation decides)

  # ---- task and data -------------------------------------------------------------------------
  c.task = ml_collections.ConfigDict()
  c.task.name = "countdown"    # countdown | math | gsm8k | sudoku | stargraph | reversal
                               # (countdown, sudoku, stargraph: procedural; reversal: fictitious
                               # facts, train_size facts, eval_size/val_size of them queried;
                               # math, gsm8k: JSONL files below); pretraining reads
                               # data.pretrain_files instead
  c.task.train_file = ""       # math: training records (problem, answer/solution) as JSONL
  c.task.eval_file = ""        # math: held-out records, e.g. MATH500 as JSONL
  c.task.num_numbers = (3,)    # allowed counts of numbers per problem
  c.task.number_min = 1
  c.task.number_max = 20
  c.task.target_min = 1
  c.task.target_max = 100
  c.task.answer_style = "steps"   # steps (intermediate arithmetic, then \boxed{}) | expression
  c.task.target_sampling = "reachable"  # reachable (target uniform over the values the numbers
                                       # reach) | expression (the value of a random expression)
  c.task.solution_order = "canonical"  # canonical | given (SFT answers write the numbers in
                                       # the prompt's order when a solution does: 59% of
                                       # `reachable` problems, every `expression` one)
  c.task.prompt_style = "compact"  # compact (numbers + target) | full (SPEC §5 instructions)
  c.task.empty_min = 6         # sudoku: empty cells per puzzle, drawn uniformly from
  c.task.empty_max = 10        # [empty_min, empty_max] (≤ 12: 4 clues at least)
  c.task.graph_degree = 3      # stargraph: arms leaving the source (B&N's degree)
  c.task.arm_min = 5           # stargraph: nodes per arm, source included (B&N's path length),
  c.task.arm_max = 5           # drawn uniformly per arm from [arm_min, arm_max]
  c.task.graph_nodes = 20      # stargraph: node labels (one letter each, ≤ 26)
  c.task.train_size = 12000    # procedural training problems (seed = c.seed); 3 numbers in
                               # 1–20 with targets ≤ 100 have only 16292 distinct solvable problems
  c.task.eval_size = 1000      # held-out problems (disjoint from training: seed + 1, deduplicated)

  c.data = ml_collections.ConfigDict()
  c.data.tokenizer = "char"    # char (built from the task alphabet) | path to a tokenizer.json
  c.task.val_size = 500        # validation problems for tuning (countdown: from the training
                               # distribution, disjoint from training and held-out)
  c.task.sft_extra_fresh = 0   # countdown SFT: also train on the first N of RL's fresh prompts
                               # (solver answers) — a control for RL with rl.prompt_source=fresh
  c.task.val_file = ""         # math: validation records as JSONL (needed only to tune on them)
  c.data.seq_len = 80          # prompt + answer + EOS padding, per training row
  c.data.prompt_len = 36       # left-padded prompt width for sampling/evaluation
  c.data.batch_size = 64       # global batch per optimiser step (all processes, all micro-batches)
  c.data.pretrain_files = ""   # comma-separated JSONL / ArrayRecord files for trainer=pretrain
  c.data.text_key = "text"

  # ---- optimisation ----------------------------------------------------------------------------
  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-3
  c.optim.schedule = "cosine"  # constant | cosine | linear (after warm-up)
  c.optim.warmup_steps = 200
  c.optim.end_lr_ratio = 0.1   # final lr = lr × end_lr_ratio (cosine/linear)
  c.optim.b1 = 0.9
  c.optim.b2 = 0.99
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.01
  c.optim.clip_norm = 1.0      # 0 = no clipping
  c.optim.grad_accum_steps = 1  # micro-batches per optimiser step (batch_size must divide)
  c.optim.mask_eps = 1e-3      # masking probability floor p = (1-eps)·t + eps
  c.optim.mu_dtype = ""         # Adam's first moment: "" = the params' dtype | float32 | bfloat16
  c.optim.max_skipped_steps = 3  # a NaN/Inf loss or gradient skips the step; this many in a row
                                 # stop the run (exit status 1; the checkpoints stay finite;
                                 # checked at every log line and checkpoint, every RL update)

  # ---- loop --------------------------------------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 3000     # optimiser steps
  c.train.max_minutes = 0.0    # stop (with a checkpoint) after this wall time; 0 = no limit
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 2
  c.train.async_checkpoint = True
  c.train.save_timeout_s = 600.0  # a checkpoint write that takes longer is a storage fault: exit 1
  c.train.resume_allow = ""    # keys (or sections) that may differ from the checkpoint's config on
                               # resume, e.g. "optim.lr,data.batch_size" (others are an error)
  c.train.eval_every = 0       # 0 = evaluate only at the end

  # ---- evaluation ----------------------------------------------------------------------------------
  c.eval = ml_collections.ConfigDict()
  c.eval.sampler = "llada"      # llada (steps × remasking below) | fhs (first-hitting: one token
                               # per model call, gen_length calls; steps/remasking do not apply)
                               # | ar (left to right, model.family="ar" only; cache none|prefix)
  c.eval.num_problems = 500    # held-out problems evaluated (≤ task.eval_size)
  c.eval.batch_size = 250
  c.eval.gen_length = 48       # generated tokens (answer + EOS)
  c.eval.block_length = 48
  c.eval.steps = (48, 12)      # one entry per setting: 48 = one token per step, 12 = four
  c.eval.remasking = ("low_confidence", "rcr")
  c.eval.temperature = 0.0
  c.eval.trajectory_stats = True  # score every intermediate prediction x̂0_t too
  c.eval.cache = "none"        # none | prefix | dual: the sampler's KV cache (Fast-dLLM-style)
  c.eval.threshold = 0.0       # > 0: also commit every token with confidence ≥ this (0 = off)
  c.eval.cfg_scale = 0.0       # unsupervised classifier-free guidance weight w ≥ 0 (SMDM; the
                               # prompt masked is the unconditional model; 0 = no guidance)
  c.eval.head_chunk = 0        # > 0: the sampler applies the LM head this many positions at a
                               # time (no [B, L, V] logits; cache none, no CFG; 0 = all at once)

  # ---- RL (trainer = mdpo | diffu_grpo) ------------------------------------------------------
  c.rl = ml_collections.ConfigDict()
  c.rl.num_updates = 200       # rollout batches; each gives rl.inner_iters optimiser steps
  c.rl.prompts_per_update = 8  # B prompts per rollout batch
  c.rl.group_size = 16         # G samples per prompt (group-relative advantages)
  c.rl.top_k = 4               # MDPO: steps with the largest |Â_t| trained per rollout
  c.rl.inner_iters = 1         # optimiser steps per rollout batch (>1: PPO ratio vs stored logp)
  c.rl.micro_batch = 64        # rows per forward/backward; gradients averaged over the batch
  c.rl.temperature = 1.0       # rollout temperature (MDPO's loss uses the same T')
  c.rl.gen_length = 48
  c.rl.steps = 12              # denoising steps per rollout (MDPO trains on up to top_k of them)
  c.rl.block_lengths = (48,)   # one drawn per rollout batch (the reference mixes 128 and 512)
  c.rl.remasking = "low_confidence"
  c.rl.cache = "none"          # none | prefix | dual: KV cache of the rollout sampler (MDPO's
                               # per-step x̂0_t record stays complete; positions outside the
                               # cache window carry their last prediction)
  c.rl.head_chunk = 0          # > 0: LM head over this many positions at a time in rollouts
                               # (memory; needs rl.cache none; see eval.head_chunk)
  c.rl.clip_eps = 0.2          # PPO clip (diffu-GRPO reference: 0.5)
  c.rl.beta = 0.0              # KL weight; 0 → no reference model in memory (MDPO: k2, d1: k3)
  c.rl.loss_normalisation = "example_mean"  # MDPO batch reduction: example_mean (each example
                               # weighs the same) | batch_tokens (the reference's Σ / Σ|M|)
  c.rl.prompt_mask_prob = 0.15  # diffu-GRPO: prompt tokens masked in the one-step estimate
  c.rl.filter = "none"         # none | over_denoising (keep prompts with right-then-wrong greedy)
  c.rl.filter_pool_size = 512  # training prompts scanned by the filter each refresh
  c.rl.filter_refresh_updates = 50
  c.rl.prompt_source = "train"  # train (the SFT problems) | fresh (countdown: problems disjoint
                                # from training, validation and held-out; rollouts never repeat
                                # an answer SFT taught)
  c.rl.fresh_size = 2000       # fresh prompts generated when rl.prompt_source = "fresh"
  c.rl.reward_workers = 0      # verifier processes (0 = inline: cheap verifiers, no time limit)
  c.rl.reward_timeout_s = 5.0
  # Co-GRPO (trainer="cogrpo"; rl/cogrpo.py): the schedule policy φ and what it trains.
  c.rl.cogrpo_mode = "joint"   # joint | model_only (θ, fixed schedule) | schedule_only (φ, θ frozen)
  c.rl.cogrpo_knobs = ("commit", "temperature", "rank_temperature")  # + "cfg_scale" (2× forward)
  c.rl.cogrpo_init_std = 0.3   # φ's starting std per action (unconstrained space)
  c.rl.cogrpo_schedule_lr = 0.05  # Adam on φ (clip 1.0)
  c.rl.cogrpo_rank_temperature = 0.05  # starting ranking temperature τ (hand rule: τ → 0)
  c.rl.cogrpo_cfg_scale = 0.5  # starting CFG weight when the cfg_scale knob is learned

  # ---- logging -------------------------------------------------------------------------------------
  c.logging = ml_collections.ConfigDict()
  c.logging.tensorboard = True
  c.logging.wandb = False
  c.logging.wandb_project = "mdpo_jax"
  return c
