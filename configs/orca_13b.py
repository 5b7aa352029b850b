"""Orca-13B: LLaMA-13B explanation-tuned on FLAN-5M (ChatGPT's answers), then FLAN-1M (GPT-4's).

The paper (Mukherjee et al., 2023, section 4) fixes: LLaMA-13B from its released weights, LLaMA's
tokenizer with an added pad token (32001 ids), packed sequences of 2048 tokens, loss on the teacher's
response tokens only, 4 epochs on the ChatGPT data, then continued training on the GPT-4 data for
4 epochs from the first stage's weights. It trained on 20 A100-80GB GPUs (about 160 h + 40 h).
It gives neither learning rate nor batch size; the choices below are ours, with the reasons.

Inputs, made beforehand:
    orca-jax convert-weights import --hf_dir <LLaMA-13B in HF format> --vocab_size 32001 \
        --out weights/llama-13b       (params + the HF directory's tokenizer.model, copied)
    orca-jax prepare-data --input <FLAN-5M ChatGPT files> --output data/flan5m_chatgpt ...
    orca-jax prepare-data --input <FLAN-1M GPT-4 files> --output data/flan1m_gpt4 ...
Then, on every host of the pod: orca-jax train --config configs/orca_13b.py
Publishing the last stage's final step (tokenizer and 'orca' chat template from this config):
    orca-jax convert-weights export --params runs/orca_13b/checkpoints/<step> --config configs/orca_13b.py \
        --dtype bfloat16 --max_shard_mb 5000 --out export/orca-13b
    orca-jax weight-diff make --base <LLaMA-13B in HF format> --target export/orca-13b --out export/orca-13b-diff
"""

import pathlib

from ml_collections import ConfigDict

from orca_jax.config import load_config


def _stage(dataset_dir: str, init: str, epochs: int) -> ConfigDict:
    return ConfigDict({
        "dataset_dir": dataset_dir,
        "init": init,
        "epochs": epochs,  # the stage length is counted from the packed data before training starts
        "num_steps": 0,
        "optimizer": {
            # 2e-5 peak with cosine decay to 0 and ~3% warmup is the recipe of the full fine-tunes of
            # LLaMA-13B that Orca compares against (Alpaca, Vicuna); explanation tuning is the same
            # kind of supervised fine-tuning, at a similar batch size.
            "learning_rate": 2e-5,
            "warmup_steps": 1000,  # ~3% of stage 1's ~38k steps (FLAN-5M at ~2.5B tokens per epoch)
            "decay": "cosine",
            "end_learning_rate_fraction": 0.0,
            # Those recipes use no weight decay: a few epochs of fine-tuning stay close to the
            # pretrained weights anyway. The mask (no decay on norm scales) applies if it is raised.
            "weight_decay": 0.0,
            "b1": 0.9,
            "b2": 0.95,  # LLaMA's own setting; steadier than 0.999 with bf16 activations
            "eps": 1e-8,
            "clip_norm": 1.0,
            "grad_accum_steps": 1,  # 128 rows fit the pod in one pass with full remat
        },
    })


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.workdir = "runs/orca_13b"  # a gs:// bucket path on a pod, so checkpoints outlive the VMs
    config.seed = 0

    config.model = load_config(str(pathlib.Path(__file__).with_name("llama_13b.py"))).model
    config.model.compute_dtype = "bfloat16"
    config.model.remat = "full"  # 40 layers x 2048 tokens of activations do not fit otherwise
    config.model.attention = "splash"  # TPU Pallas kernel, segment-aware for packed rows

    # A TPU v5p-128 slice (64 chips, 95 GB HBM each). Parameters, gradients and Adam moments in
    # float32 are ~210 GB, 3.3 GB per chip when fully sharded, so pure FSDP over all 64 chips fits
    # with room for activations; tensor parallelism would add per-layer all-reduces that only pay
    # when the per-chip batch gets too small to hide the FSDP gathers, which 2 rows x 2048 is not.
    config.mesh = ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})

    config.data = ConfigDict({
        "tokenizer": "weights/llama-13b/tokenizer.model",
        "template": "orca",
        "seq_len": 2048,
        # 128 packed rows = ~262k tokens per step, the token budget per step of Vicuna-13B's recipe;
        # with packing at ~95% efficiency that is ~250k response+prompt tokens.
        "batch_size": 128,
        "pack_window": 1000,
        "validation_batches": 20,
    })

    config.stage_order = ("chatgpt", "gpt4")
    config.stages = ConfigDict({
        "chatgpt": _stage("data/flan5m_chatgpt", init="weights/llama-13b", epochs=4),
        "gpt4": _stage("data/flan1m_gpt4", init="previous", epochs=4),
    })
    config.stages.gpt4.optimizer.warmup_steps = 300  # ~3% of stage 2's ~11k steps

    # ~1.5 s per step on the slice at ~45% MFU: a checkpoint every ~25 minutes bounds the work a
    # preemption loses; the asynchronous save hides the ~160 GB write behind training.
    config.checkpoint = ConfigDict({"every_steps": 1000, "keep": 3})
    # A preempted slice restarts from compiled programs (minutes at 13B) kept beside the checkpoints; a
    # gs:// compilation_cache_dir shared by all hosts serves new slices too.
    config.compilation_cache = True
    config.compilation_cache_dir = ""
    config.log_every_steps = 50
    config.eval_every_steps = 2000
    config.debug = ConfigDict({"nan_at_step": -1})
    # The hosts watch each other: one silent for heartbeat_timeout_seconds counts as dead and the others
    # stop (exit 75) instead of waiting for it in a collective; restarting all resumes (docs/tpu.md).
    config.distributed = ConfigDict({"heartbeat_timeout_seconds": 100, "shutdown_timeout_seconds": 300,
                                     "initialization_timeout_seconds": 300})
    return config
