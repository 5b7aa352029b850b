"""Time per generated token of the decode loop against a minimal hand-written step, on this host.

    python benchmarks/decode.py [--fills 128,512,1024,2048] [--steps 32] [--repeats 5] [--out decode.jsonl]

A small LLaMA (d=256, 4 layers, 4 heads of 64, ffn 768, vocab 1024, float32: CPUs have no fast bf16)
decodes a batch of 8 rows against a 2048-slot cache. For each fill L, the cache is filled (random
keys/values) up to L - steps slots and `--steps` tokens are generated in one jitted call, each step
attending over the L-slot bucket that covers it: the real `generate.decode_loop` (our Llama through
the while_loop, cache in the carry, donated) against `reference_loop` below, written independently
of the model: plain jnp, the layers unrolled, the cache in the loop carry, one dynamic_update_slice per
layer for keys and one for values, attention over the first L slots.
Compiles are excluded (one warm-up call each); every timed call restarts at the same fill.

Also from the compiled one-step programs (the model's decode step and the reference's): XLA's
'bytes accessed' cost analysis against the ideal step (every weight read once, except the embedding
table of which one row per token is read, plus one read of the L filled cache slots and one write
of the new slot). Prints one JSON line per fill and a table.
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
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from orca_jax.eval import generate
from orca_jax.model.config import ModelConfig
from orca_jax.model.llama import KVCache, Llama, init_params

CONFIG = ModelConfig(vocab_size=1024, embed_dim=256, mlp_dim=768, num_layers=4, num_heads=4, num_kv_heads=4,
                     head_dim=64, max_seq_len=4096, compute_dtype="float32")
BATCH = 8
CACHE_SLOTS = 2048
PAD_ID = CONFIG.vocab_size - 1
NO_EOS = CONFIG.vocab_size + 1


# ---- The reference: the same math, written plainly ---------------------------------------------

def _rms(x, scale, eps):
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def _rotate(x, position, theta):
    """x [batch, heads, head_dim] rotated by position [batch], pairs (i, i + head_dim / 2)."""
    half = x.shape[-1] // 2
    frequencies = theta ** (-jnp.arange(half, dtype=jnp.float32) * 2 / x.shape[-1])
    angle = position.astype(jnp.float32)[:, None, None] * frequencies
    a, b = x[..., :half], x[..., half:]
    return jnp.concatenate([a * jnp.cos(angle) - b * jnp.sin(angle), b * jnp.cos(angle) + a * jnp.sin(angle)], -1)


def reference_step(params, keys, values, token, position, slot, attend_length: int):
    """One token per row through every layer; keys/values [layers, batch, heads, slots, head_dim]."""
    cfg, p = CONFIG, params
    x = p["embedder"]["embedding"][token]  # [batch, embed]
    visible = jnp.arange(attend_length) <= slot  # every row's one segment fills slots 0..slot
    for layer in range(cfg.num_layers):
        w = jax.tree.map(lambda a: a[layer], p["layers"])  # noqa: B023
        h = _rms(x, w["attention_norm"]["scale"], cfg.norm_eps)
        q = _rotate(jnp.einsum("be,ehd->bhd", h, w["attention"]["query"]), position, cfg.rope_theta)
        k = _rotate(jnp.einsum("be,ehd->bhd", h, w["attention"]["key"]), position, cfg.rope_theta)
        v = jnp.einsum("be,ehd->bhd", h, w["attention"]["value"])
        at_slot = (layer, 0, 0, slot, 0)
        keys = jax.lax.dynamic_update_slice(keys, k[None, :, :, None], at_slot)
        values = jax.lax.dynamic_update_slice(values, v[None, :, :, None], at_slot)
        scores = jnp.einsum("bhd,bhsd->bhs", q, keys[layer, :, :, :attend_length]) / np.sqrt(cfg.head_dim)
        probs = jax.nn.softmax(jnp.where(visible, scores, -jnp.inf), axis=-1)
        attended = jnp.einsum("bhs,bhsd->bhd", probs, values[layer, :, :, :attend_length])
        x = x + jnp.einsum("bhd,hde->be", attended, w["attention"]["out"])
        h = _rms(x, w["mlp_norm"]["scale"], cfg.norm_eps)
        x = x + (jax.nn.silu(h @ w["mlp"]["gate"]) * (h @ w["mlp"]["up"])) @ w["mlp"]["down"]
    logits = _rms(x, p["final_norm"]["scale"], cfg.norm_eps) @ p["lm_head"]["kernel"]
    return jnp.argmax(logits.at[:, PAD_ID].set(-jnp.inf), axis=-1).astype(jnp.int32), keys, values


def reference_loop(params, keys, values, token, first_slot, steps: int, attend_length: int):
    """`steps` greedy tokens from `first_slot` on, the cache in the while_loop carry."""
    def body(carry):
        i, token, keys, values, out = carry
        slot = first_slot + i
        token, keys, values = reference_step(params, keys, values, token, jnp.broadcast_to(slot, token.shape),
                                             slot, attend_length)
        return i + 1, token, keys, values, out.at[:, i].set(token)

    out = jnp.zeros((token.shape[0], steps), jnp.int32)
    _, _, keys, values, out = jax.lax.while_loop(lambda c: c[0] < steps, body,
                                                 (jnp.int32(0), token, keys, values, out))
    return out, keys, values


# ---- Measurement --------------------------------------------------------------------------------

def make_params():
    rng = np.random.default_rng(0)
    shapes = nn.unbox(jax.eval_shape(lambda: init_params(CONFIG, jax.random.key(0))))

    def fill(path, leaf):
        if "scale" in jax.tree_util.keystr(path):
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.asarray(rng.normal(0.0, 0.05, leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def random_cache(rng) -> KVCache:
    shape = (CONFIG.num_layers, BATCH, CONFIG.num_kv_heads, CACHE_SLOTS, CONFIG.head_dim)
    return KVCache(jnp.asarray(rng.normal(size=shape), jnp.float32), jnp.asarray(rng.normal(size=shape), jnp.float32),
                   jnp.ones((BATCH, CACHE_SLOTS), jnp.int32), jnp.int32(0))


def time_calls(call, repeats: int) -> list[float]:
    call()  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def bytes_accessed(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["bytes accessed"])


def ideal_step_bytes(params, fill: int) -> int:
    itemsize = CONFIG.compute_jnp_dtype.itemsize
    weights = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(params))
    weights -= params["embedder"]["embedding"].nbytes - BATCH * CONFIG.embed_dim * itemsize
    slot = 2 * CONFIG.num_layers * BATCH * CONFIG.num_kv_heads * CONFIG.head_dim * itemsize
    return weights + fill * slot + slot


def measure_fill(params, fill: int, steps: int, repeats: int, rng) -> dict:
    model = Llama(CONFIG)
    first_slot = fill - steps
    tokens = jnp.asarray(rng.integers(0, PAD_ID, size=(BATCH,)), jnp.int32)
    prompt_lengths = jnp.full((BATCH,), first_slot + 1, jnp.int32)  # positions continue from the fill

    ours = jax.jit(lambda params, state: generate.decode_loop(
        model, params, state, prompt_lengths, NO_EOS, PAD_ID, attend_length=fill, end_step=steps),
        donate_argnums=1)
    holder = {"cache": random_cache(rng)}

    def run_ours():
        state = generate.DecodeState(jnp.int32(0), tokens.copy(), holder["cache"]._replace(index=jnp.int32(first_slot)),
                                     jnp.zeros((BATCH,), bool), jnp.zeros((BATCH, steps), jnp.int32))
        state = ours(params, state)
        holder["cache"] = state.cache
        return state.generated.block_until_ready()

    reference = jax.jit(reference_loop, static_argnums=(5, 6), donate_argnums=(1, 2))
    ref_holder = {"kv": (holder["cache"].key.copy(), holder["cache"].value.copy())}

    def run_reference():
        out, keys, values = reference(params, *ref_holder["kv"], tokens, jnp.int32(first_slot), steps, fill)
        ref_holder["kv"] = (keys, values)
        return out.block_until_ready()

    ours_times = [t / steps for t in time_calls(run_ours, repeats)]
    reference_times = [t / steps for t in time_calls(run_reference, repeats)]
    agree = bool(np.array_equal(run_ours(), run_reference()))

    # One-step programs for XLA's byte counts (a while loop's cost analysis counts its body once at most).
    cache = holder["cache"]._replace(index=jnp.int32(first_slot))
    step_ours = jax.jit(lambda params, cache, token: model.apply(
        {"params": params}, token[:, None], jnp.full((BATCH, 1), first_slot, jnp.int32),
        jnp.ones((BATCH, 1), jnp.int32), cache=cache, attend_length=fill), donate_argnums=1)
    step_ours = step_ours.lower(params, cache, tokens).compile()
    step_reference = jax.jit(lambda params, keys, values, token: reference_step(
        params, keys, values, token, jnp.full((BATCH,), first_slot, jnp.int32), first_slot, fill),
        donate_argnums=(1, 2)).lower(params, cache.key, cache.value, tokens).compile()

    ours_median, reference_median = statistics.median(ours_times), statistics.median(reference_times)
    return {
        "fill": fill, "cache_slots": CACHE_SLOTS, "batch": BATCH, "steps_per_call": steps, "repeats": repeats,
        "ours_ms": [round(t * 1e3, 3) for t in ours_times],
        "reference_ms": [round(t * 1e3, 3) for t in reference_times],
        "ours_median_ms": round(ours_median * 1e3, 3), "reference_median_ms": round(reference_median * 1e3, 3),
        "ratio": round(ours_median / reference_median, 3),
        "same_tokens": agree,
        "ours_bytes": bytes_accessed(step_ours), "reference_bytes": bytes_accessed(step_reference),
        "ideal_bytes": ideal_step_bytes(params, fill),
    }


def spread(times: list[float]) -> str:
    return f"{min(times):.2f}-{max(times):.2f}"


def table(results: list[dict]) -> str:
    mb = 1e6
    header = ("fill", "ours ms/token (min-max)", "reference ms/token (min-max)", "ratio",
              "ours MB/step", "reference MB/step", "ideal MB/step", "ours / ideal")
    rows = [header]
    for r in results:
        rows.append((str(r["fill"]), f"{r['ours_median_ms']:.2f} ({spread(r['ours_ms'])})",
                     f"{r['reference_median_ms']:.2f} ({spread(r['reference_ms'])})", f"{r['ratio']:.2f}",
                     f"{r['ours_bytes'] / mb:.1f}", f"{r['reference_bytes'] / mb:.1f}", f"{r['ideal_bytes'] / mb:.1f}",
                     f"{r['ours_bytes'] / r['ideal_bytes']:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fills", default="128,512,1024,2048", help="filled slots (= attended bucket) per case")
    parser.add_argument("--steps", type=int, default=32, help="tokens generated per timed call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="append the JSON lines to this file")
    args = parser.parse_args(argv)
    params = make_params()
    rng = np.random.default_rng(1)
    meta = {"date": datetime.date.today().isoformat(), "jax": jax.__version__, "flax": flax.__version__,
            "backend": jax.default_backend(), "devices": jax.device_count()}
    results = []
    for fill in (int(f) for f in args.fills.split(",")):
        if not args.steps <= fill <= CACHE_SLOTS:
            raise SystemExit(f"fill {fill} must lie in [steps={args.steps}, {CACHE_SLOTS}]")
        results.append({**meta, **measure_fill(params, fill, args.steps, args.repeats, rng)})
        print(json.dumps(results[-1]), flush=True)
    if args.out:
        with open(args.out, "a") as out:
            out.writelines(json.dumps(r) + "\n" for r in results)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
