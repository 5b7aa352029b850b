"""Generate an answer to every example, score it, and keep each finished task in a journal.

Tasks are decoded one after another; when one is done its scored rows go to the journal (JSONL: a
header with the settings, then one row per example), so an interrupted evaluation resumes at the first
unfinished task instead of starting over. The header must match the new run's settings exactly: a
journal of other settings is refused, never mixed in.

Every process of a multi-host job runs the same decode (the batch is sharded over the mesh); only
process 0 writes.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Mapping, Sequence

import jax
import tqdm
from jax.sharding import Mesh

from orca_jax import parallel, paths
from orca_jax.data.tokenizer import Tokenizer
from orca_jax.errors import UserError
from orca_jax.eval import scoring
from orca_jax.eval.benchmarks import Example
from orca_jax.eval.generate import greedy_generate
from orca_jax.eval.prompts import PromptBuilder
from orca_jax.model.config import ModelConfig


class JournalError(UserError):
    """A journal that belongs to another evaluation, or that cannot be read; the message names it."""


def score_row(row: Mapping) -> dict:
    """`row` (with 'options', 'gold', 'response') plus the scorer's 'extracted' and 'correct'."""
    verdict = scoring.score(row["response"], row["options"], row["gold"])
    return {**row, "extracted": verdict.extracted, "correct": verdict.correct}


class Journal:
    """Finished tasks' rows on disk (or in a bucket), under a header of the settings that produced them."""

    def __init__(self, path: str | pathlib.Path, settings: Mapping):
        self.path = paths.path(path)
        self.settings = json.loads(json.dumps(settings))  # as it reads back from JSON
        self.done: dict[str, list[dict]] = {}
        if self.path.is_file():
            self._read()

    def _read(self) -> None:
        lines = [line for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        parsed = []
        for number, line in enumerate(lines):
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError:
                if number == len(lines) - 1:
                    # A kill mid-write tears at most the last line (its task is not marked done); cut it
                    # off so that what this run appends starts on a line of its own.
                    if jax.process_index() == 0:
                        self.path.write_text("".join(line + "\n" for line in lines[:-1]), encoding="utf-8")
                    break
                raise JournalError(f"{self.path}: line {number + 1} is not JSON; not an evaluation journal "
                                   "(delete it or choose another --journal)") from None
        if not parsed:
            return
        if not isinstance(parsed[0], dict) or parsed[0].get("settings") != self.settings:
            raise JournalError(f"{self.path} holds an evaluation with other settings; delete it or choose "
                               "another --journal to start afresh")
        pending: dict[str, list[dict]] = {}
        for row in parsed[1:]:
            if row.get("_task_done"):
                self.done[row["task"]] = pending.pop(row["task"], [])
            else:
                pending.setdefault(row["task"], []).append(row)

    def record(self, task: str, rows: Sequence[dict]) -> None:
        """Append a finished task; the marker row is written last, so a torn write leaves it unfinished."""
        self.done[task] = list(rows)
        if jax.process_index() != 0:
            return
        new_file = not self.path.is_file() or paths.size(self.path) == 0
        lines = [json.dumps({"settings": self.settings})] if new_file else []
        lines += [json.dumps(row, ensure_ascii=False) for row in rows]
        lines.append(json.dumps({"task": task, "_task_done": True}))
        paths.append_text(self.path, "".join(line + "\n" for line in lines))


def evaluate_examples(params, model_config: ModelConfig, tokenizer: Tokenizer, builder: PromptBuilder,
                      examples: Sequence[Example], *, max_new_tokens: int, batch_size: int,
                      mesh: Mesh | None = None, axis_rules=parallel.DECODE_AXIS_RULES,
                      journal: Journal | None = None, progress: bool = False,
                      on_task_done: Callable[[str, list[dict]], None] | None = None) -> list[dict]:
    """Scored rows for `examples`, task by task, in their order (see the module docstring).

    Each row: benchmark, task, index, prompt, options, gold, response, extracted, correct, skipped,
    truncated. `params` and `axis_rules` as `generate.greedy_generate` takes them: pass parameters
    already prepared (`generate.prepare_params`, or restored into `generate.abstract_decode_params`)
    so that no task casts or re-lays them out again.
    """
    def decode_task(task_examples: list[Example], on_batch_done: Callable[[int], None]) -> list[dict]:
        return score_examples(params, model_config, tokenizer, builder, task_examples, max_new_tokens=max_new_tokens,
                              batch_size=batch_size, mesh=mesh, axis_rules=axis_rules, on_batch_done=on_batch_done)

    return run_by_task(examples, decode_task, journal=journal, progress=progress, desc="evaluate",
                       on_task_done=on_task_done)


def run_by_task(examples: Sequence[Example], score_task: Callable[[list[Example], Callable[[int], None]], list[dict]],
                *, journal: Journal | None = None, progress: bool = False, desc: str = "evaluate",
                on_task_done: Callable[[str, list[dict]], None] | None = None) -> list[dict]:
    """`score_task(task_examples, on_batch_done)` for each task in turn, finished tasks journaled (and
    taken from the journal on a rerun), a progress bar over examples; the rows of every task in order.
    Every scoring method (generation here, log-likelihood in loglikelihood.py) runs through this."""
    by_task: dict[str, list[Example]] = {}
    for example in examples:
        by_task.setdefault(example.task, []).append(example)
    bar = tqdm.tqdm(total=len(examples), desc=desc, unit="q", disable=not progress or jax.process_index() != 0)
    rows: list[dict] = []
    try:
        for task, task_examples in by_task.items():
            if journal is not None and task in journal.done:
                task_rows = journal.done[task]
            else:
                before = bar.n
                task_rows = score_task(task_examples, lambda done, before=before: bar.update(before + done - bar.n))
                if journal is not None:
                    journal.record(task, task_rows)
            bar.n = len(rows) + len(task_rows)
            bar.refresh()
            if on_task_done is not None:
                on_task_done(task, task_rows)
            rows += task_rows
    finally:
        bar.close()
    return rows


def score_examples(params, model_config: ModelConfig, tokenizer: Tokenizer, builder: PromptBuilder,
                   examples: Sequence[Example], *, max_new_tokens: int, batch_size: int, mesh: Mesh | None,
                   axis_rules=parallel.DECODE_AXIS_RULES,
                   on_batch_done: Callable[[int], None] | None = None) -> list[dict]:
    """Scored rows (as evaluate_examples gives them) of `examples` decoded together, whatever their task."""
    prompts = [builder.build(example) for example in examples]
    decodable = [index for index, prompt in enumerate(prompts) if not prompt.skipped]
    responses = [""] * len(examples)
    if decodable:
        continuations = greedy_generate(params, model_config, [prompts[i].tokens for i in decodable],
                                        max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id,
                                        pad_id=tokenizer.pad_id, batch_size=batch_size, mesh=mesh,
                                        axis_rules=axis_rules, on_batch_done=on_batch_done)
        for index, ids in zip(decodable, continuations):
            responses[index] = tokenizer.decode(ids)
    rows = []
    for example, prompt, response in zip(examples, prompts, responses):
        row = {"benchmark": example.benchmark, "task": example.task, "index": example.index,
               "prompt": prompt.text, "options": list(example.options), "gold": example.gold,
               "response": response}
        row = score_row(row)
        if prompt.skipped:
            row["correct"] = False
        rows.append({**row, "skipped": prompt.skipped, "truncated": prompt.truncated})
    return rows
