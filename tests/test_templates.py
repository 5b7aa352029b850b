"""Prompt templates and the response mask: the loss sees the response and its EOS, nothing else."""

import numpy as np
import pytest

from orca_jax.data.templates import TEMPLATES, Template, encode_example, encode_examples, encode_prompt, get_template

from synthetic_text import records, trained_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return trained_tokenizer(tmp_path_factory.mktemp("tok"))


def test_orca_template_renders_three_sections():
    text = get_template("orca").render_prompt("Be brief.", "What is 2+2?")
    assert text == "### System:\nBe brief.\n\n### User:\nWhat is 2+2?\n\n### Assistant:\n"


def test_chatml_template_renders_three_turns():
    text = get_template("chatml").render_prompt("Be brief.", "What is 2+2?")
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                    "<|im_start|>assistant\n")


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("blank", ["", "  \n"])
def test_blank_system_message_drops_the_section(name, blank):
    template = get_template(name)
    text = template.render_prompt(blank, "Q?")
    assert text == template.user.format(question="Q?") + template.assistant
    assert "system" not in text.lower()


def test_unknown_template_names_the_choices():
    with pytest.raises(ValueError, match="chatml"):
        get_template("alpaca")


def test_template_object_passes_through():
    custom = Template("plain", "{system}\n", "Q: {question}\n", "A: ")
    assert get_template(custom) is custom


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_mask_covers_exactly_the_response_and_eos(tokenizer, name):
    for record in records(40, seed=5):
        tokens, mask = encode_example(tokenizer, name, record["system_prompt"], record["question"],
                                      record["response"])
        assert tokens.dtype == np.int32 and mask.dtype == bool and tokens.shape == mask.shape
        assert tokens[0] == tokenizer.bos_id and tokens[-1] == tokenizer.eos_id
        masked = tokens[mask]
        assert masked[-1] == tokenizer.eos_id
        assert tokenizer.decode(masked[:-1]) == record["response"]
        # The unmasked part is the prompt (BOS + system + question + header), and only that.
        assert np.all(~mask[:np.argmax(mask)]) and np.all(mask[np.argmax(mask):])
        prompt = encode_prompt(tokenizer, name, record["system_prompt"], record["question"])
        assert tokens[~mask].tolist() == prompt
        assert tokenizer.decode(prompt) == get_template(name).render_prompt(record["system_prompt"],
                                                                             record["question"])


def test_empty_response_still_trains_the_eos(tokenizer):
    tokens, mask = encode_example(tokenizer, "orca", "", "Q?", "")
    assert tokens[mask].tolist() == [tokenizer.eos_id]


def test_batched_encoding_matches_single(tokenizer):
    batch = records(10, seed=6)
    for (tokens, mask), record in zip(encode_examples(tokenizer, "chatml", batch), batch):
        single = encode_example(tokenizer, "chatml", record["system_prompt"], record["question"],
                                record["response"])
        np.testing.assert_array_equal(tokens, single[0])
        np.testing.assert_array_equal(mask, single[1])
