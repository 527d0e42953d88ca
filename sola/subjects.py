"""Finding an edit's subject in its prompt when the request does not name it.

A subject-keyed registry reads each edit's key from its subject's tokens (sola.keys). Requests
often carry the subject (CounterFact, zsRE and EasyEdit files do), but `sola edit --prompt P
--target T` may not. Reading the key from the prompt's last tokens instead makes it fire on
every prompt of the same wording about other subjects (docs/results.md, "A subject key needs its
subject"), so the subject is inferred here, from the text alone, before any model work.

The rule is a proper-name rule for English prompts: the subject is the longest run of words that
begin with a capital letter or a digit ("Danielle Darrieux", "NGC 6604", "U-270"), joined by the
lower-case particles names contain ("Leonardo da Vinci", "Nauka i Zhizn"), without an opening
function word ("In", "What", ...) or a trailing possessive. A prompt that names nobody ("beef
bourguignon was first cooked in") takes a run of lower-case content words instead (words that
are neither function words nor auxiliaries, at most four): the first one that a relation link
("of", "by", "does") does not follow, so "the capital of france is" is about "france". A prompt with
neither (symbols, function words only) has no inferable subject: a subject-keyed registry then keys
it on its last tokens (sola.keys.subject_span), which fires on its own wording.
Measured on ../shared/data (docs/results.md, "Inferring the subject"): the inferred subject is the
record's own for 96% of CounterFact and 92% of zsRE prompts, and routes as well as it.
"""

from __future__ import annotations

import re

# capitalised words that start a sentence or a question without being part of a name
FUNCTION_WORDS = frozenset("""
a an the in on at by for from of to with into onto about after before during under over since until
what which who whom whose when where why how is was are were did does do has have had can could
it its this that these those his her their my our your
""".split())
# words a nameless prompt's subject never contains: the function words and the auxiliaries,
# copulas and connectives that join its parts ("water boils at", "the sky is")
NOT_SUBJECT_WORDS = FUNCTION_WORDS | frozenset("""
be been being am will would shall should may might must not no nor or and but as than so very also
there then here one ones something someone
""".split())
MAX_COMMON_SUBJECT_WORDS = 4
# words after which a nameless prompt's subject follows rather than precedes: "the capital of
# france", "the genre played by x", "what sport does x play"
RELATION_LINKS = frozenset("of by in does do did for from".split())
ARTICLES = frozenset(("the", "a", "an"))  # "The Poodles", "A Tale of Two Cities": part of the name

# lower-case words that occur inside names ("Leonardo da Vinci", "Bank of America", "March on Rome")
NAME_PARTICLES = frozenset("""
of the de la le les du des del della da di do dos das von van der den ten ter y i e af and & am zu
in on at upon ibn bin al
""".split())

_CLOSING = "\"'“”‘’,;:?!"
_WORD = re.compile(r"\S+")


def _core(word: str) -> str:
    """A word without quotes, brackets, punctuation and a possessive ("Inc." keeps its '.')."""
    core = word.strip("\"'“”‘’()[]{},;:?!")
    for suffix in ("'s", "’s"):
        if core.endswith(suffix):
            core = core[: -len(suffix)]
    return core


def _capitalised(core: str) -> bool:
    return bool(core) and (core[0].isupper() or core[0].isdigit())


def _ends_clause(word: str) -> bool:
    """A name does not go on past a question mark or a colon (a possessive: see _name_runs)."""
    return word.rstrip("\"'“”‘’").endswith(("?", ";", ":", "!"))


def _name_runs(words: list[str]) -> list[tuple[int, int]]:
    """(first, last) word index, inclusive, of every run of name-like words.

    A capitalised word counts unless it opens a sentence as a function word ("In", "What");
    an opening article counts when a name follows it ("The Poodles"). Particles and commas join
    two name-like words ("Bank of America", "Fukuno, Toyama"), never end a name; a possessive
    ends one unless a name goes on after it ("Rob Dyrdek's Fantasy Factory", not "Darrieux's mother")."""

    def opens_sentence(i: int) -> bool:
        return i == 0 or words[i - 1].rstrip("\"'“”‘’)").endswith((".", "?", "!"))

    def name_like(i: int) -> bool:
        core = _core(words[i])
        if not _capitalised(core):
            return False
        if not opens_sentence(i) or core.lower() not in FUNCTION_WORDS:
            return True
        return core.lower() in ARTICLES and i + 1 < len(words) and _capitalised(_core(words[i + 1])) \
            and _core(words[i + 1]).lower() not in FUNCTION_WORDS

    def particle(i: int) -> bool:
        return _core(words[i]).lower() in NAME_PARTICLES and not _ends_clause(words[i]) and not words[i].endswith(",")

    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(words):
        if not name_like(i):
            i += 1
            continue
        first = last = i
        i += 1
        while i < len(words) and not _ends_clause(words[last]):
            if name_like(i):
                last, i = i, i + 1
                continue
            if words[last].endswith(("'s", "’s")):
                break
            ahead = i
            while ahead < len(words) and particle(ahead):
                ahead += 1
            if not (i < ahead < len(words) and name_like(ahead)):
                break
            last, i = ahead, ahead + 1
        runs.append((first, last))
    return runs


def _trimmed(text: str) -> str:
    """A name without the quotes, punctuation and possessive around it ("Inc." and a bracket the
    name opened stay)."""
    text = text.lstrip("\"'“”‘’([{")
    for _ in range(2):
        text = text.rstrip(_CLOSING)
        for suffix in ("'s", "’s"):
            if text.endswith(suffix):
                text = text[: -len(suffix)]
    for opening, closing in ("()", "[]"):
        if text.count(closing) > text.count(opening):
            text = text.rstrip(closing)
    if text.endswith(".") and len(text.rsplit(" ", 1)[-1]) > 5:  # a full stop, not "Inc." or "Jr."
        text = text[:-1]
    return text.strip()


def _content_runs(words: list[str]) -> list[tuple[int, int]]:
    """(first, last) word index, inclusive, of every run of lower-case content words (letters,
    hyphens and apostrophes only; not in NOT_SUBJECT_WORDS), at most MAX_COMMON_SUBJECT_WORDS
    long; punctuation after a word ends its run."""
    def content(word: str) -> bool:
        core = _core(word)
        return bool(core) and core.replace("-", "").replace("'", "").isalpha() and core.lower() not in NOT_SUBJECT_WORDS

    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(words):
        if not content(words[i]):
            i += 1
            continue
        first = i
        while i + 1 < len(words) and i + 1 - first < MAX_COMMON_SUBJECT_WORDS and content(words[i + 1]) \
                and _core(words[i]) == words[i]:
            i += 1
        runs.append((first, i))
        i += 1
    return runs


def _nameless_subject(words: list[str]) -> list[tuple[int, int]]:
    """The run of content words a prompt without a name is about: the first that no relation
    link follows ("capital" in "the capital of france is" relates; "france" is the subject),
    else the last; [] when there is none."""
    runs = _content_runs(words)
    about = [run for run in runs if run[1] + 1 >= len(words) or _core(words[run[1] + 1]).lower() not in RELATION_LINKS]
    return (about or runs[-1:])[:1]


def infer_subject(prompt: str) -> str | None:
    """The prompt's subject: its longest run of name-like words (the first of equal ones), as
    written in the prompt; else the run of lower-case content words it is about
    (_nameless_subject); None when it has neither."""
    matches = list(_WORD.finditer(prompt))
    words = [m.group() for m in matches]
    runs = _name_runs(words) or _nameless_subject(words)
    if not runs:
        return None
    first, last = max(runs, key=lambda run: (matches[run[1]].end() - matches[run[0]].start(), -run[0]))
    return _trimmed(prompt[matches[first].start(): matches[last].end()]) or None
