"""`orca-jax lm-eval`: any lm-evaluation-harness task on an orca-jax params directory.

    orca-jax lm-eval --params /ckpt/orca --tokenizer tokenizer.model --tasks truthfulqa_mc2 \\
        [--include_path my_tasks/] [--limit 50] [--num_fewshot 0] [--output results.json]

`OrcaJaxLM` is an `lm_eval.api.model.LM`:
- `loglikelihood`: (context, continuation) -> (summed log-probability, is_greedy), by
  eval/loglikelihood.py's packed rows. Pairs are encoded as the harness encodes them for causal
  models (`loglikelihood.encode_pair`), BOS first; an empty context is BOS alone.
- `loglikelihood_rolling`: a document's log-likelihood in disjoint windows of max_seq_len tokens,
  BOS conditioning the first (the harness's get_rolling_token_windows / make_disjoint_window).
- `generate_until`: greedy decoding (`generate.greedy_generate`) of at most `max_gen_toks` tokens
  (default 256), cut before the first `until` stop string. Sampling is not implemented: a request
  asking for it is decoded greedily, with one warning.
The model config comes from the params directory (`params_io.stored_model_config`), the tokenizer
from `--tokenizer` or the `--config` file's data.tokenizer. Parameters are restored once, in the
compute dtype and the decode layout (parallel.DECODE_AXIS_RULES), and both scoring and decoding use
them as they are. One process only: the harness's rank/world_size stay 0/1.

lm_eval is an optional dependency (`pip install 'orca-jax[eval]'`); only this command needs it.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
from collections.abc import Sequence

import jax

from orca_jax import parallel
from orca_jax.data.tokenizer import Tokenizer
from orca_jax.errors import UserError
from orca_jax.eval import loading
from orca_jax.eval.generate import greedy_generate
from orca_jax.eval.loglikelihood import Pair, encode_pair, score_pairs
from orca_jax.model.config import ModelConfig

try:
    from lm_eval.api.model import LM
except ImportError:  # the command says how to install it; importing this module still works
    LM = None

DEFAULT_MAX_GEN_TOKS = 256
log = logging.getLogger(__name__)


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop string."""
    end = len(text)
    for stop in until:
        if stop:
            found = text.find(stop)
            if found != -1:
                end = min(end, found)
    return text[:end]


class OrcaJaxLM(LM if LM is not None else object):
    """An lm-evaluation-harness model over orca-jax parameters (module docstring)."""

    def __init__(self, params, model_config: ModelConfig, tokenizer: Tokenizer, *, batch_size: int = 8,
                 mesh=None, axis_rules=parallel.DECODE_AXIS_RULES, params_dtype=None,
                 max_gen_toks: int = DEFAULT_MAX_GEN_TOKS):
        super().__init__()
        self.params, self.model_config, self.tokenizer = params, model_config, tokenizer
        self.batch_size, self.mesh, self.axis_rules = batch_size, mesh, axis_rules
        self.params_dtype = loading.params_dtype(model_config, params_dtype)
        self.max_gen_toks = max_gen_toks
        self._warned_sampling = False

    def _score(self, pairs: list[Pair]):
        return score_pairs(self.params, self.model_config, pairs, pad_id=self.tokenizer.pad_id,
                           batch_rows=self.batch_size, mesh=self.mesh, params_dtype=self.params_dtype,
                           axis_rules=self.axis_rules)

    def pair(self, context: str, continuation: str) -> Pair:
        if context == "":
            return Pair((self.tokenizer.bos_id,), tuple(self.tokenizer.encode(continuation)))
        return encode_pair(self.tokenizer, context, continuation)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        scores = self._score([self.pair(*request.args) for request in requests])
        return [(score.logprob, score.greedy) for score in scores]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        pairs, owners = [], []
        for number, request in enumerate(requests):
            windows = get_rolling_token_windows(self.tokenizer.encode(request.args[0]), self.tokenizer.bos_id,
                                                self.model_config.max_seq_len, context_len=1)
            for context, continuation in map(make_disjoint_window, windows):
                pairs.append(Pair(tuple(context), tuple(continuation)))
                owners.append(number)
        totals = [0.0] * len(requests)
        for owner, score in zip(owners, self._score(pairs)):
            totals[owner] += score.logprob
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        # Requests differ in max_gen_toks and stop strings: decode each max_gen_toks group together.
        groups: dict[int, list[int]] = {}
        settings = []
        for number, request in enumerate(requests):
            context, kwargs = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            if (kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0) and not self._warned_sampling:
                log.warning("orca-jax lm-eval decodes greedily; the task asked for sampling (%s)", kwargs)
                self._warned_sampling = True
            max_new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            max_new = max(1, min(max_new, self.model_config.max_seq_len - 1))
            settings.append((context, until, max_new))
            groups.setdefault(max_new, []).append(number)
        outputs = [""] * len(requests)
        for max_new, numbers in groups.items():
            room = self.model_config.max_seq_len - max_new
            # A prompt too long keeps its end (the question), as the harness's own models cut it.
            prompts = [([self.tokenizer.bos_id] + self.tokenizer.encode(settings[n][0]))[-room:] for n in numbers]
            continuations = greedy_generate(self.params, self.model_config, prompts, max_new_tokens=max_new,
                                            eos_id=self.tokenizer.eos_id, pad_id=self.tokenizer.pad_id,
                                            batch_size=self.batch_size, mesh=self.mesh,
                                            params_dtype=self.params_dtype, axis_rules=self.axis_rules)
            for number, ids in zip(numbers, continuations):
                outputs[number] = cut_at_stop(self.tokenizer.decode(ids), settings[number][1])
        return outputs


def load_lm(params: str | pathlib.Path, tokenizer_path: str | pathlib.Path, *, batch_size: int = 8,
            params_dtype: str | None = None, mesh=None) -> OrcaJaxLM:
    """An OrcaJaxLM over a params directory (its model_config.json) and a sentencepiece tokenizer."""
    model_config = loading.model_config_for(params)
    tokenizer = Tokenizer.load(tokenizer_path)
    tokenizer.check_fits(model_config.vocab_size)
    mesh = parallel.make_mesh() if mesh is None else mesh
    dtype = loading.params_dtype(model_config, params_dtype)
    restored = loading.restore_for_decoding(params, model_config, mesh, dtype)
    return OrcaJaxLM(restored, model_config, tokenizer, batch_size=batch_size, mesh=mesh, params_dtype=dtype)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="orca-jax lm-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", required=True, help="params directory (orca-jax convert-weights output)")
    parser.add_argument("--tasks", required=True, help="comma-separated harness task or group names")
    parser.add_argument("--tokenizer", help="sentencepiece model; default the --config file's data.tokenizer")
    parser.add_argument("--config", help="a config file whose data.tokenizer names the tokenizer")
    parser.add_argument("--include_path", help="a folder of extra task YAMLs")
    parser.add_argument("--limit", type=float, help="examples per task (a fraction when below 1)")
    parser.add_argument("--num_fewshot", type=int)
    parser.add_argument("--batch_size", type=int, default=8, help="packed rows / prompts per forward pass")
    parser.add_argument("--params_dtype", help="default: the model's compute dtype")
    parser.add_argument("--output", help="write the harness's results (and per-sample outputs) as JSON")
    return parser.parse_args(argv)


def tokenizer_path(flags: argparse.Namespace) -> str:
    if flags.tokenizer:
        return flags.tokenizer
    if flags.config:
        from orca_jax.config import load_config

        config = load_config(flags.config)
        if "data" in config and config.data.get("tokenizer"):
            return config.data.tokenizer
        raise UserError(f"--config {flags.config} has no data.tokenizer; pass --tokenizer")
    raise UserError("pass --tokenizer (a sentencepiece model) or --config (whose data.tokenizer names one)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = parse_args(argv)
    if LM is None:
        print("orca-jax lm-eval: needs lm-evaluation-harness: pip install 'orca-jax[eval]' (or lm_eval)",
              file=sys.stderr)
        return 1
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import make_table

    try:
        lm = load_lm(flags.params, tokenizer_path(flags), batch_size=flags.batch_size, params_dtype=flags.params_dtype)
        limit = None if flags.limit is None else (int(flags.limit) if flags.limit >= 1 else flags.limit)
        results = simple_evaluate(model=lm, tasks=[t for t in flags.tasks.split(",") if t], limit=limit,
                                  num_fewshot=flags.num_fewshot,
                                  task_manager=TaskManager(include_path=flags.include_path),
                                  log_samples=bool(flags.output), bootstrap_iters=0)
    except (ValueError, FileNotFoundError) as error:  # UserError is a ValueError
        print(f"orca-jax lm-eval: {error}", file=sys.stderr)
        return 1
    if jax.process_index() == 0 and results is not None:
        print(make_table(results))
        if flags.output:
            path = pathlib.Path(flags.output)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0
