"""Making Orca's training data: sample FLAN-v2 zero-shot queries, pair each with one of the paper's
system messages, and collect a teacher model's answers as OpenOrca records.

    sampling.py         FLAN-5M / FLAN-1M selection (Table 3, Algorithm 1)
    flan.py             readers of FLAN-v2 exports
    system_messages.py  Table 2's 16 messages and their assignment per sub-collection
    teacher.py          the OpenAI-compatible chat-completions client (retries, backoff)
    ratelimit.py        requests- and tokens-per-minute pacing
    journal.py          crash-safe append-only JSONL
    jsonl.py            JSON Lines reading with errors naming file and line
    query.py            the resumable teacher run
    cli.py              `orca-jax construct sample|query`
"""
