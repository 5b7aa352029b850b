"""The answer scorer: one test per reading rule, agreement with hand labels, and the demo's verdicts."""

import json
import pathlib
import random

import pytest

from orca_jax.eval.benchmarks import bbh_options
from orca_jax.eval.scoring import Verdict, score

from conftest import SHARED_BENCHMARKS as BENCHMARKS

DATA = pathlib.Path(__file__).resolve().parent / "data"
# The development set the scorer was written against, and two sets written blind by people who had not
# seen the scorer (the first was then used to fix the classes of error it showed; the second was not).
LABELLED_SETS = ("scoring_labelled.jsonl", "scoring_heldout.jsonl", "scoring_heldout2.jsonl")

FRUIT = ["(A) Ulysses", "(B) Frankenstein", "(C) Lolita"]
DATES = ["(A) 12/11/1937", "(B) 12/25/1937", "(C) 01/04/1938", "(D) 12/04/1937"]
AQUA = ["(A)5(√3 + 1)", "(B)6(√3 + √2)", "(C)7(√3 – 1)", "(D)8(√3 – 2)", "(E)None of these"]
COUNTS = ["(A) zero", "(B) one", "(C) two", "(D) three"]
SNARKS = ["(A) He's a generous person", "(B) He's a terrible person"]
YES_NO, VALIDITY = ["Yes", "No"], ["valid", "invalid"]
RACE = ["(A) Ann finished last", "(B) Joe finished last", "(C) Amy finished last"]
SHUFFLED = ["(A) Tom went to Rome.", "(C) Sue went to Oslo.", "(B) Raj went to Lima.", "(D) Kim went to Bern."]


def check(response, options, gold, extracted, correct):
    assert score(response, options, gold) == Verdict(extracted, correct)


@pytest.mark.parametrize("response", [
    "(B)", "B", "b", "B)", "[B]", "Option B", "option (b)", "**B**", "**(B)**", "B.", "(B) Frankenstein",
    "B. Frankenstein", "Answer: B", "  B  ", "The answer is B.", "\\text{B}",
])
def test_letters_in_any_dress(response):
    check(response, FRUIT, "(B)", "(B)", True)


@pytest.mark.parametrize("response, extracted", [
    ("A heptagon.", ""),  # an article, not option (A)
    ("I think so.", ""),  # a pronoun
    ("Bob has it.", ""),
    ("(C)", "(C)"),
    ("C is correct", "(C)"),
])
def test_capitals_that_are_words_are_not_letters(response, extracted):
    check(response, FRUIT, "(B)", extracted, False)


@pytest.mark.parametrize("response, options, gold, extracted, correct", [
    ("Frankenstein", FRUIT, "(B)", "(B)", True),
    ("frankenstein.", FRUIT, "(B)", "(B)", True),
    ('"Frankenstein"', FRUIT, "(B)", "(B)", True),
    ("At the end of the semester, Bob has Frankenstein.", FRUIT, "(B)", "(B)", True),
    ("At the end of the semester, Bob has Lolita.", FRUIT, "(B)", "(C)", False),
    ("12/25/1937", DATES, "(B)", "(B)", True),
    ("5(√3 + 1) minutes", AQUA, "(A)", "(A)", True),
    ("(E) None of these", AQUA, "(E)", "(E)", True),  # an option's text, not a refusal
    ("Answer: 3", COUNTS, "(D)", "(D)", True),  # digits name a number-word option
    ("Monsters, Inc", ["(A) Monsters", "(B) Inc", "(C) Town & Country"], "Monsters, Inc", "monsters, inc", True),
    ("(A)", ["(A) Monsters", "(B) Inc", "(C) Town & Country"], "Monsters, Inc", "(A)", False),
    ("Answer: Town & Country", ["(A) Monsters", "(B) Inc", "(C) Town & Country"], "Town & Country", "(C)", True),
    ("B", ["A No dangshen", "B No Shouwu"], "(B)", "(B)", True),  # AGIEval options lettered without parentheses
    ("Raj went to Lima.", SHUFFLED, "(B)", "(B)", True),  # options listed out of letter order
    ("Answer: C", SHUFFLED, "(C)", "(C)", True),
    ("Joe", RACE, "(B)", "(B)", True),  # a few words found in one option's text only
    ("Probably Amy.", RACE, "(B)", "(C)", False),
    ("finished last", RACE, "(B)", "", False),  # in every option
    ("Not Joe", RACE, "(B)", "", False),
    ("Joe or Amy", RACE, "(B)", "", False),
    ("Bob has Frankenstein and Lolita.", FRUIT, "(B)", "", False),  # no word-subset reading of a sentence
])
def test_option_text(response, options, gold, extracted, correct):
    check(response, options, gold, extracted, correct)


@pytest.mark.parametrize("response", [
    "Bob ends with Frankenstein.\nSo the answer is (B).",
    "So the answer is (B).",
    "Final answer: B",
    "**Answer:** (B)",
    "Answer: **B**",
    "Reasoning...\n\\boxed{B}",
    "$\\boxed{\\text{(B)}}$",
    "### Answer\nB",
    "**Answer:**\n(B)",
    "Among A through C, the answer is B",
    "I'd go with (B).",
    "Q: Which book does Bob have?\nA: (B)",
    "(A) looks tempting at first.\nThe correct option is (B).",
])
def test_answer_statements(response):
    check(response, FRUIT, "(B)", "(B)", True)


@pytest.mark.parametrize("response, options, gold, extracted, correct", [
    ("Yes, the black wire caused it.", YES_NO, "Yes", "yes", True),
    ("No. The red wire was the problem.", YES_NO, "Yes", "no", False),
    ("No one else touched it, so yes.", YES_NO, "Yes", "yes", True),
    ("**Yes** - clearly.", YES_NO, "Yes", "yes", True),
    ("The argument is deductively valid.", VALIDITY, "valid", "valid", True),
    ("The argument is not valid.", VALIDITY, "invalid", "invalid", True),
    ("Invalid. It affirms the consequent.", VALIDITY, "invalid", "invalid", True),
    ("Answer: True", [], "True", "true", True),
    ("not True = False, and False and True = False.", [], "False", "false", True),
    ("The sentence is plausible.", [], "yes", "yes", True),
    ("The sentence is not plausible.", [], "yes", "no", False),
    ("So the answer is No.", [], "No", "no", True),
    ("It could be yes or no.", YES_NO, "No", "", False),
    ("Overall, the expression comes out to __True__.\n\n- `not False` -> True\n- `True or False` -> True",
     [], "True", "true", True),  # a label after a copula in the first sentence
    ("not False is True.\nTrue and False is False.\nSo the result is False.", [], "False", "false", True),
    ("Kandi doesn't tell the truth.", [], "No", "no", True),  # a yes/no answer stated as a sentence
    ("So Kandi tells the truth.", [], "No", "yes", False),
    ("Kandi lies.", [], "Yes", "no", False),
    ("Kandi does not lie.", [], "Yes", "yes", True),
    ("You never get back to the starting point.", YES_NO, "No", "no", True),
    ("You end up back at the starting point.", YES_NO, "Yes", "yes", True),
    ("The storm did cause the outage.", YES_NO, "Yes", "yes", True),
    ("Kandi says Leda lies.", [], "No", "", False),  # a premise, not an answer
    ("The answer is not clear.", YES_NO, "No", "", False),
])
def test_labels(response, options, gold, extracted, correct):
    check(response, options, gold, extracted, correct)


@pytest.mark.parametrize("response, gold, extracted, correct", [
    ("Answer: 8 musical instruments", "8", "8", True),
    ("eight", "8", "8", True),
    ("There are 8.", "8", "8", True),
    ("46 - 22 = 24.", "24", "24", True),
    ("-11520", "-11520", "-11520", True),
    ("Answer: 1,024", "1024", "1024", True),
    ("Total = 1+3+1 = 5.\nSo the answer is 5.", "5", "5", True),
    ("Answer: 14", "8", "14", False),
    ("Either 2 or 3.", "3", "", False),
    ("Answer: 8 9", "8", "", False),  # two numbers listed: no single answer
])
def test_numbers(response, gold, extracted, correct):
    check(response, [], gold, extracted, correct)


@pytest.mark.parametrize("response, extracted, correct", [
    ("Either (A) or (C).", "", False),
    ("(A) or (B)", "", False),
    ("(A) and (B)", "", False),
    ("I think A, but possibly B.", "", False),
    ("Probably (B), though (A) might also be right.", "", False),
    ("(B) is the answer, not (A).", "(B)", True),
    ("(B) rather than (A)", "(B)", True),
    ("It's not (A) but (B).", "(B)", True),
    ("The answer is (B). (A) is wrong because Alice keeps it.", "(B)", True),
    ("The answer is (B) because Alice keeps Ulysses.", "(B)", True),
    ("I cannot determine which book Bob has.", "", False),
    ("None of the options is right, but the closest is (B).", "", False),
    ("I'm not sure, maybe (B).", "", False),
    ("Without enough information I'd guess (B).", "", False),
    ("The answer is (A). Wait, actually it is (B).", "(B)", True),
    ("Answer: A\nHmm, let me recheck the swaps.\nCorrection: the answer is B.", "(B)", True),
    ("Answer: (B)\nOn second thought, it is (C).", "(C)", False),
    ("Bob gets Frankenstein in the end, unless the last swap is undone... I would say (B) or (C).", "", False),
    ("Bob ends up with (B); then again, (C) is possible if the order differs. Hard to tell which one.", "", False),
    ("(B)\nThe second swap might also leave him (A); it's unclear which was meant.", "", False),
    ("At first it could be either (A) or (B).\nAfter the last swap Bob has Frankenstein.\nSo the answer is (B).",
     "(B)", True),  # an answer stated after the doubt settles it
    ("I can't be fully sure without the full story, but the most likely answer is (B).", "(B)", True),
    ("I can't determine which book it is, though perhaps (B).", "", False),
    ("Section A of the story says Bob swaps twice; in other words, (B).", "(B)", True),  # "Section A" is no option
    ("The narrator of part C would side with Bob, that is, (B).", "(B)", True),
    ("Passages A and C agree that Bob keeps Frankenstein, namely (B).", "(B)", True),
])
def test_several_answers_hedges_refusals_and_corrections(response, extracted, correct):
    check(response, FRUIT, "(B)", extracted, correct)


@pytest.mark.parametrize("response, extracted", [
    ("(C)\nBob first gets Lolita, but the last swap gives him (B).\nAnswer: (B)", "(B)"),  # explicit beats first
    ("(B)\nInitially Bob has Frankenstein; the swaps move Lolita around, as in (C).", "(B)"),  # first line
    ("Initially Alice has Ulysses and Claire has Lolita.\nIn the end Bob has Frankenstein.", "(B)"),  # last line
    ("Bob gives up Frankenstein (B) in the first swap\nand never sees it again\nthe end", "(B)"),  # named once
    ("1. Alice has Ulysses.\n2. Claire has Lolita.\nDone!", ""),  # a list item is not an answer; two named
    ("Let's track each swap. First Claire and Bob swap, so Bob now has (C) and Claire", ""),  # truncated
    ("Alice keeps Ulysses. Now checking option (B): Bob's final book —", ""),  # cut off while checking
    ("Alice keeps Ulysses. Let's consider (B) next:", ""),
    ("Alice keeps Ulysses, which rules out (A). Considering option (C), Bob", ""),
])
def test_which_part_counts(response, extracted):
    assert score(response, FRUIT, "(B)").extracted == extracted


@pytest.mark.parametrize("response", [
    "", " ", "\n\n", "\x00", "Answer:", "Answer:\n", "\\boxed{", "\\boxed{" * 1000, "((((((((", "答案：B",
    "🙂" * 5000, "(A) " * 10_000, "answer: " * 10_000, "a" * 200_000, "the answer is " * 5_000 + "(B)",
    "not " * 20_000, "1," * 50_000, "- " * 50_000, "= " * 50_000, "so " * 30_000, "Wait, " * 20_000,
    "Answer: Thursday\n\n", "A" * 50_000, "(A" * 50_000, "**" * 50_000, "Frankenstein " * 5_000,
    "None of these " * 3_000, "(A) Ulysses (B) Frankenstein\n" * 2_000, "hard to say (A) (B) " * 3_000,
    "passage A and " * 5_000, "Kandi does not " * 5_000 + "lie.", "i.e., " * 10_000 + "(B)",
    "I can't say, but " * 3_000 + "the answer is (B)", "Checking option (A) " * 5_000 + "—",
], ids=lambda response: f"{response[:12]!r}x{len(response)}")
@pytest.mark.parametrize("options, gold", [(FRUIT, "(B)"), (YES_NO, "Yes"), ([], "8"), ([], "] ]"), ([], "True")])
# A hang guard, not a speed goal: a pattern that backtracks exponentially on these inputs would run for
# hours; the scorer's linear patterns take well under a second each on a loaded 2-core host.
@pytest.mark.timeout(60)
def test_never_crashes_and_stays_fast(response, options, gold):
    verdict = score(response, options, gold)
    assert isinstance(verdict.extracted, str) and isinstance(verdict.correct, bool)


@pytest.mark.parametrize("response, gold, correct", [
    ("Count up: 41, 42.\nAnswer: 42", "42", True),
    ("Answer: 7\nOn reflection the count was off.\nAnswer:  Monday \nThanks!", "Monday", True),
    ("Adding gives 3.5. So the answer is 3.5.", "3.5", True),
    ("First the answer is Yes. Checking again, the correct answer is No.\nDone.", "No", True),
    ("no marker here\n\n  the last line  \n", "The last line", True),
    ("Monday comes after Sunday.\nAnswer: Monday.", "Monday", True),
    ("Answer: Tuesday", "Monday", False),
    ("Answer: 3, 5, 7", "3, 5, 7", True),
    ("Answer: 3, 5, 7, 9", "3, 5, 7", False),
    ("Answer: ] ]", "] ]", True),
    ("bridge calendar harbor lantern meadow orchard puzzle willow", "bridge calendar harbor lantern meadow orchard "
     "puzzle willow", True),  # a word list has no closing punctuation, and is not cut off for want of one
    ("bridge calendar harbor lantern meadow orchard puzzle", "bridge calendar harbor lantern meadow orchard "
     "puzzle willow", False),
    ("", "42", False),
])
def test_free_form_demo_style(response, gold, correct):
    assert score(response, [], gold).correct is correct


def test_demo_responses_are_right_for_their_own_gold_only(tmp_path):
    """Demo responses end with `Answer: <gold>`: right against their own gold, and against another
    demo gold exactly when the two golds are the same answer."""
    from orca_jax.data.demo import write_demo_data

    paths = write_demo_data(tmp_path, seed=5, stage1_rows=100, stage2_rows=100, eval_rows=1)
    rows = [json.loads(line) for tier in ("stage1", "stage2") for line in open(paths[tier])]
    golds = [row["response"].rsplit("Answer: ", 1)[1] for row in rows]
    others = random.Random(0).sample(golds, len(golds))
    for row, gold, other in zip(rows, golds, others):
        assert score(row["response"], [], gold).correct, row["response"]
        same = " ".join(other.split()).lower() == " ".join(gold.split()).lower()
        assert score(row["response"], [], other).correct is same, (row["response"], other)


@pytest.fixture(scope="module", params=LABELLED_SETS)
def labelled(request):
    return [json.loads(line) for line in (DATA / request.param).read_text(encoding="utf-8").splitlines()]


def test_labelled_rows_are_real_benchmark_examples(labelled):
    assert len(labelled) >= 120
    assert {row["benchmark"] for row in labelled} == {"bbh", "agieval"}
    if not BENCHMARKS.is_dir():
        pytest.skip(f"{BENCHMARKS} is absent: options and golds not checked against the source files")
    sources = {}
    for row in labelled:
        key = (row["benchmark"], row["task"])
        if key not in sources:
            if row["benchmark"] == "bbh":
                examples = json.loads((BENCHMARKS / "bbh" / f"{row['task']}.json").read_text())["examples"]
                sources[key] = [(bbh_options(e["input"]), e["target"].strip()) for e in examples]
            else:
                lines = (BENCHMARKS / "agieval" / f"{row['task']}.jsonl").read_text(encoding="utf-8").splitlines()
                sources[key] = [(e["options"], f"({e['label']})") for e in map(json.loads, lines)]
        assert (row["options"], row["gold"]) == sources[key][row["index"]], row


def test_agreement_with_a_careful_person(labelled):
    false_positives = [row for row in labelled
                       if score(row["response"], row["options"], row["gold"]).correct and not row["label"]]
    false_negatives = [row for row in labelled
                       if not score(row["response"], row["options"], row["gold"]).correct and row["label"]]
    agreement = 1 - (len(false_positives) + len(false_negatives)) / len(labelled)
    print(f"agreement {agreement:.1%} on {len(labelled)} rows: {len(false_positives)} false positives, "
          f"{len(false_negatives)} false negatives")
    for row in false_positives + false_negatives:
        print(f"  {row['task']}[{row['index']}] {row['kind']} label={row['label']}: {row['response'][:120]!r}")
    assert agreement >= 0.95
    assert len(false_positives) <= 0.02 * len(labelled)
