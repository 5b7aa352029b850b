"""Phrase tables of the answer scorer (`orca_jax.eval.scoring`): negation, hedges, doubt, refusals,
truncation, nouns that make a capital a name rather than an option letter, a label stated after a copula,
the filler words of a short response, and the reading of a yes/no
answer stated as a sentence ("Fidel does not tell the truth."). The rules they serve are documented in
the scoring module's docstring; every pattern here is linear in the text it is matched against.
"""

from __future__ import annotations

import re

# A mention preceded by one of these is set aside: "not (A)", "rather than (A)", "ruling out (C)".
NEGATED_BEFORE = re.compile(
    r"(?:\bnot|n't|\bnor|\bneither|\brather than|\binstead of|\bover|\bexcept|\bexclud\w*|\brule\w* out|"
    r"\beliminat\w*|\bcannot be|\bcan't be)\s*(?:option|choice)?\s*[(\[*]*$", re.IGNORECASE)
# ... or followed by one of these: "(A) is wrong", "(C) can be eliminated", "(B) isn't".
NEGATED_AFTER = re.compile(
    r"\s*\)?\s*(?:(?:is|was|are|can|would|must|seems|does)\s+(?:be\s+)?(?:not\b|never\b|incorrect|wrong|"
    r"false\b|eliminated|excluded|ruled out|impossible)|(?:isn't|wasn't|can't|cannot|doesn't)\b)", re.IGNORECASE)
# A label after "not" reads as its opposite: "not valid" is "invalid".
LABEL_NEGATED = re.compile(r"(?:\bnot|n't)\W+(?:\w+\W+)?$", re.IGNORECASE)
HEDGE = re.compile(r"\b(?:or|either|possibly|maybe|perhaps|might|could|alternatively)\b|/", re.IGNORECASE)
# "(D), though (A) might also be": the doubt follows the second answer.
HEDGE_AFTER = re.compile(r"\s*\)?\s*(?:(?:might|could|may)\s+(?:also\b|be\s+(?:right|correct|it)\b|work\b)"
                         r"|(?:is|are|would be|could be)?\s*(?:also|equally)\s+"
                         r"(?:possible|plausible|correct|right|likely))",
                         re.IGNORECASE)
LISTED = re.compile(r"[\s,;&/*]*(?:(?:and|or)\b)?[\s,*]*", re.IGNORECASE)
# Two answers joined directly by "or" anywhere in the part read: "(B) or (D)", "B/D", "(B), or maybe (D)".
OR_JOINED = re.compile(r"[\s,;*_)\]]*(?:(?:and/)?or\b|/)(?:\s+(?:maybe|possibly|perhaps))?[\s(\[*_]*", re.IGNORECASE)
REFUSAL = re.compile(
    r"\b(?:cannot|can't|can not|unable to|impossible to|not possible to|no way to)\s+(?:be\s+)?"
    r"(?:determine|determined|tell|say|answer|know|decide|be certain|be sure)\b"
    r"|\bnot\s+(?:entirely\s+|completely\s+|really\s+|totally\s+)?(?:sure|certain)\b|\b(?:unsure|uncertain)\b"
    r"|\b(?:don't|do not)\s+know\b|\bnone of (?:the (?:options|choices|answers|above|given)|them|these)\b"
    r"|(?:\bnot|n't|\bno|\bwithout)\s+(?:\w+\s+)?(?:enough|sufficient|more)\s+(?:information|info|context|data)\b"
    r"|\binsufficient\s+(?:information|context)\b", re.IGNORECASE)
# "..., but the most likely answer is": the clause that states the answer after a caveat.
BUT_ANSWER = re.compile(
    r"\b(?:but|however|still|that said|even so|nonetheless|nevertheless)\b,?\s+(?:[\w'’-]+\s+){0,5}?"
    r"(?:answer|choice|option)\s+(?:here\s+)?(?:is|would be|must be|should be|will be)\b\s*:?\s*$", re.IGNORECASE)
# Doubt between answers: anywhere in a response naming two or more, it leaves the question open.
DOUBT = re.compile(
    r"\b(?:hard|difficult|impossible|tough|tricky)\s+to\s+(?:say|tell|decide|choose|pick|know)\b"
    r"|\b(?:it's|it is|it’s|that's|that is|remains)\s+(?:still\s+)?(?:unclear|not clear|ambiguous|debatable)\b"
    r"|\bunclear\s+(?:which|whether)\b|\b(?:could|can|might)\s+(?:be|go)\s+either\b|\beither\s+(?:one\s+)?"
    r"(?:could|might|may)\s+be\b|\b(?:can't|cannot|can not)\s+(?:decide|choose)\b|\btorn\s+between\b"
    r"|\bboth\s+(?:seem|are|look|appear)\s+(?:equally\s+)?(?:plausible|possible|valid|reasonable|likely)\b",
    re.IGNORECASE)
# "Checking option (E): ...", "Let's consider (B)": a mention under examination, not a commitment.
EXAMINED = re.compile(r"\b(?:check(?:ing)?|consider(?:ing)?|test(?:ing)?|try(?:ing)?|look(?:ing)? at|"
                      r"examin(?:e|ing)|evaluat(?:e|ing)|now for|next,?)\s+(?:option|choice)?\s*[(\[*]*$",
                      re.IGNORECASE)
# A capital after one of these nouns names a thing, not an option: "passage B", "Statement A", "parts A and C".
LETTER_NOUN = re.compile(
    r"\b(?:passage|statement|part|paragraph|section|sentence|table|figure|fig\.|exhibit|appendix|chapter|"
    r"column|row|group|type|category|class|scenario|study|experiment|hypothesis|theory|model|version|"
    r"sample|speaker|author|person|doctor|dr\.|mr\.|ms\.|mrs\.|professor|student|team|company|country|"
    r"city|town|village|school|region|zone|area|box|room|building|house|site|stage|phase|vitamin|drug|"
    r"product|brand|candidate|witness|worker|factory|warehouse|valve|program|project|method|premise|"
    r"hospital|island|road|route|river|lake|planet|species|gene|protein)s?\s+[A-Z]\b"
    r"(?:(?:\s*,\s*|\s+(?:and|or|&)\s+|\s*,\s*(?:and|or)\s+)[A-Z]\b)*", re.IGNORECASE)


# A first sentence stating a label after a copula: "The argument is deductively valid.", "It evaluates to True."
COPULA_LABEL = re.compile(
    r"(?:[^\W\d_][\w'’-]*,?[ \t]+){1,8}?(?:evaluates?[ \t]+to|is|are|was|equals|comes[ \t]+(?:out[ \t]+)?to|"
    r"simplifies[ \t]+to|reduces[ \t]+to|would[ \t]+be|must[ \t]+be)[ \t]+(?:[\w'’-]+[ \t]+){0,2}?[*_`\"']*"
    r"([^\W_](?:[^\W_]|['’-])*)[*_`\"'”’]*[ \t]*(?:[.!]+(?=\s|$)|$)", re.IGNORECASE)
# Words a short response may add to an option's own words ("The loquats", "Probably Eve"), and words
# that keep it from naming one ("Not Eve", "Eve or Rob").
FILLER = {"a", "an", "the", "it", "is", "s", "its", "i", "think", "believe", "answer", "option", "choice",
          "final", "my", "of", "to", "in", "on", "at", "by", "for", "with", "that", "this", "be", "would",
          "probably", "likely", "definitely", "clearly", "surely", "so"}
NEGATIONS = {"not", "no", "t", "never", "none", "neither", "nor", "or", "isn", "doesn"}


def truncated(text: str) -> bool:
    """Whether the last line stops mid-sentence, a cut-off generation that states no answer there: it
    ends with a dash, colon, comma, semicolon or open parenthesis, or has six or more words and no
    closing punctuation."""
    line = text.rstrip().rsplit("\n", 1)[-1].rstrip(" *_")
    words = len(line.split())
    if words >= 2 and re.search(r"(?:[—–:,;(]|\s-|--)$", line):
        return True
    return words >= 6 and bool(re.search(r"[\w(\-]$", line))


# A yes/no answer stated as a sentence about the question's subject.
_AUXILIARY = r"does|did|do|is|are|was|were|would|will|can|could|has|have|had|never|cannot|won[’']t|tells?|lies|lied"
_NEGATION = (r"(?:(?:does|did|do|is|are|was|were|would|will|can|could|has|have|had)(?:\s+not\b|n[’']t\b)"
             r"|cannot\b|never\b|won[’']t\b)")
_SAID = re.compile(r"\b(?:say|says|said|claim|claims|think|thinks|know|knows|whether|if|that|because|since|"
                   r"when|unless|but|and)\b|[,;:()?]", re.IGNORECASE)
_SENTENCE = re.compile(
    r"[\s*_>\"'`“‘-]*(?:(?i:so|thus|hence|therefore|then|finally|in the end|in conclusion|overall),?\s+)?"
    r"(?P<subject>(?i:the|this|that)\s+[\w'’-]+(?:\s+(?!(?i:" + _AUXILIARY + r")\b)[\w'’-]+)?"
    r"|[A-Z][\w'’-]*(?:\s+[A-Z][\w'’-]*)?|(?i:you|he|she|they|we|i|it))"
    r"\s+(?P<negation>(?i:" + _NEGATION + r")\s+)?(?P<emphasis>(?i:does|did|do)\s+)?"
    r"(?P<verb>[^.!?\n]{1,80}?)[\s*_\"'`”’]*[.!]?[\s*_\"'`”’]*")
_LIES = re.compile(r"(?:be\s+)?(?:lie|lies|lied|lying|a liar|telling lies)", re.IGNORECASE)
_TRUE = re.compile(r"(?:tells?|told|is telling|tell)\s+the truth|is\s+(?:being\s+)?(?:truthful|honest)"
                   r"|(?:returns?|returned|comes? back|gets? back|goes? back)\s+(?:back\s+)?to\s+(?:the\s+)?"
                   r"(?:start|starting point|origin|beginning)"
                   r"|(?:is|are|am|ends? up|end up|ended up|winds? up)\s+(?:indeed\s+)?(?:back\s+)?"
                   r"(?:at|to)\s+(?:the\s+)?(?:start|starting point|origin|beginning)",
                   re.IGNORECASE)


_VAGUE = re.compile(r"(?:clear|certain|sure|known|obvious|possible|enough|given|specified|stated|mentioned|"
                    r"provided|determinable|decidable|answerable|relevant|needed|necessary)\b", re.IGNORECASE)
_VAGUE_SUBJECT = re.compile(r"(?:the|this|that)\s+(?:answer|question|option|choice|result|information|passage|"
                            r"context|problem|data)|it|i|we", re.IGNORECASE)


def yes_no_sentence(sentence: str) -> str | None:
    """"yes" or "no" for a one-clause statement answering a yes/no question, None for anything else:
    "(subject) does not <verb phrase>" is no (but "does not lie" is yes), "(subject) does/did <verb
    phrase>" is yes, "X tells the truth" and "you return to the starting point" are yes, "X lies" is no."""
    match = _SENTENCE.fullmatch(sentence)
    if not match or _SAID.search(match.group("verb")):
        return None
    verb, lies = match.group("verb"), _LIES.fullmatch(match.group("verb"))
    if match.group("negation"):
        if _VAGUE.match(verb) or _VAGUE_SUBJECT.fullmatch(match.group("subject")):
            return None  # "The answer is not clear": doubt, not a "no"
        return "yes" if lies else "no"
    if lies:
        return "no"
    if match.group("emphasis") or _TRUE.fullmatch(verb):
        return "yes"
    return None
