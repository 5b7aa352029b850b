"""Input-pipeline throughput (tokens/s per CPU core) and packing efficiency on OpenOrca-like lengths.

    python3 benchmarks/pipeline.py [--records 20000] [--seq-len 2048] [--pack-window 1000]

Builds everything it needs: a BPE tokenizer trained with the project's `train_tokenizer` on the text of
the Python standard library, records whose lengths in tokens follow an OpenOrca-like mix (a system
message, short questions, responses from a few tokens to ~1,500), written as TFDS ArrayRecord shards
by `shards.build_dataset`. Record text is drawn piece by piece from the tokenizer's own piece
frequencies and decoded, so the token lengths are the ones intended.

Per-core throughput is tokens out / CPU seconds of the whole process (all threads), so it does not
depend on how many cores the machine lends. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import sysconfig
import tempfile
import time

import numpy as np
import tensorflow_datasets as tfds

from orca_jax.data import shards
from orca_jax.data.packing import pack_examples
from orca_jax.data.pipeline import ProcessBatches
from orca_jax.data.templates import encode_examples
from orca_jax.data.tokenizer import Tokenizer, train_tokenizer

SYSTEM_MESSAGES = (
    "",
    "You are an AI assistant. You will be given a task. You must generate a detailed and long answer.",
    "You are a helpful assistant, who always provide explanation. Think like you are answering to a "
    "five year old.",
    "You are an AI assistant that helps people find information. Provide a detailed answer so user "
    "don't need to search outside to understand the answer.",
)


def stdlib_text(max_bytes: int) -> list[str]:
    """Lines of the standard library's own source, in a fixed order, up to `max_bytes`."""
    lines, size = [], 0
    for path in sorted(pathlib.Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        for line in path.read_text(encoding="utf-8", errors="ignore").splitlines():
            if line.strip():
                lines.append(line)
                size += len(line)
        if size >= max_bytes:
            break
    return lines


def openorca_like_lengths(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(question tokens, response tokens): log-normal, median 80 and 180, long tails clipped."""
    questions = np.clip(rng.lognormal(np.log(80), 0.8, count), 8, 1000).astype(int)
    responses = np.clip(rng.lognormal(np.log(180), 1.0, count), 3, 1500).astype(int)
    return questions, responses


def synthetic_records(tokenizer: Tokenizer, corpus: list[str], count: int, seed: int) -> list[dict[str, str]]:
    """Records whose question and response are drawn piece by piece from the corpus's piece frequencies."""
    rng = np.random.default_rng(seed)
    corpus_ids = np.concatenate([np.asarray(ids) for ids in tokenizer.encode_batch(corpus)])
    piece_counts = np.bincount(corpus_ids, minlength=tokenizer.num_pieces).astype(np.float64)
    piece_counts[[tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id]] = 0
    questions, responses = openorca_like_lengths(rng, count)
    lengths = np.stack([questions, responses], axis=1).ravel()
    pieces = rng.choice(tokenizer.num_pieces, int(lengths.sum()), p=piece_counts / piece_counts.sum())
    texts = [tokenizer.decode(chunk) for chunk in np.split(pieces, np.cumsum(lengths)[:-1])]
    return [{"id": f"bench.{i}", "system_prompt": SYSTEM_MESSAGES[i % len(SYSTEM_MESSAGES)],
             "question": texts[2 * i], "response": texts[2 * i + 1]} for i in range(count)]


def timed(function):
    """(result, wall seconds, CPU seconds of the whole process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--pack-window", type=int, default=1000)
    parser.add_argument("--vocab-size", type=int, default=8000,
                        help="sentencepiece pieces of the trained model")
    parser.add_argument("--read-threads", type=int, default=0, help="grain prefetch threads (0: synchronous)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    tfds.disable_progress_bar()

    with tempfile.TemporaryDirectory() as work:
        work = pathlib.Path(work)
        corpus = stdlib_text(max_bytes=4_000_000)
        tokenizer = Tokenizer.load(train_tokenizer(corpus, work / "tokenizer", args.vocab_size))
        records = synthetic_records(tokenizer, corpus, args.records, args.seed)
        shards.build_dataset(records, work / "dataset", num_shards=4, validation=0, seed=args.seed)
        split = shards.open_split(work / "dataset", "train")

        stages = {}
        read, wall, cpu = timed(lambda: [split[i] for i in range(len(split))])
        examples, tok_wall, tok_cpu = timed(lambda: encode_examples(tokenizer, "orca", read))
        num_tokens = sum(len(tokens) - 1 for tokens, _ in examples)
        stages["read"] = (wall, cpu)
        stages["tokenize"] = (tok_wall, tok_cpu)
        windows = range(0, len(examples), args.pack_window)
        _, wall, cpu = timed(lambda: [pack_examples(examples[w:w + args.pack_window], args.seq_len,
                                                    tokenizer.pad_id) for w in windows])
        stages["pack"] = (wall, cpu)

        def full_pipeline():
            batches = ProcessBatches(split, tokenizer, "orca", seq_len=args.seq_len, local_batch_size=8,
                                     seed=args.seed, num_epochs=1, process_index=0, process_count=1,
                                     pack_window=args.pack_window, read_threads=args.read_threads)
            return [batch.stats for batch in batches]

        batch_stats, wall, cpu = timed(full_pipeline)
        stages["read+tokenize+pack (pipeline)"] = (wall, cpu)
        pipeline_tokens = sum(stats.num_tokens for stats in batch_stats)
        efficiency = pipeline_tokens / (len(batch_stats) * 8 * args.seq_len)

        efficiency_by_window = {}
        for window in (100, 250, 1000, 4000):
            packed = [pack_examples(examples[w:w + window], args.seq_len, tokenizer.pad_id)
                      for w in range(0, len(examples), window)]
            efficiency_by_window[window] = (sum(p.num_tokens for p in packed)
                                            / sum(p.num_rows * args.seq_len for p in packed))

    print(f"{args.records} records, {num_tokens} tokens (mean {num_tokens / args.records:.0f}/example), "
          f"seq_len {args.seq_len}, pack window {args.pack_window}, {args.vocab_size}-piece BPE")
    print(f"{'stage':<32}{'wall s':>9}{'cpu s':>9}{'tokens/s/core':>16}")
    for name, (wall, cpu) in stages.items():
        print(f"{name:<32}{wall:>9.2f}{cpu:>9.2f}{num_tokens / cpu:>16,.0f}")
    print(f"packing efficiency of the pipeline's batches: {efficiency:.4f}")
    print("efficiency by pack window: " + ", ".join(f"{w}: {e:.4f}" for w, e in efficiency_by_window.items()))
    result = {
        "benchmark": "pipeline", "records": args.records, "tokens": num_tokens, "seq_len": args.seq_len,
        "pack_window": args.pack_window, "vocab_size": args.vocab_size, "read_threads": args.read_threads,
        "tokens_per_s_per_core": {name: round(num_tokens / cpu) for name, (_, cpu) in stages.items()},
        "tokens_per_s_wall": {name: round(num_tokens / wall) for name, (wall, _) in stages.items()},
        "packing_efficiency": round(efficiency, 5),
        "packing_efficiency_by_window": {str(w): round(e, 5) for w, e in efficiency_by_window.items()},
        "dropped": sum(s.num_dropped for s in batch_stats),
        "truncated": sum(s.num_truncated for s in batch_stats),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
