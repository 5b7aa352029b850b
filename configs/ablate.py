"""`orca-jax ablate`: Orca's two claims in miniature, several seeds each, on the serial tasks.

Claim 1 (explanation tuning): the same questions trained with answer-only, terse (two operations per
line) and step-by-step (one per line) responses, for the same number of steps. Claim 2 (progressive
learning): a small step-by-step set alone; a large terse stage 1 then that small set as stage 2 (the
paper's ablation); and the control the paper lacks, the small set alone for as many steps as both
stages together. train/ablate.py builds one training config per (condition, seed) from the blocks
below: everything but `ablate` is an ordinary training config's.

Paths under `workdir` are references: `--config.workdir=/elsewhere` moves all of them.
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.workdir = "./runs/ablate"
    workdir = config.get_ref("workdir")

    # 0.52M parameters (0.19M of them the two 1001-row embeddings): a step-by-step line is one
    # operation for a 3-layer model, a whole question is not.
    config.model = ConfigDict({
        "vocab_size": 1001,  # 1000 pieces + the appended pad
        "embed_dim": 96,
        "mlp_dim": 256,
        "num_layers": 3,
        "num_heads": 4,
        "num_kv_heads": 4,
        "head_dim": 24,
        "rope_theta": 10000.0,
        "norm_eps": 1e-6,
        "max_seq_len": 256,
        "param_dtype": "float32",
        "compute_dtype": "float32",
        "remat": "none",
        "scan_layers": True,
        "attention": "xla",
    })
    config.mesh = ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    config.data = ConfigDict({
        "tokenizer": workdir + "/data/tokenizer.model",
        "template": "orca",
        "seq_len": 192,  # step-by-step examples are ~95 tokens (the longest ~160): two to a row
        "batch_size": 8,
        "pack_window": 256,
        "validation_batches": 2,
    })
    config.optimizer = ConfigDict({
        "learning_rate": 3e-3,
        "warmup_steps": 20,
        "decay": "cosine",
        "end_learning_rate_fraction": 0.1,
        "weight_decay": 0.01,
        "b1": 0.9,
        "b2": 0.98,
        "eps": 1e-8,
        "clip_norm": 1.0,
        "grad_accum_steps": 1,
    })
    config.checkpoint = ConfigDict({"every_steps": 1_000_000, "keep": 1})  # each stage's final step only
    config.compilation_cache = True
    config.compilation_cache_dir = workdir + "/compilation_cache"  # shared: each shape compiles once
    config.log_every_steps = 10

    config.ablate = ConfigDict({
        "data_dir": workdir + "/data",
        "data_seed": 0,  # the questions, held-out set included; the same for every model seed
        "train_questions": 8000,  # claim 1's questions and claim 2's stage 1
        "small_questions": 1000,  # claim 2's step-by-step set: the first of the same questions
        "eval_per_family": 30,  # held out, 5 families
        "tokenizer_pieces": 1000,
        # Frequent (two-digit) numbers as one piece each: a step-by-step line is then one lookup for this model;
        # with digits split (LLaMA's choice) every line is itself multi-digit arithmetic, and at this
        # budget no style got past ~13% (docs/results.md).
        "split_digits": False,
        "validation_fraction": 0.02,
        "claim1_seeds": (0, 1, 2),
        "claim2_seeds": (0, 1, 2, 3, 4),
        "claim1_steps": 1000,
        "stage1_steps": 500,
        "stage2_steps": 250,
        "eval_batch_size": 160,  # every held-out question in one decode batch
        "max_new_tokens": 112,  # the longest step-by-step response is ~95 tokens
        "workers": 2,  # training processes side by side: one per core
    })
    return config
