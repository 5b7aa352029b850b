"""The evaluation sets as the files publish them: BIG-Bench Hard, AGIEval and the demo's held-out
questions, read into one `Example` type, and the suites Orca reported.

Layout expected under a benchmarks directory (the public files; they are never copied here):

    bbh/<task>.json        {"examples": [{"input": str, "target": str}, ...]}   (27 tasks)
    agieval/<task>.jsonl   one {"passage", "question", "options", "label", ...} per line
    truthfulqa/mc_task.json  TruthfulQA's multiple-choice questions (read by truthfulqa.py)

An `Example` keeps each field as its source writes it: BBH's input and target untouched, AGIEval's
options as listed ("(A)5(√3 + 1)") and its label written "(C)". How a question becomes a prompt is
`prompts.py`'s business, how a response is judged is `scoring.py`'s; both see the options.

Suites (`SUITES`): Orca's zero-shot protocol scored the 23 multiple-choice BBH tasks (all but
dyck_languages, multistep_arithmetic_two, object_counting and word_sorting: 5,511 examples) and the 8
English multiple-choice AGIEval tasks (2,546 items); `orca` is both.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import string
from collections.abc import Sequence

from orca_jax import paths
from orca_jax.data.jsonl import RecordFormatError, read_objects, require_strings
from orca_jax.errors import UserError

BBH_FREE_FORM_TASKS = ("dyck_languages", "multistep_arithmetic_two", "object_counting", "word_sorting")
BBH_ALL_TASKS = (
    "boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa", "dyck_languages",
    "formal_fallacies", "geometric_shapes", "hyperbaton", "logical_deduction_five_objects",
    "logical_deduction_seven_objects", "logical_deduction_three_objects", "movie_recommendation",
    "multistep_arithmetic_two", "navigate", "object_counting", "penguins_in_a_table",
    "reasoning_about_colored_objects", "ruin_names", "salient_translation_error_detection", "snarks",
    "sports_understanding", "temporal_sequences", "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects", "web_of_lies",
    "word_sorting")
BBH_23_TASKS = tuple(task for task in BBH_ALL_TASKS if task not in BBH_FREE_FORM_TASKS)
AGIEVAL_ENGLISH_TASKS = ("aqua-rat", "logiqa-en", "lsat-ar", "lsat-lr", "lsat-rc", "sat-math", "sat-en",
                         "sat-en-without-passage")

# suite -> [(benchmark, tasks)]; a benchmark with tasks None means every task file in its directory.
SUITES: dict[str, tuple[tuple[str, tuple[str, ...] | None], ...]] = {
    "orca": (("bbh", BBH_23_TASKS), ("agieval", AGIEVAL_ENGLISH_TASKS)),
    "bbh23": (("bbh", BBH_23_TASKS),),
    "agieval_en": (("agieval", AGIEVAL_ENGLISH_TASKS),),
    "bbh": (("bbh", None),),
    "agieval": (("agieval", None),),
    "demo": (("demo", None),),
    # TruthfulQA's multiple-choice task (truthfulqa/mc_task.json): MC1 and MC2 by log-likelihood, or
    # the paper's lettered-choice variant by generation (orca_jax/eval/truthfulqa.py).
    "truthfulqa_mc": (("truthfulqa", None),),
}
BENCHMARKS = ("bbh", "agieval", "demo", "truthfulqa")


@dataclasses.dataclass(frozen=True)
class Example:
    """One question of an evaluation set, fields as its source file has them."""

    benchmark: str
    """'bbh', 'agieval' or 'demo'."""
    task: str
    """What accuracy is broken down by: a benchmark's file name, the demo's `collection.task`."""
    index: int
    """Position in the task's source file (0-based), so a result can be traced back to its row."""
    question: str
    """BBH's `input`, AGIEval's `question`, the demo's `question`."""
    gold: str
    """BBH's `target`; AGIEval's `label` written "(C)"; the demo's `answer`."""
    options: tuple[str, ...] = ()
    """The answer options as the source lists them (BBH: the lines under "Options:"); () if free-form."""
    passage: str = ""
    """AGIEval's passage ('' when none): the context a too-long prompt is cut from first."""
    system_prompt: str | None = None
    """The demo's own per-row system message; None where the benchmark has none."""

    @property
    def id(self) -> str:
        return f"{self.task}.{self.index}"


def bbh_options(text: str) -> list[str]:
    """The options of a BBH input: the non-empty lines after its "Options:" line, a leading "- "
    removed ("- Yes" -> "Yes", "(A) 12/11/1937" kept as is); [] when the input lists none."""
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if line.strip() == "Options:":
            return [option.strip().removeprefix("- ").strip() for option in lines[number + 1:] if option.strip()]
    return []


def task_paths(directory: str | pathlib.Path, suffix: str, tasks: Sequence[str] | None) -> list[pathlib.Path]:
    """The files of `tasks` (all tasks, sorted, when None) in `directory`, in the order asked."""
    directory = paths.path(directory)
    if not directory.is_dir():
        raise UserError(f"benchmark directory {directory} does not exist")
    available = {path.name[:-len(suffix)]: path for path in directory.glob(f"*{suffix}")}
    if not available:
        raise UserError(f"benchmark directory {directory} holds no *{suffix} files")
    chosen = sorted(available) if tasks is None else list(tasks)
    unknown = [task for task in chosen if task not in available]
    if unknown:
        raise UserError(f"unknown tasks {unknown} in {directory}; available: {sorted(available)}")
    return [available[task] for task in chosen]


def read_bbh_task(path: pathlib.Path) -> list[Example]:
    """Every example of one BBH task file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RecordFormatError(f"{path}: not JSON ({err.msg})") from None
    rows = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise RecordFormatError(f"{path}: expected an object with a non-empty 'examples' list")
    examples = []
    for index, row in enumerate(rows):
        for field in ("input", "target"):
            if not isinstance(row, dict) or not isinstance(row.get(field), str):
                raise RecordFormatError(f"{path}: example {index}: field {field!r} is missing or not a string")
        examples.append(Example(benchmark="bbh", task=path.stem, index=index, question=row["input"],
                                gold=row["target"].strip(), options=tuple(bbh_options(row["input"]))))
    return examples


def _agieval_example(path: pathlib.Path, line_number: int, row: dict, index: int) -> Example:
    require_strings(path, line_number, row, ("question", "label"))
    where = f"{path}: line {line_number}"
    passage, options = row.get("passage"), row.get("options")
    if passage is not None and not isinstance(passage, str):
        raise RecordFormatError(f"{where}: field 'passage' is a {type(passage).__name__}, not a string or null")
    if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
        raise RecordFormatError(f"{where}: field 'options' is not a non-empty list of strings (only the "
                                "multiple-choice AGIEval tasks Orca reports are supported)")
    letters = string.ascii_uppercase[:len(options)]
    if row["label"] not in letters:
        raise RecordFormatError(f"{where}: field 'label' is {row['label']!r}, not one of the option letters {letters}")
    return Example(benchmark="agieval", task=path.stem, index=index, question=row["question"],
                   gold=f"({row['label']})", options=tuple(options), passage=passage or "")


def read_agieval_task(path: pathlib.Path) -> list[Example]:
    """Every item of one AGIEval multiple-choice task file."""
    return [_agieval_example(path, line_number, row, index)
            for index, (line_number, row) in enumerate(read_objects(path))]


def demo_task(example_id: str) -> str:
    """The task of a demo id `collection.task.tier.index` (orca_jax.data.demo): `collection.task`."""
    return ".".join(example_id.split(".")[:2])


def read_demo(path: str | pathlib.Path) -> list[Example]:
    """The demo's eval.jsonl rows (`id`, `system_prompt`, `question`, `answer`), in file order.

    The index of an example counts the rows of its task, so ids read `collection.task.<n>`.
    """
    path = paths.path(path)
    if not path.is_file():
        raise UserError(f"demo eval file {path} does not exist (write it with orca-jax make-demo-data)")
    examples, per_task = [], {}
    for line_number, row in read_objects(path):
        require_strings(path, line_number, row, ("id", "system_prompt", "question", "answer"))
        if not row["answer"].strip():
            raise RecordFormatError(f"{path}: line {line_number}: field 'answer' is empty")
        task = demo_task(row["id"])
        per_task[task] = per_task.get(task, -1) + 1
        examples.append(Example(benchmark="demo", task=task, index=per_task[task], question=row["question"],
                                gold=row["answer"], system_prompt=row["system_prompt"]))
    if not examples:
        raise UserError(f"{path}: no eval rows")
    return examples


def read_benchmark(name: str, directory: str | pathlib.Path, tasks: Sequence[str] | None = None) -> list[Example]:
    """Every example of `tasks` (None: all) of benchmark `name`, read from `directory` (the benchmark's
    own folder, e.g. <benchmarks_dir>/bbh; for the demo, its eval.jsonl)."""
    if name == "demo":
        examples = read_demo(directory)
        if tasks is not None:
            unknown = sorted(set(tasks) - {example.task for example in examples})
            if unknown:
                raise UserError(f"unknown demo tasks {unknown} in {directory}")
            examples = [example for example in examples if example.task in tasks]
        return examples
    if name == "bbh":
        return [example for path in task_paths(directory, ".json", tasks) for example in read_bbh_task(path)]
    if name == "agieval":
        return [example for path in task_paths(directory, ".jsonl", tasks) for example in read_agieval_task(path)]
    if name == "truthfulqa":
        from orca_jax.eval import truthfulqa  # it builds on this module's Example: imported here, not above
        return truthfulqa.read_lettered(directory)
    raise UserError(f"unknown benchmark {name!r}; choose one of {list(BENCHMARKS)}")


def load_suite(suite: str, *, benchmarks_dir: str | pathlib.Path | None = None,
               demo_path: str | pathlib.Path | None = None, tasks: Sequence[str] | None = None,
               limit: int | None = None) -> list[Example]:
    """The examples of a suite, `limit` per task when positive, optionally only `tasks` of it.

    `benchmarks_dir` holds bbh/ and agieval/; `demo_path` is the demo's eval.jsonl.
    """
    if suite not in SUITES:
        raise UserError(f"unknown suite {suite!r}; choose one of {sorted(SUITES)}")
    examples = []
    for benchmark, suite_tasks in SUITES[suite]:
        chosen = suite_tasks
        if tasks is not None:
            chosen = [task for task in tasks if suite_tasks is None or task in suite_tasks]
            if not chosen:
                continue
        if benchmark == "demo":
            if demo_path is None:
                raise UserError("the demo suite needs the demo's eval.jsonl (--eval_path)")
            directory = demo_path
        else:
            if benchmarks_dir is None:
                raise UserError(f"suite {suite!r} needs --benchmarks_dir (the folder holding bbh/ and agieval/)")
            directory = paths.path(benchmarks_dir) / benchmark
        examples += read_benchmark(benchmark, directory, chosen)
    if tasks is not None:
        missing = sorted(set(tasks) - {example.task for example in examples})
        if missing:
            raise UserError(f"tasks {missing} are not in suite {suite!r}")
    if limit:
        examples = [example for example in examples if example.index < limit]
    return examples
