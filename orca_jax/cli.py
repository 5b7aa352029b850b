"""`orca-jax <command> ...`: a thin door. Each command lives in the module that does the work.

Commands are imported lazily so that, e.g., `orca-jax train` never imports TensorFlow or the
teacher client, and a missing optional dependency only breaks the command that needs it.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, one-line help). Each module exposes `main(argv: list[str]) -> int | None`.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("orca_jax.train.supervisor", "run the staged training job of a config (the demo by default)"),
    "prepare-data": ("orca_jax.data.prepare", "turn OpenOrca-style parquet/JSONL into TFDS shards"),
    "make-demo-data": ("orca_jax.data.demo", "write the synthetic two-teacher demo dataset"),
    "convert-weights": ("orca_jax.model.convert", "import/export LLaMA weights (HF safetensors, Meta .pth)"),
    "weight-diff": ("orca_jax.model.weight_diff", "make/apply a bit-exact diff of a fine-tune from its base (HF)"),
    "construct": ("orca_jax.data.construct.cli", "sample FLAN-v2 queries and ask a teacher model"),
    "evaluate": ("orca_jax.eval.main", "exact-match evaluation of a checkpoint"),
    "lm-eval": ("orca_jax.eval.lm_eval_adapter", "run lm-evaluation-harness tasks on a params directory"),
    "judge": ("orca_jax.eval.judge", "a judge model compares answers to open-ended prompts with a reference's"),
    "chat": ("orca_jax.eval.chat", "talk to saved parameters in the terminal, streaming the response"),
    "generate": ("orca_jax.eval.generate_cli", "responses to a JSONL file of prompts (greedy or sampled)"),
    "ablate": ("orca_jax.train.ablate", "explanation tuning and progressive learning ablations, several seeds"),
    "report": ("orca_jax.train.report", "PNG figures and a Markdown summary of a training run's directory"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: orca-jax <command> [args...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"orca-jax: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
