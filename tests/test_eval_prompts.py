"""Prompts of the evaluation against hand-written strings, system messages, and long-prompt handling."""

import json

import pytest

from orca_jax.data.construct.system_messages import SYSTEM_MESSAGES
from orca_jax.data.tokenizer import Tokenizer, train_tokenizer
from orca_jax.eval.benchmarks import Example, read_benchmark
from orca_jax.eval.prompts import TRUNCATION_MARK, PromptBuilder, PromptError, resolve_system_message

from conftest import SHARED_BENCHMARKS

NAVIGATE_0 = ("If you follow these instructions, do you return to the starting point? Always face forward. "
              "Take 1 step backward. Take 9 steps left. Take 2 steps backward. Take 6 steps forward. Take 4 "
              "steps forward. Take 4 steps backward. Take 3 steps right.\nOptions:\n- Yes\n- No")
LOGIQA_0_PASSAGE = (
    "In the planning of a new district in a township, it was decided to build a special community in the "
    "southeast, northwest, centered on the citizen park.These four communities are designated as cultural "
    "area, leisure area, commercial area and administrative service area.It is known that the administrative "
    "service area is southwest of the cultural area, and the cultural area is southeast of the leisure area.")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = [NAVIGATE_0, LOGIQA_0_PASSAGE, "### System:\n### User:\n### Assistant:\nAnswer Choices: Among"] * 30
    texts += [f"word{i} the answer is {i}" for i in range(300)]
    return Tokenizer.load(train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "t", vocab_size=600))


def builder(tokenizer, **kwargs):
    return PromptBuilder(tokenizer, "orca", **{"max_tokens": 10_000, **kwargs})


def agieval_example(passage=LOGIQA_0_PASSAGE):
    return Example(benchmark="agieval", task="logiqa-en", index=0, passage=passage, gold="(A)",
                   question="Based on the above statement, which of the following can be derived?",
                   options=("(A)Civic Park is north of the administrative service area",
                            "(B)The leisure area is southwest of the cultural area",
                            "(C)The cultural district is in the northeast of the business district",
                            "(D)The business district is southeast of the leisure area"))


def test_agieval_official_zero_shot_prompt_in_both_styles(tokenizer):
    official = (
        LOGIQA_0_PASSAGE + "Q: Based on the above statement, which of the following can be derived? Answer "
        "Choices: (A)Civic Park is north of the administrative service area (B)The leisure area is southwest of "
        "the cultural area (C)The cultural district is in the northeast of the business district (D)The business "
        "district is southeast of the leisure area\nA: Among A through D, the answer is")
    raw = builder(tokenizer, style="raw").build(agieval_example())
    assert raw.text == official
    assert raw.tokens == [tokenizer.bos_id] + tokenizer.encode(official)
    chat = builder(tokenizer, style="chat", system_message="").build(agieval_example())
    assert chat.text == "### User:\n" + official + "\n\n### Assistant:\n"
    assert chat.tokens == [tokenizer.bos_id] + tokenizer.encode(chat.text)
    assert not (raw.truncated or raw.skipped or chat.truncated or chat.skipped)


def test_bbh_input_as_written_in_both_styles(tokenizer):
    example = Example(benchmark="bbh", task="navigate", index=0, question=NAVIGATE_0, gold="No",
                      options=("Yes", "No"))
    assert builder(tokenizer, style="raw").build(example).text == "Q: " + NAVIGATE_0 + "\nA:"
    seven = builder(tokenizer, style="chat", system_message=resolve_system_message("7")).build(example)
    assert seven.text == (
        "### System:\nYou are an AI assistant. User will you give you a task. Your goal is to complete the task "
        "as faithfully as you can. While performing the task think step-by-step and justify your steps.\n\n"
        "### User:\n" + NAVIGATE_0 + "\n\n### Assistant:\n")
    # The raw style never carries a system message, whatever was asked.
    assert builder(tokenizer, style="raw", system_message="Be brief.").build(example).text.startswith("Q: ")


@pytest.mark.skipif(not (SHARED_BENCHMARKS / "bbh").is_dir(), reason="no shared benchmark files")
def test_the_real_files_give_the_hand_written_prompts(tokenizer):
    (navigate,) = [e for e in read_benchmark("bbh", SHARED_BENCHMARKS / "bbh", ["navigate"]) if e.index == 0]
    assert navigate.question == NAVIGATE_0 and navigate.options == ("Yes", "No") and navigate.gold == "No"
    logiqa = read_benchmark("agieval", SHARED_BENCHMARKS / "agieval", ["logiqa-en"])[0]
    assert logiqa == agieval_example()


def test_system_messages():
    assert resolve_system_message(None) is None
    assert resolve_system_message("empty") == ""
    assert resolve_system_message("1") == "" and resolve_system_message("16") == SYSTEM_MESSAGES[16]
    assert resolve_system_message("Answer tersely.") == "Answer tersely."
    with pytest.raises(PromptError, match="numbered 1-16"):
        resolve_system_message("17")


def test_demo_questions_keep_their_own_system_message_unless_one_is_given(tokenizer):
    example = Example(benchmark="demo", task="cot.add", index=0, question="What is 2 + 3?", gold="5",
                      system_prompt="Think step by step.")
    assert builder(tokenizer).build(example).text == (
        "### System:\nThink step by step.\n\n### User:\nWhat is 2 + 3?\n\n### Assistant:\n")
    assert builder(tokenizer, system_message="").build(example).text == "### User:\nWhat is 2 + 3?\n\n### Assistant:\n"


def test_a_long_passage_is_cut_from_the_left_to_fit(tokenizer):
    long_passage = " ".join(f"word{i}" for i in range(400)) + " " + LOGIQA_0_PASSAGE
    full = builder(tokenizer).build(agieval_example(long_passage))
    limit = len(full.tokens) // 2
    prompt = builder(tokenizer, max_tokens=limit).build(agieval_example(long_passage))
    assert prompt.truncated and not prompt.skipped
    assert len(prompt.tokens) <= limit
    assert prompt.tokens == [tokenizer.bos_id] + tokenizer.encode(prompt.text)
    kept = prompt.text.removeprefix("### User:\n" + TRUNCATION_MARK).split("Q: Based on")[0]
    assert long_passage.endswith(kept) and len(kept) < len(long_passage)
    # The fewest words were dropped: one word more would not have fitted.
    longer_kept = long_passage[:-len(kept)].rsplit(" ", 2)[-2] + " " + kept
    longer = builder(tokenizer).build(agieval_example(TRUNCATION_MARK + longer_kept))
    assert len(longer.tokens) > limit
    assert "Answer Choices: (A)Civic Park" in prompt.text and prompt.text.endswith("### Assistant:\n")


def test_long_prompts_are_skipped_when_asked_or_when_nothing_fits(tokenizer):
    example = agieval_example()
    size = len(builder(tokenizer).build(example).tokens)
    assert builder(tokenizer, max_tokens=size).build(example) == builder(tokenizer).build(example)
    skipped = builder(tokenizer, max_tokens=size - 1, long_prompts="skip").build(example)
    assert skipped.skipped and skipped.tokens == []
    nothing_fits = builder(tokenizer, max_tokens=8).build(example)  # the question alone is longer
    assert nothing_fits.skipped and not nothing_fits.truncated


def test_bad_settings_name_the_flag(tokenizer):
    with pytest.raises(PromptError, match="--prompt_style 'fancy'"):
        builder(tokenizer, style="fancy")
    with pytest.raises(PromptError, match="--long_prompts 'drop'"):
        builder(tokenizer, long_prompts="drop")
    with pytest.raises(PromptError, match="no room for a prompt"):
        builder(tokenizer, max_tokens=1)
    json.dumps(builder(tokenizer).system_for(agieval_example()))  # a plain string
