"""The quickstart: Orca's two-stage recipe at toy scale, trained on a laptop CPU in minutes.

`orca-jax train` (no --config) runs this. It writes the synthetic two-teacher data, trains a
1000-piece tokenizer and builds the TFDS shards under `workdir/data` (skipped when already there),
trains a ~1M-parameter LLaMA on the terse teacher (stage 1, the role of ChatGPT in the paper) and
then on the step-by-step teacher (stage 2, GPT-4's role) from stage 1's weights, and reports loss and
held-out accuracy before training and after each stage (the `eval` block: the same evaluation
`orca-jax evaluate --suite demo` runs, logged to metrics.jsonl and TensorBoard as `bench_accuracy`).

Paths under `workdir` are references: `--config.workdir=/elsewhere` moves all of them.
"""

from ml_collections import ConfigDict


def _stage(workdir, name: str, *, init: str, epochs: int, learning_rate: float, warmup_steps: int) -> ConfigDict:
    return ConfigDict({
        "dataset_dir": workdir + f"/data/{name}_shards",
        "init": init,
        "epochs": epochs,
        "num_steps": 0,
        "optimizer": {
            "learning_rate": learning_rate,
            "warmup_steps": warmup_steps,
            "decay": "cosine",
            "end_learning_rate_fraction": 0.1,
            "weight_decay": 0.01,
            "b1": 0.9,
            "b2": 0.98,  # shorter memory than 0.999: a few hundred steps leave no time to average over
            "eps": 1e-8,
            "clip_norm": 1.0,
            "grad_accum_steps": 1,
        },
    })


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.workdir = "./runs/demo"
    config.seed = 0
    workdir = config.get_ref("workdir")

    # ~1.1M parameters: the demo tasks (arithmetic, sorting, weekdays) are learned by 1-5M-parameter
    # models in a few hundred steps; wider or deeper costs more CPU time than it buys here.
    config.model = ConfigDict({
        "vocab_size": 1001,  # the demo tokenizer's 1000 pieces + the appended pad
        "embed_dim": 128,
        "mlp_dim": 384,
        "num_layers": 4,
        "num_heads": 4,
        "num_kv_heads": 4,
        "head_dim": 32,
        "rope_theta": 10000.0,
        "norm_eps": 1e-6,
        "max_seq_len": 256,
        "param_dtype": "float32",
        "compute_dtype": "float32",  # CPUs have no fast bfloat16 matmuls
        "remat": "none",
        "scan_layers": True,
        "attention": "xla",
    })
    config.mesh = ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})

    config.data = ConfigDict({
        "tokenizer": workdir + "/data/tokenizer.model",
        "template": "orca",
        "seq_len": 256,
        "batch_size": 8,  # global rows per optimizer step: twice 16's updates for the same epochs, at
        # ~0.6-0.9 s a step on 2 busy cores against ~1.15 s at 16 (not yet compared with 16 on accuracy)
        "pack_window": 256,  # records packed together; larger packs tighter but delays the first batch
        "validation_batches": 4,  # per validation pass; 0 reads the whole validation split
    })

    config.stage_order = ("stage1", "stage2")
    config.stages = ConfigDict({
        "stage1": _stage(workdir, "stage1", init="random", epochs=2, learning_rate=3e-3, warmup_steps=20),
        # Stage 2 at stage 1's rate: at 1e-3 the step-by-step model copied the same weekday or number into
        # every counting step and scored 19% held out (below stage 1's 24%); at 3e-3 it scored 29%.
        "stage2": _stage(workdir, "stage2", init="previous", epochs=3, learning_rate=3e-3, warmup_steps=20),
    })

    config.checkpoint = ConfigDict({"every_steps": 50, "keep": 2})
    config.compilation_cache = True  # compiled programs under workdir/compilation_cache: restarts skip compiling
    config.compilation_cache_dir = ""
    config.log_every_steps = 10
    config.eval_every_steps = 0  # 0: validation loss only at the start and end of each stage
    config.debug = ConfigDict({"nan_at_step": -1})  # >0 poisons that global step's batch (tests)

    # What `orca-jax train` prepares before training when the files are missing, and how it reports.
    config.demo = ConfigDict({
        "data_dir": workdir + "/data",
        "data_seed": 0,
        "stage1_rows": 4000,
        "stage2_rows": 2000,
        "eval_rows": 200,
        "tokenizer_pieces": 1000,
        "validation_fraction": 0.05,
    })
    # Held-out accuracy before training and at each stage's end, by greedy decoding.
    config.eval = ConfigDict({
        "suite": "demo",
        "tasks": (),
        "examples_per_task": 12,  # 8 tasks: 96 of the 200 held-out questions
        "every_steps": 0,
        "benchmarks_dir": "",
        "eval_path": workdir + "/data/eval.jsonl",
        "max_new_tokens": 80,  # stage 2's longest step-by-step responses (sort) are ~70 tokens with the Answer line
        "batch_size": 48,
        "system_message": None,  # each question's own
        "prompt_style": "chat",
    })
    return config
