"""Making FLAN-5M / FLAN-1M: sampling FLAN-v2 (the Orca paper's Table 3) and asking a teacher.

    orca-jax construct sample --config configs/construct.py --out data/construct \
        --config.collections.cot.files="('flan_v2/cot/*.parquet',)" ...
    OPENAI_API_KEY=... orca-jax construct query --config configs/construct.py \
        --input data/construct/flan5m.jsonl --out data/construct/chatgpt.jsonl \
        --config.teacher.model=gpt-3.5-turbo

The defaults reproduce the paper's sizes and system-message assignment; point `files` at your
exports. Message numbers are those of the paper's Table 2 (see system_messages.py).
"""

import ml_collections


def _collection(strategy: str, size: int, messages: tuple, per_task_cap: int = 0, exclude_tasks: str = ""):
    return ml_collections.ConfigDict({
        # Glob patterns of the sub-collection's exports (parquet, .jsonl or .jsonl.gz).
        "files": (),
        # 'all' | 'per_task_cap' | 'algorithm1' (the paper's Algorithm 1); see sampling.py.
        "strategy": strategy,
        # At most this many queries are kept.
        "size": size,
        # With 'per_task_cap': at most this many queries of each task.
        "per_task_cap": per_task_cap,
        # Table 2 message numbers this sub-collection draws from.
        "messages": messages,
        # One weight per entry of `messages`; empty means uniform (the paper's frequencies are unpublished).
        "message_weights": (),
        # Regular expression (case-insensitive); tasks whose name matches it are never sampled.
        "exclude_tasks": exclude_tasks,
    })


def get_config():
    config = ml_collections.ConfigDict()
    # Seeds every draw: the same exports and seed give the same ids, queries and messages.
    config.seed = 0

    # Dialog is skipped, as in the paper; each key is also the id prefix of its records.
    config.collections = ml_collections.ConfigDict({
        "cot": _collection("all", 150_000, (6, 11, 16)),
        "niv": _collection("per_task_cap", 440_000, (1, 2, 5, 7, 9, 12, 13, 14, 15), per_task_cap=300),
        # Big-Bench is held out: BBH is one of the evaluation sets.
        "t0": _collection("algorithm1", 2_000_000, (1, 2, 3, 5, 7), exclude_tasks=r"big[-_ ]?bench"),
        # 8 and 10 are given only to multiple-choice queries (system_messages.MULTIPLE_CHOICE_ONLY).
        "flan": _collection("algorithm1", 2_500_000, (3, 4, 7, 8, 10)),
    })

    # Column names of the exports (FLAN-v2's own export names by default).
    config.columns = ml_collections.ConfigDict({
        "query": "inputs",
        "target": "targets",
        "task": "task_name",
        "template_type": "template_type",
    })
    # Only zero-shot templates are sampled; "opt" templates list answer options (multiple choice).
    config.zero_shot_template_types = ("zs_opt", "zs_noopt")
    config.multiple_choice_template_types = ("zs_opt",)
    # FLAN-1M: a uniform random subset of the FLAN-5M ids, answered by the second teacher.
    config.flan1m_size = 1_000_000

    config.teacher = ml_collections.ConfigDict({
        # OpenAI-compatible API root; requests go to <base_url>/chat/completions.
        "base_url": "https://api.openai.com/v1",
        "model": "gpt-3.5-turbo",
        "temperature": 0.7,
        # Completion budget per query (also counted against tokens_per_minute before a reply).
        "max_tokens": 2048,
        # Name of the environment variable holding the API key; the key itself is never stored.
        "api_key_env": "OPENAI_API_KEY",
        # Requests in flight at once.
        "concurrency": 16,
        "requests_per_minute": 3_500.0,
        "tokens_per_minute": 90_000.0,
        # Per-request socket timeout (connect and each read), seconds.
        "timeout_s": 120.0,
        # Tries per query before it is recorded as failed. This is the one retry policy: the openai SDK's
        # own retries are off, so every attempt passes the rate limiter and is counted (Retry-After honoured).
        "max_attempts": 6,
        # Exponential backoff with full jitter: delay ~ U(0, min(max, initial * 2**retry)) seconds.
        "backoff_initial_s": 1.0,
        "backoff_max_s": 60.0,
        # US dollars per 1,000 tokens, for the running cost estimate.
        "price_per_1k_prompt_tokens": 0.0015,
        "price_per_1k_completion_tokens": 0.002,
    })
    return config
