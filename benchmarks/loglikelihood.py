"""Options scored per second by `eval.loglikelihood.score_pairs` on this host: packed rows against one
(prompt, option) pair per row.

    python benchmarks/loglikelihood.py [--questions 64] [--options 4] [--row_length 512] [--batch_rows 8]
                                       [--repeats 5] [--out loglikelihood.jsonl]

A small LLaMA (d=256, 4 layers, 4 heads of 64, ffn 768, vocab 1024, float32: CPUs have no fast bf16),
random weights, one device. The workload imitates a multiple-choice benchmark: each question has a
prompt of 60-300 tokens and `--options` options of 3-20 tokens (random ids, seeded), and every
(prompt, option) pair is one row segment. Both layouts score the same pairs with the same compiled
shape ([batch_rows, row_length]); one warm-up call each (the compile) is excluded, then `--repeats`
timed calls. Prints one JSON line per layout (median, min, max seconds; options/s; rows; the packed
rows' fill) and a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time

import flax
import jax
import numpy as np

from orca_jax.eval.loglikelihood import Pair, build_rows, score_pairs
from orca_jax.model.config import ModelConfig
from orca_jax.model.llama import init_params

CONFIG = ModelConfig(vocab_size=1024, embed_dim=256, mlp_dim=768, num_layers=4, num_heads=4, num_kv_heads=4,
                     head_dim=64, max_seq_len=2048, compute_dtype="float32")
PAD_ID = CONFIG.vocab_size - 1


def workload(questions: int, options: int, seed: int = 0) -> list[Pair]:
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(questions):
        prompt = (1, *rng.integers(3, PAD_ID, int(rng.integers(60, 301))).tolist())
        pairs += [Pair(prompt, tuple(rng.integers(3, PAD_ID, int(rng.integers(3, 21))).tolist()))
                  for _ in range(options)]
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--options", type=int, default=4)
    parser.add_argument("--row_length", type=int, default=512)
    parser.add_argument("--batch_rows", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="append the JSON lines to this file")
    flags = parser.parse_args(argv)

    params = flax.linen.unbox(init_params(CONFIG, jax.random.key(0)))
    pairs = workload(flags.questions, flags.options)
    results = []
    for layout, packed in (("packed", True), ("one pair per row", False)):
        rows, _, _ = build_rows(pairs, flags.row_length, PAD_ID, packed=packed)
        fill = float(np.count_nonzero(rows["segment_ids"]) / rows["segment_ids"].size)

        def run(packed=packed):
            return score_pairs(params, CONFIG, pairs, pad_id=PAD_ID, row_length=flags.row_length,
                               batch_rows=flags.batch_rows, packed=packed)

        scores = run()  # compile
        times = []
        for _ in range(flags.repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        results.append({
            "benchmark": "loglikelihood", "layout": layout, "pairs": len(pairs), "rows": len(rows["inputs"]),
            "row_length": flags.row_length, "batch_rows": flags.batch_rows, "fill": round(fill, 3),
            "median_s": round(median, 4), "min_s": round(min(times), 4), "max_s": round(max(times), 4),
            "options_per_s": round(len(pairs) / median, 1), "repeats": flags.repeats,
            "checksum": round(sum(score.logprob for score in scores), 2),
            "model": "d256 L4 h4x64 ffn768 vocab1024 float32", "device": jax.devices()[0].device_kind,
            "jax": jax.__version__, "flax": flax.__version__,
            "date": datetime.date.today().isoformat()})
    if abs(results[0]["checksum"] - results[1]["checksum"]) > 0.05 * len(pairs):
        print("packed and one-pair-per-row scores differ", file=sys.stderr)
        return 1
    for result in results:
        print(json.dumps(result))
    if flags.out:
        with open(flags.out, "a", encoding="utf-8") as out:
            out.writelines(json.dumps(result) + "\n" for result in results)
    print(f"\n{'layout':<18} {'rows':>5} {'fill':>6} {'median s':>9} {'min-max s':>15} {'options/s':>10}")
    for r in results:
        spread = f"{r['min_s']:.3f}-{r['max_s']:.3f}"
        print(f"{r['layout']:<18} {r['rows']:>5} {r['fill']:>6.1%} {r['median_s']:>9.3f} "
              f"{spread:>15} {r['options_per_s']:>10.1f}")
    print(f"packed / one pair per row: {results[0]['options_per_s'] / results[1]['options_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
