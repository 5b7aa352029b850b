"""Score a model's response against a gold answer the way a careful person would.

`score(response, options, gold)` reads one answer from a free-form response and compares it with the
gold. What counts as an answer depends on the answer space, judged from `options` and `gold`:

- **choice**: the options are lettered, "(A) text", "A text" or "A? text" (BBH, AGIEval), in any order
  (some AGIEval rows list (A), (C), (B), (D)). An option is named by
  its letter in any dress, "(B)", "B", "b" (alone), "B)", "B.", "[B]", "Option B", "option (b)",
  "**B**", "\\text{B}", or by its text, compared as normalised tokens (case, punctuation, quotes and a
  trailing period ignored; number words read as digits, so "3" names "(D) three"). A bare capital is
  a letter only when a lowercase word does not follow it ("A heptagon" is an article), unless that
  word is a verb or conjunction ("A is", "A or B"), and never after a noun that makes it a name
  ("passage B", "Statement A", "parts A and C"; table in `answer_phrases`). A text gold equal to an
  option's text means that option; one equal to none (BBH's "Monsters, Inc", split into two options)
  is matched as text.
- **label**: options that are not lettered (["Yes", "No"], ["valid", "invalid"]), or no options and a
  gold among yes/no, true/false, valid/invalid. "not valid" reads as "invalid" (any negated label of
  a two-label set reads as the other); for yes/no, "plausible"/"implausible" read as yes/no, and a
  one-clause statement about the subject is read where no label is named: "X does not <verb phrase>"
  (also doesn't, did not, never, ...) is no, except "does not lie"; "X does/did <verb phrase>", "X
  tells the truth" and "you return to (end up back at) the starting point" are yes; "X lies" is no.
  Clauses that report ("X says Y lies") or doubt ("The answer is not clear") are not read.
- **number**: no options and an integer gold. Numbers may carry units, commas and signs ("8 musical
  instruments", "1,024", "-11520") or be words ("eight").
- **text**: anything else (dyck_languages, word_sorting, the demo's weekdays and lists): the answer
  text, lower-cased with whitespace collapsed and wrapping quotes, markup and trailing periods
  removed, must equal the gold so normalised.

Where the answer is read, first rule that finds one wins:
1. the last explicit final-answer statement that names an answer: an "Answer:" label (also "Final
   answer:", `**Answer:** (A)`, "### Answer" with the answer on the next line, a transcript's "A:"), "the answer is ..."
   (also "the correct option is", "I'd go with", "I pick", "I'd say", "I would guess"), `\\boxed{...}`,
   or a self-correction ("Wait", "Correction:", "On second thought", "actually it is"); being the last, a correction
   overrides what it corrects; when none names one but the last line is an "Answer:" label, its text
   is the answer ("Answer: Thursday" to a number question is wrong, not read elsewhere);
2. the first line, when it starts with an answer (after markup and "I think", "It's", "There are"; not
   a numbered list item or a line with "=", which starts a computation), as Orca's system message 8 asks
   for the answer first; for labels also a first sentence ending in a label after a copula, with no
   label before it ("The expression evaluates to **False**.", not "not True is False.");
3. the last line, from its last conclusion marker ("so", "therefore", "=", "i.e.", "that is,",
   "namely", "in other words") on when that names an answer, unless the response looks truncated: its
   last line ends with a dash, colon, comma, semicolon or "(", or has six or more words and no closing
   punctuation;
4. the one option or label the whole response names, when it names exactly one (not for numbers or
   text; not when truncated; a mention being examined, "Checking option (E)", "Let's consider (B)",
   does not count);
5. for choices, a response of at most four words, not truncated, whose content words (fillers such
   as "the", "probably" aside; none negated or joined by "or") all occur in one option's text and in
   no other's: "Eve" names "(C) Eve finished last" when no other option mentions Eve.
Text answers use rules 1 and 3 only, reading the last line whole: an explicit statement, else the
last line, so demo responses ending `Answer: <gold>` are read from that line.

Several answers in the part read: a mention preceded by "not", "rather than", "instead of", "over",
or followed by "is wrong"/"is not"/"can be eliminated" is set aside, so "(B) is sarcastic, not (A)",
"(B) rather than (A)" and "not (A) but (B)" read as B. Of the rest the first is the answer, unless a
different one follows within 80 characters joined by a hedge ("or", "either", "maybe", "possibly",
"might", "could"), listed next to it ("(A) and (C)", "8 9"), or itself doubted ("..., though (A)
might also be"), or any two consecutive different ones are joined by "or" however far from the first
("..., I'd say (B) or (D)"): that is a hedge, scored wrong. A refusal or doubt on the line read ("I
cannot determine", "none of the options", "I'm not sure", "not enough information") is wrong even when
it names an answer, unless it comes before a "but ... answer is" clause that states it ("I can't be
certain, but the most likely answer is (D)"); a refusal phrase that is an option's text ("(E) None of
these") is an answer, not a refusal. Doubt between answers ("hard to say", "it's unclear which",
"could be either", "torn between") anywhere in a response that names two or more different options
or labels makes it a hedge, unless an explicit statement (rule 1) after the doubt settles it.

Hedges and refusals give `extracted == ""`. Responses over 20,000 characters are scored on their first
5,000 and last 15,000, and every pattern is linear in the text, so any string is safe to score.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from orca_jax.eval import answer_phrases

MAX_CHARS, HEAD_CHARS = 20_000, 5_000
HEDGE_REACH = 80  # characters between two answers beyond which the second is explanation, not a hedge
MAX_STATEMENTS = 32  # statements (and conclusion markers) examined, from the last: bounds adversarial work

_NUMBER_WORDS = {word: str(value) for value, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_BINARY_LABELS = ({"yes", "no"}, {"true", "false"}, {"valid", "invalid"})

# Words of option text: numbers (commas inside dropped later), words, and symbols that carry meaning.
_TOKEN = re.compile(r"\d{1,3}(?:,\d{3})+(?!\d)|\d+(?:\.\d+)?|[^\W_]+|[^\w\s.,;:!?'\"`*_()\[\]{}$\\’‘“”]")
_LETTERED = re.compile(r"\s*\(?([A-Z])(?:\)|[.:?]\s|\s)\s*(.*)", re.DOTALL)
_GOLD_LETTER = re.compile(r"\(?([A-Za-z])\)?")
_DRESSED_LETTER = re.compile(
    r"\(\s*([A-Za-z])\s*\)|\[([A-Za-z])\]|\b(?:option|choice)(?:\s+\(?|\()([A-Za-z])\b\)?|\*\*\(?([A-Za-z])[.):]?\*\*",
    re.IGNORECASE)
_BARE_LETTER = re.compile(r"(?<![\w'’\\])([A-Z])(?![\w'’])")
# A bare capital followed by one of these is still a letter ("A is correct", "A or B").
_LETTER_FOLLOWERS = re.compile(
    r"\s+(?!(?:is|was|would|seems|must|should|fits|looks|appears|matches|because|since|as|or|and|but|"
    r"nor|then|so|rather|instead|not|over|too|also)\b)[a-z]")
_NUMBER = re.compile(r"(?<![\w.\-−])[-−]?\d{1,3}(?:,\d{3})+(?![\d])|(?<![\w.\-−])[-−]?\d+(?:\.\d+)?(?![\d])|"
                     r"\b(?:" + "|".join(_NUMBER_WORDS) + r")\b", re.IGNORECASE)
# "Among A through E, the answer is B" (AGIEval's prompt) names a range, not two answers.
_LETTER_RANGE = re.compile(r"\b(?:among|from|between)\s+\(?[A-Z]\)?\s+(?:through|to|and|-|–)\s+\(?[A-Z]\)?",
                           re.IGNORECASE)

_LABEL = re.compile(r"\b(?:final\s+|correct\s+|my\s+)?answer(?:\*\*|__)?\s*[:：]", re.IGNORECASE)
_QA_LABEL = re.compile(r"^[ \t]*A:(?=\s)", re.MULTILINE)  # "Q: ... A: (B)", the answer of a Q/A transcript
_FINAL_LABEL = re.compile(r"\banswer(?:\*\*|__)?\s*[:：]([^\n]*)$", re.IGNORECASE)
_HEADING = re.compile(r"^[ \t#*_>]*(?:final\s+)?answer[ \t*_:]*$", re.IGNORECASE | re.MULTILINE)
_ANSWER_IS = re.compile(
    r"\b(?:answer|choice|option)\s+(?:here\s+)?(?:is|would be|must be|should be|will be)\b\s*:?"
    r"|\bi(?:'d|’d| would| will|'ll)?\s+(?:go with|choose|pick|select)\b|\bi(?:'d|’d| would)\s+(?:say|guess)\b",
    re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\{")
_CORRECTION = re.compile(r"\b(?:wait|correction|on second thought|on reflection|scratch that|"
                         r"i made (?:a|an) (?:mistake|error)|let me correct(?: that| myself)?)\b[:,.!]?"
                         r"|\bactually,?(?=\s+(?:the|it|i)\b)", re.IGNORECASE)
_CONCLUSION = re.compile(r"\b(?:so|therefore|thus|hence|which means|this means|that means|meaning|namely|"
                         r"in other words)\b,?|\bi\.e\.,?|\bthat is,|=",
                         re.IGNORECASE)
_LEAD = re.compile(r"[\s#>*_\"'`“‘-]*(?:(?:i think|i believe|i'd say|i would say|my answer is|answer|"
                   r"it's|it is|that's|that is|there are|there is|i have|you have|the total is|total)\b"
                   r"[\s:,*_-]*)?", re.IGNORECASE)
_NEXT_LINE = re.compile(r"\s*(\S[^\n]*)")
_ARTICLE = re.compile(r"(?:a|an|the)\s+", re.IGNORECASE)
_LIST_ITEM = re.compile(r"\s*(?:step\s*)?\d+[.):]\s+\S", re.IGNORECASE)

_HEDGED = "\0hedge"  # an outcome naming no single answer: scored wrong, extracted ""


@dataclasses.dataclass(frozen=True)
class Verdict:
    extracted: str
    """The answer read from the response, canonical: "(B)", "yes", "valid", "8", or normalised text;
    "" when none was found (also for hedges and refusals)."""
    correct: bool


@dataclasses.dataclass(frozen=True)
class _Space:
    kind: str  # "choice", "label", "number" or "text"
    phrases: dict[tuple[str, ...], str]  # normalised tokens of a text -> the answer it names
    letters: str = ""
    opposite: dict[str, str] = dataclasses.field(default_factory=dict)  # label -> its negation


@dataclasses.dataclass(frozen=True)
class _Mention:
    start: int
    end: int
    answer: str
    is_text: bool = False  # named by option text, not by letter: may hold words like "none of these"


def _tokens(text: str) -> list[tuple[str, int, int]]:
    out = []
    for match in _TOKEN.finditer(text):
        word = match.group().lower().replace(",", "")
        out.append((_NUMBER_WORDS.get(word, word), match.start(), match.end()))
    return out


def _phrase(text: str) -> tuple[str, ...]:
    return tuple(word for word, _, _ in _tokens(text))


def _normalise(text: str) -> str:
    """Lower case, single spaces, without wrapping quotes/markup or trailing periods."""
    text = " ".join(text.split()).lower().strip(" *_`\"'“”‘’")
    return text.rstrip(".").strip()


def _answer_space(options: Sequence[str], gold: str) -> tuple[_Space, str]:
    """The answer space of a question and its gold answer in canonical form."""
    lettered = [_LETTERED.fullmatch(option) for option in options]
    in_order = [chr(ord("A") + i) for i in range(len(options))]
    if options and all(lettered) and sorted(m.group(1) for m in lettered) == in_order:
        # in any order: some AGIEval rows list (A), (C), (B), (D)
        phrases = {_phrase(m.group(2)): f"({m.group(1)})" for m in reversed(lettered) if _phrase(m.group(2))}
        letters = "".join(sorted(m.group(1) for m in lettered))
        gold_letter = _GOLD_LETTER.fullmatch(gold.strip())
        if gold_letter and gold_letter.group(1).upper() in letters:
            return _Space("choice", phrases, letters), f"({gold_letter.group(1).upper()})"
        if _phrase(gold) in phrases:
            return _Space("choice", phrases, letters), phrases[_phrase(gold)]
        text_gold = _normalise(gold)  # a gold no option spells: match it as a phrase of its own
        return _Space("choice", {**phrases, _phrase(gold): text_gold}, letters), text_gold
    labels = {_normalise(option) for option in options}
    if not options:
        labels = next((pair for pair in _BINARY_LABELS if _normalise(gold) in pair), set())
    if labels:
        labels.add(_normalise(gold))
        phrases = {_phrase(label): label for label in labels}
        opposite = {}
        if len(labels) == 2:
            first, second = sorted(labels)
            opposite = {first: second, second: first}
        if labels == {"yes", "no"}:
            phrases.update({("plausible",): "yes", ("implausible",): "no"})
        return _Space("label", phrases, opposite=opposite), _normalise(gold)
    number = _canonical_number(gold.strip())
    if re.fullmatch(r"-?\d+", number):
        return _Space("number", {}), number
    return _Space("text", {}), _normalise(gold)


def _canonical_number(text: str) -> str:
    text = _NUMBER_WORDS.get(text.lower(), text).replace(",", "").replace("−", "-")
    if re.fullmatch(r"-?\d+\.0*", text):
        text = text.split(".")[0]
    return "0" if text == "-0" else text


def _mentions(space: _Space, text: str, start: int, end: int) -> list[_Mention]:
    """The answers named in text[start:end], in order, negated ones set aside or flipped."""
    segment = text[start:end]
    found: list[_Mention] = []
    if space.kind == "number":
        found = [_Mention(m.start(), m.end(), _canonical_number(m.group())) for m in _NUMBER.finditer(segment)]
    if space.kind == "choice":
        for match in _DRESSED_LETTER.finditer(segment):
            letter = next(group for group in match.groups() if group).upper()
            if letter in space.letters and (match.group(0)[0] in "([*" or letter == match.group(3)
                                            or not _LETTER_FOLLOWERS.match(segment, match.end())):
                found.append(_Mention(match.start(), match.end(), f"({letter})"))
        named = [match.span() for match in answer_phrases.LETTER_NOUN.finditer(segment)]  # "passage B", "Part A"
        for match in _BARE_LETTER.finditer(segment):
            if any(start_ <= match.start() < end_ for start_, end_ in named):
                continue
            if match.group(1) in space.letters and not _LETTER_FOLLOWERS.match(segment, match.end()):
                found.append(_Mention(match.start(), match.end(), f"({match.group(1)})"))
        lone = re.fullmatch(r"[\s*_`\"'(\[]*([a-z])[\s.)\]*_`\"']*", segment)
        if lone and lone.group(1).upper() in space.letters:
            found.append(_Mention(lone.start(1), lone.end(1), f"({lone.group(1).upper()})"))
    found += _phrase_mentions(space, segment)
    kept, covered = [], 0
    for mention in sorted(found, key=lambda m: (m.start, -m.end)):
        if mention.start < covered:
            continue  # inside a longer mention: "**(B)**", "Monsters" within the gold "Monsters, Inc"
        covered = mention.end
        before, after = segment[max(0, mention.start - 30):mention.start], segment[mention.end:mention.end + 40]
        if space.kind == "label" and answer_phrases.LABEL_NEGATED.search(before):
            if mention.answer in space.opposite:
                kept.append(dataclasses.replace(mention, answer=space.opposite[mention.answer]))
            continue
        if answer_phrases.NEGATED_BEFORE.search(before) or answer_phrases.NEGATED_AFTER.match(after):
            continue
        kept.append(mention)
    return [dataclasses.replace(m, start=m.start + start, end=m.end + start) for m in kept]


def _phrase_mentions(space: _Space, segment: str) -> list[_Mention]:
    tokens = _tokens(segment)
    where: dict[str, list[int]] = {}
    for index, (word, _, _) in enumerate(tokens):
        where.setdefault(word, []).append(index)
    found = []
    for phrase, answer in space.phrases.items():
        for index in where.get(phrase[0], ()):
            if tuple(word for word, _, _ in tokens[index:index + len(phrase)]) == phrase:
                found.append(_Mention(tokens[index][1], tokens[index + len(phrase) - 1][2], answer, True))
    return found


def _resolve(text: str, mentions: list[_Mention]) -> str | None:
    """The one answer a run of mentions gives, _HEDGED for two or more, None for none."""
    if not mentions:
        return None
    first = mentions[0]
    for other in mentions[1:]:
        between = text[first.end:other.start]
        if other.answer != first.answer and len(between) <= HEDGE_REACH and (
                answer_phrases.HEDGE.search(between) or answer_phrases.LISTED.fullmatch(between)
                or answer_phrases.HEDGE_AFTER.match(text, other.end)):
            return _HEDGED
    for one, other in zip(mentions, mentions[1:]):  # "I'd say (B) or (D)", however far from the first
        if one.answer != other.answer and answer_phrases.OR_JOINED.fullmatch(text, one.end, other.start):
            return _HEDGED
    return first.answer


def _refuses(text: str, start: int, end: int, mentions: list[_Mention]) -> bool:
    texts = [m for m in mentions if m.is_text]
    return any(not any(m.start < r.end() and r.start() < m.end for m in texts)
               for r in answer_phrases.REFUSAL.finditer(text, start, end))


def _line_bounds(text: str, position: int) -> tuple[int, int]:
    start = text.rfind("\n", 0, position) + 1
    end = text.find("\n", position)
    return start, len(text) if end < 0 else end


def _statements(text: str, space: _Space) -> list[tuple[int, int, int]]:
    """(answer start, answer end, line start) of each explicit final-answer statement, in order."""
    found = []
    patterns = [_LABEL, _QA_LABEL, _ANSWER_IS] + ([] if space.kind == "text" else [_CORRECTION])
    for pattern in patterns:
        for match in pattern.finditer(text):
            line_start, line_end = _line_bounds(text, match.start())
            end = line_end
            if pattern is _ANSWER_IS and space.kind == "text":
                period = re.search(r"\.(?=\s|$)", text[match.end():line_end])
                end = match.end() + period.start() if period else line_end
            found.append((match.end(), end, line_start))
    for match in _HEADING.finditer(text):
        found.append((match.end(), match.end(), match.start()))
    for match in _BOXED.finditer(text):
        depth, end = 1, match.end()
        while end < len(text) and end < match.end() + 200 and depth:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        found.append((match.end(), end - 1 if not depth else end, _line_bounds(text, match.start())[0]))
    found.sort()
    statements = []
    for start, end, line_start in found:
        if not text[start:end].strip(" \t*_:"):  # "**Answer:**" alone: the answer is on the next line
            next_line = _NEXT_LINE.match(text, end)
            if not next_line:
                continue
            start, end = next_line.start(1), next_line.end(1)
        statements.append((start, end, line_start))
    return statements


def _read(text: str, space: _Space, start: int, end: int, context_start: int) -> str | None:
    """The outcome of reading text[start:end], refusals judged on text[context_start:end]."""
    if space.kind == "text":
        answer = _normalise(text[start:end])
        return answer or None
    mentions = _mentions(space, text, start, end)
    # After a correction inside the part read, only what follows it counts.
    cues = list(_CORRECTION.finditer(text, start, end))
    cue = cues[-1] if cues else None
    if cue and any(m.start >= cue.end() for m in mentions):
        mentions = [m for m in mentions if m.start >= cue.end()]
    rescue = answer_phrases.BUT_ANSWER.search(text, context_start, start) if start > context_start else None
    if _refuses(text, rescue.start() if rescue else context_start, end, mentions):
        return _HEDGED  # a caveat before "..., but the most likely answer is" does not void it
    if not mentions and space.opposite.get("yes") == "no":
        sentences = re.findall(r"[^.!?\n]+[.!?]*", text[start:end])
        return answer_phrases.yes_no_sentence(sentences[-1]) if sentences else None
    return _resolve(text, mentions)


def _first_line(text: str, space: _Space) -> str | None:
    match = _NEXT_LINE.match(text)
    if not match or _LIST_ITEM.match(match.group(1)) or "=" in match.group(1):
        return None  # a numbered step or a computation ("46 - 22 = 24") starts with a number, not the answer
    start, end = match.span(1)
    lead = _LEAD.match(text, start).end()
    article = _ARTICLE.match(text, lead)
    mentions = _mentions(space, text, start, end)
    if space.kind == "label":
        stated = answer_phrases.COPULA_LABEL.match(text, start, end)  # "The expression evaluates to **False**."
        if stated and not _mentions(space, text, start, stated.start(1)):
            said = _mentions(space, text, stated.start(1), stated.end())
            if len(said) == 1 and said[0].end >= stated.end(1):
                return _read(text, space, start, stated.end(), start)
    if not mentions or mentions[0].start > (article.end() if article else lead):
        return None
    first = mentions[0]
    if first.is_text and len(_phrase(text[first.start:first.end])) == 1 and space.kind != "number":
        # A one-word answer leads only when punctuation or the line end follows: not "No one else ..."
        if not re.match(r"\s*(?:[^\w\s]|$)", text[first.end:end]):
            return None
    return _read(text, space, start, end, start)


def _last_line(text: str, space: _Space) -> str | None:
    lines = [match.span(1) for match in re.finditer(r"(\S[^\n]*)", text)]
    if not lines:
        return None
    start, end = lines[-1]
    # Free text (a word list, brackets) has no closing punctuation to judge a cut-off by.
    if space.kind != "text" and answer_phrases.truncated(text):
        return None
    if space.kind != "text":
        for marker in list(_CONCLUSION.finditer(text, start, end))[-MAX_STATEMENTS:][::-1]:
            outcome = _read(text, space, marker.end(), end, start)
            if outcome is not None:
                return outcome
    return _read(text, space, start, end, start)


def _named_once(text: str, space: _Space) -> str | None:
    if space.kind in ("number", "text"):
        return None
    mentions = [m for m in _mentions(space, text, 0, len(text))
                if (m.is_text or not _BARE_LETTER.fullmatch(text[m.start:m.end]))
                and not answer_phrases.EXAMINED.search(text, max(0, m.start - 30), m.start)]  # "Checking option (E)"
    answers = {m.answer for m in mentions}
    if len(answers) != 1:
        return None
    return _HEDGED if _refuses(text, 0, len(text), mentions) else answers.pop()


def _short_option_text(text: str, space: _Space) -> str | None:
    """A response of a few words whose content words all occur in one option's text only ("Eve" for
    "(C) Eve finished last")."""
    if space.kind != "choice" or len(text.split()) > 4 or "\n" in text.strip():
        return None
    words = set(_phrase(text)) - answer_phrases.FILLER
    if not words or words & answer_phrases.NEGATIONS:
        return None
    matching = {answer for phrase, answer in space.phrases.items()
                if answer.startswith("(") and words <= set(phrase)}
    if len(matching) != 1 or _refuses(text, 0, len(text), []):
        return None
    return matching.pop()


def _doubted(text: str, space: _Space, committed_at: int) -> bool:
    """Doubt ("hard to say", "could be either") after the answer read, in a response naming two or
    more different answers."""
    doubts = list(answer_phrases.DOUBT.finditer(text))
    if not doubts or doubts[-1].end() <= committed_at or space.kind not in ("choice", "label"):
        return False
    return len({m.answer for m in _mentions(space, text, 0, len(text))}) >= 2


def score(response: str, options: Sequence[str], gold: str) -> Verdict:
    """Read the answer in `response` and compare it with `gold` (rules in the module docstring).

    `options` are the question's options as in the benchmark file ("(A) 12/11/1937", "(A)5(√3 + 1)",
    or unlettered "Yes"/"No"), [] for free-form questions; `gold` as in the file: "(B)", "No", "8".
    """
    text = response if len(response) <= MAX_CHARS else \
        response[:HEAD_CHARS] + "\n" + response[-(MAX_CHARS - HEAD_CHARS):]
    text = _LETTER_RANGE.sub(lambda m: " " * len(m.group()), text.replace("\r", ""))
    space, canonical_gold = _answer_space(options, gold)
    outcome, committed_at = None, -1
    for start, end, line_start in reversed(_statements(text, space)[-MAX_STATEMENTS:]):
        outcome = _read(text, space, start, end, line_start)
        if outcome is not None:
            committed_at = start  # an explicit statement after a doubt settles it
            break
    last_label = _FINAL_LABEL.search(text, text.rstrip().rfind("\n") + 1)
    if outcome is None and last_label and _normalise(last_label.group(1)):
        outcome = _normalise(last_label.group(1))  # committed to an answer outside the answer space
    if outcome is None and space.kind != "text":
        outcome = _first_line(text, space)
    if outcome is None:
        outcome = _last_line(text, space)
    if outcome is None and not answer_phrases.truncated(text):
        outcome = _named_once(text, space)
    if outcome is None and not answer_phrases.truncated(text):
        outcome = _short_option_text(text, space)
    if outcome not in (None, _HEDGED) and _doubted(text, space, committed_at):
        outcome = _HEDGED
    if outcome is None or outcome == _HEDGED:
        return Verdict("", False)
    return Verdict(outcome, outcome == canonical_gold)
