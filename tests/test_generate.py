"""Greedy decoding against an independent token-by-token reference on the unpadded prompt, plus the
decode loop's own properties: bucketed attention, one in-place cache, decode meshes, bf16 weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from orca_jax import parallel
from orca_jax.eval import generate, streaming
from orca_jax.eval.generate import attend_buckets, greedy_decode_batch, greedy_generate, prompt_bucket
from orca_jax.model.config import ModelConfig
from orca_jax.model.llama import Llama

CONFIG = ModelConfig(vocab_size=64, embed_dim=32, mlp_dim=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=8, max_seq_len=64, compute_dtype="float32")
PAD_ID = CONFIG.vocab_size - 1
NEW_TOKENS = 8
# An id the model can produce but the prompts avoid; tests that want no early stop use UNREACHABLE_EOS.
EOS_ID = 2
UNREACHABLE_EOS = CONFIG.vocab_size + 7


def abstract_params():
    dummy = jnp.zeros((1, 4), jnp.int32)
    return jax.eval_shape(lambda: Llama(CONFIG).init(jax.random.key(0), dummy, dummy, dummy + 1))["params"]


@pytest.fixture(scope="module")
def params():
    # Filled from the shapes alone (no compiled init). Weights ten times LLaMA's 0.02 init give peaked
    # logits, so argmax ties between differently shaped (but equal in exact arithmetic) computations
    # cannot flip a token.
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        if "scale" in jax.tree_util.keystr(path):
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.asarray(rng.normal(0.0, 0.2, leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, nn.unbox(abstract_params()))


def random_prompt(seed: int, length: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return rng.integers(3, PAD_ID, size=length).tolist()


@jax.jit
def _left_aligned_forward(params, tokens):
    """Plain causal forward of one row starting at column 0: positions 0.., a single segment."""
    positions = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]
    return Llama(CONFIG).apply({"params": params}, tokens, positions, jnp.ones_like(tokens))


def stepwise_reference(params, prompt: list[int], eos_id: int) -> list[int]:
    """Grow the unpadded sequence one argmax at a time, re-running the forward pass each step.

    The sequence sits at the start of a fixed max_seq_len row so one compilation serves every step;
    what follows it is in the future, which causal attention keeps invisible. This layout is the
    opposite of the decoder's right-aligned, segment-masked buffer, so the two share no padding logic.
    """
    sequence, generated = list(prompt), []
    for _ in range(NEW_TOKENS):
        row = np.zeros((1, CONFIG.max_seq_len), np.int32)
        row[0, :len(sequence)] = sequence
        logits = _left_aligned_forward(params, jnp.asarray(row))
        next_token = int(jnp.argmax(logits[0, len(sequence) - 1, :PAD_ID]))  # the pad id is never a word
        if next_token == eos_id:
            break
        generated.append(next_token)
        sequence.append(next_token)
    return generated


def test_prompt_bucket_rounds_up_to_powers_of_two_within_the_limit():
    assert [prompt_bucket(n, 56) for n in (1, 16, 17, 33, 56)] == [16, 16, 32, 56, 56]


def test_matches_stepwise_reference_across_lengths_and_buckets(params):
    # Lengths 3, 7, 12 share the 16-wide bucket; 20 gets a 32-wide bucket padded with empty rows.
    prompts = [random_prompt(seed, length) for seed, length in enumerate((3, 7, 12, 20))]
    outputs = greedy_generate(params, CONFIG, prompts, max_new_tokens=NEW_TOKENS, eos_id=EOS_ID,
                              pad_id=PAD_ID, batch_size=3)
    assert outputs == [stepwise_reference(params, p, EOS_ID) for p in prompts]


def test_stops_at_eos_and_ends_the_loop_early(params):
    prompt = random_prompt(11, 9)
    free_run = stepwise_reference(params, prompt, UNREACHABLE_EOS)
    stop_index = 3
    eos_id = free_run[stop_index]
    expected_stop = free_run.index(eos_id)  # the same token may already occur earlier

    tokens = np.full((3, 16), PAD_ID, np.int32)
    tokens[0, -len(prompt):] = prompt
    lengths = np.array([len(prompt), 0, 0], np.int32)  # two filler rows start finished
    generated, steps = greedy_decode_batch(params, CONFIG, tokens, lengths, max_new_tokens=NEW_TOKENS,
                                           eos_id=eos_id, pad_id=PAD_ID)
    assert steps == expected_stop + 1 < NEW_TOKENS
    assert generated[0, :expected_stop].tolist() == free_run[:expected_stop]
    assert generated[0, expected_stop] == eos_id
    assert (generated[0, expected_stop + 1:] == PAD_ID).all()
    assert (generated[1:] == PAD_ID).all()


def test_short_prompt_alone_or_beside_longer_ones_gives_the_same_output(params):
    short, longer = random_prompt(21, 4), [random_prompt(22, 29), random_prompt(23, 17)]
    (alone,) = greedy_generate(params, CONFIG, [short], max_new_tokens=NEW_TOKENS, eos_id=UNREACHABLE_EOS,
                               pad_id=PAD_ID, batch_size=3)

    tokens = np.full((3, 32), PAD_ID, np.int32)
    for row, prompt in enumerate([short, *longer]):
        tokens[row, -len(prompt):] = prompt
    lengths = np.array([len(short), *map(len, longer)], np.int32)
    generated, _ = greedy_decode_batch(params, CONFIG, tokens, lengths, max_new_tokens=NEW_TOKENS,
                                       eos_id=UNREACHABLE_EOS, pad_id=PAD_ID)
    assert generated[0].tolist() == alone
    assert len(alone) == NEW_TOKENS


def test_one_column_prompt_needs_no_prefill(params):
    # With a one-token prompt width the cache's prefill block is empty; the loop feeds the only token.
    prompt = random_prompt(24, 1)
    tokens = np.array([prompt, [PAD_ID]], np.int32)
    generated, _ = greedy_decode_batch(params, CONFIG, tokens, np.array([1, 0], np.int32),
                                       max_new_tokens=NEW_TOKENS, eos_id=UNREACHABLE_EOS, pad_id=PAD_ID)
    assert generated[0].tolist() == stepwise_reference(params, prompt, UNREACHABLE_EOS)
    assert (generated[1] == PAD_ID).all()


def test_sharded_params_on_a_mesh_match_the_reference(params):
    mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
    shardings = parallel.param_shardings(mesh, abstract_params())
    sharded = jax.device_put(params, shardings)
    assert sharded["layers"]["attention"]["query"].sharding.spec != jax.sharding.PartitionSpec()

    prompts = [random_prompt(seed, length) for seed, length in zip(range(30, 35), (5, 9, 2, 14, 11))]
    on_mesh = greedy_generate(sharded, CONFIG, prompts, max_new_tokens=NEW_TOKENS, eos_id=EOS_ID,
                              pad_id=PAD_ID, batch_size=3, mesh=mesh)  # rounds up to 4 rows
    assert on_mesh == [stepwise_reference(params, p, EOS_ID) for p in prompts]


def test_prompt_too_long_for_the_model_is_a_clear_error(params):
    too_long = random_prompt(40, CONFIG.max_seq_len - NEW_TOKENS + 1)
    with pytest.raises(ValueError, match=r"prompt 1 has 57 tokens"):
        greedy_generate(params, CONFIG, [[5, 6], too_long], max_new_tokens=NEW_TOKENS, eos_id=EOS_ID,
                        pad_id=PAD_ID, batch_size=2)


def test_attend_buckets_double_up_to_the_cache_length():
    assert attend_buckets(23, 8) == (8, 16, 23)
    assert attend_buckets(16, 8) == (8, 16)
    assert attend_buckets(2047, 128) == (128, 256, 512, 1024, 2047)
    assert attend_buckets(100, 128) == (100,)


def test_bucketed_attention_crossing_bucket_boundaries_matches_the_reference(params):
    # Buckets of 8, 16, 23 slots for a 16-wide prompt and 8 new tokens: the prefill (15 slots) attends
    # over 16 slots, step 0 fills slot 15 (still bucket 16), steps 1-7 attend over all 23.
    prompts = [random_prompt(seed, length) for seed, length in zip(range(50, 53), (14, 16, 9))]
    bucketed = greedy_generate(params, CONFIG, prompts, max_new_tokens=NEW_TOKENS, eos_id=UNREACHABLE_EOS,
                               pad_id=PAD_ID, batch_size=3, min_bucket=8)
    whole_cache = greedy_generate(params, CONFIG, prompts, max_new_tokens=NEW_TOKENS, eos_id=UNREACHABLE_EOS,
                                  pad_id=PAD_ID, batch_size=3, min_bucket=1024)
    assert bucketed == whole_cache == [stepwise_reference(params, p, UNREACHABLE_EOS) for p in prompts]


def test_bucketed_loop_stops_at_eos_inside_a_later_bucket(params):
    prompt = random_prompt(54, 7)
    free_run = stepwise_reference(params, prompt, UNREACHABLE_EOS)
    eos_id = free_run[5]
    expected_stop = free_run.index(eos_id)
    tokens = np.full((2, 8), PAD_ID, np.int32)
    tokens[0, -len(prompt):] = prompt
    # Buckets 4, 8, 15: the 7 prefill slots attend over 8, steps 0 in bucket 8, steps 1.. in 15.
    generated, steps = greedy_decode_batch(params, CONFIG, tokens, np.array([len(prompt), 0], np.int32),
                                           max_new_tokens=NEW_TOKENS, eos_id=eos_id, pad_id=PAD_ID, min_bucket=4)
    assert steps == expected_stop + 1
    assert generated[0, :expected_stop + 1].tolist() == free_run[:expected_stop] + [eos_id]
    assert (generated[0, expected_stop + 1:] == PAD_ID).all() and (generated[1] == PAD_ID).all()


def test_compiled_decode_loop_keeps_one_cache_and_copies_none_of_it():
    """The while loops carry the cache in place: no whole-cache copy in the program beyond splitting
    the zero fill into keys and values, and the temporaries hold one cache (plus bucket-sized work),
    where the old flax-collection cache kept 3.3 caches live and copied it 4 times."""
    config = CONFIG.replace(max_seq_len=1024)
    batch, width, new_tokens = 4, 16, 300
    cache_length = width + new_tokens - 1
    abstract = generate.abstract_decode_params(config)
    ints = [jax.ShapeDtypeStruct(shape, jnp.int32) for shape in ((batch, width), (batch,), (), ())]
    compiled = jax.jit(generate.decode_program(config, new_tokens, min_bucket=64)).lower(abstract, *ints).compile()
    kv_type = f"f32[{config.num_layers},{batch},{config.num_kv_heads},{cache_length},{config.head_dim}]"
    cache_copies = [line for line in compiled.as_text().splitlines() if kv_type in line and " copy(" in line]
    assert len(cache_copies) <= 1, cache_copies
    cache_bytes = 2 * 4 * config.num_layers * batch * cache_length * config.num_kv_heads * config.head_dim
    assert compiled.memory_analysis().temp_size_in_bytes < 2 * cache_bytes


def test_tensor_and_data_parallel_decode_mesh_matches_one_device(params):
    mesh = parallel.make_mesh(data=4, fsdp=1, tensor=2)
    sharded = generate.prepare_params(params, CONFIG, mesh)
    query_spec = sharded["layers"]["attention"]["query"].sharding.spec
    assert tuple(query_spec)[:3] == (None, None, "tensor")  # [layers, embed (whole), heads (split)]
    assert tuple(sharded["layers"]["mlp"]["down"].sharding.spec)[:2] == (None, "tensor")
    prompts = [random_prompt(seed, length) for seed, length in zip(range(60, 65), (5, 9, 2, 14, 11))]
    kwargs = dict(max_new_tokens=NEW_TOKENS, eos_id=EOS_ID, pad_id=PAD_ID, batch_size=3)
    done = []
    on_mesh = greedy_generate(sharded, CONFIG, prompts, mesh=mesh, on_batch_done=done.append, **kwargs)
    assert done == [4, 5]  # batch_size rounds up to the 4 data rows
    assert on_mesh == greedy_generate(params, CONFIG, prompts, **kwargs)


def test_bfloat16_model_decodes_with_weights_cast_once_to_bfloat16(params):
    config = CONFIG.replace(compute_dtype="bfloat16")
    assert generate.decode_params_dtype(config) == jnp.bfloat16
    prepared = generate.prepare_params(params, config)
    assert prepared["layers"]["attention"]["query"].dtype == jnp.bfloat16
    assert prepared["final_norm"]["scale"].dtype == jnp.float32  # norm scales keep their dtype
    assert generate.prepare_params(prepared, config) is prepared  # already prepared: no copy
    abstract = generate.abstract_decode_params(config)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), abstract) == jax.tree.map(lambda a: (a.shape, a.dtype), prepared)
    prompts = [random_prompt(seed, length) for seed, length in zip(range(70, 72), (6, 11))]
    kwargs = dict(max_new_tokens=NEW_TOKENS, eos_id=UNREACHABLE_EOS, pad_id=PAD_ID, batch_size=2)
    cast = greedy_generate(params, config, prompts, **kwargs)
    kept = greedy_generate(params, config, prompts, params_dtype="float32", **kwargs)
    # The model casts each weight to bfloat16 at its matmul anyway: casting first changes no logit.
    assert cast == kept and all(len(tokens) == NEW_TOKENS for tokens in cast)


@pytest.mark.parametrize("chunk", [1, 3, NEW_TOKENS])
def test_chunked_decoder_gives_greedy_generate_tokens_across_buckets(params, chunk):
    # min_bucket=8: a chunk's steps cross from one attention bucket into the next inside one call.
    prompts = [random_prompt(seed, length) for seed, length in zip(range(100, 103), (14, 5, 9))]
    kwargs = dict(max_new_tokens=NEW_TOKENS, eos_id=EOS_ID, pad_id=PAD_ID, min_bucket=8)
    expected = greedy_generate(params, CONFIG, prompts, batch_size=3, **kwargs)
    run = streaming.ChunkedDecoder(params, CONFIG, **kwargs).start(prompts, batch_size=4)
    calls = 0
    while not run.done:
        run.advance(chunk)
        calls += 1
    assert run.tokens() == expected
    assert calls == -(-run.step // chunk)  # each call ran its full chunk until the loop ended


def test_chunked_decoder_stops_rows_the_host_ends(params):
    prompts = [random_prompt(seed, length) for seed, length in zip(range(110, 112), (6, 7))]
    kwargs = dict(max_new_tokens=NEW_TOKENS, eos_id=UNREACHABLE_EOS, pad_id=PAD_ID)
    full = greedy_generate(params, CONFIG, prompts, batch_size=2, **kwargs)
    run = streaming.ChunkedDecoder(params, CONFIG, **kwargs).start(prompts)
    assert run.state.rng is None  # greedy decoding carries no keys
    run.advance(2)
    run.stop([0])
    assert run.finished.tolist() == [True, False]
    while not run.done:
        run.advance(2)
    assert run.tokens() == [full[0][:2], full[1]]
    run = streaming.ChunkedDecoder(params, CONFIG, **kwargs).start(prompts)
    run.advance(3)
    run.stop([0, 1])
    assert run.done and run.step == 3


def test_chunked_decoder_on_a_decode_mesh_matches_one_device(params):
    mesh = parallel.make_mesh(data=2, fsdp=1, tensor=2, devices=jax.devices()[:4])
    prompts = [random_prompt(seed, length) for seed, length in zip(range(120, 123), (5, 12, 8))]
    kwargs = dict(max_new_tokens=NEW_TOKENS, eos_id=EOS_ID, pad_id=PAD_ID)
    run = streaming.ChunkedDecoder(params, CONFIG, mesh=mesh, **kwargs).start(prompts, batch_size=4)
    while not run.done:
        run.advance(3)
    assert run.tokens() == greedy_generate(params, CONFIG, prompts, batch_size=3, **kwargs)
    with pytest.raises(ValueError, match="batch size"):
        streaming.ChunkedDecoder(params, CONFIG, mesh=mesh, **kwargs).start(prompts)  # 3 rows over 2
