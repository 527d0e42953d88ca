"""Other-relation probes: prompts that name an edited subject but ask about another relation.

A subject-keyed edit ("Vladimir Putin used to work in" -> X) may fire on "Vladimir Putin
speaks"; that prompt's answer must not change. These probes measure it (`sola eval`'s
`locality_relation`). Templates: one per Wikidata relation, the most common in known-1000
(`sola/probe_data/relation_templates.json`, written by scripts/make_relation_templates.py).

For each edit with a subject, `per_edit` relations are drawn (seeded by the record's index)
among those whose template shares no content word with the edit's prompt, so the edit's own
relation ("mother tongue" vs "native language" aside) and its near paraphrases are left out;
the subject is put into each template.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from importlib import resources

from sola.data import EditRequest

STOP_WORDS = frozenset("the a an of in is was on by for with to and who what which where when its his her their".split())


@dataclass(frozen=True)
class RelationProbe:
    record: int  # index of the edit request it probes
    relation: str  # Wikidata relation id of the template
    prompt: str


def relation_templates() -> dict[str, str]:
    """{relation id: template with one `{}` for the subject}."""
    text = resources.files("sola").joinpath("probe_data/relation_templates.json").read_text(encoding="utf-8")
    return dict(json.loads(text)["templates"])


def _content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 2 and w not in STOP_WORDS}


def relation_probes(requests: list[EditRequest], per_edit: int = 2, seed: int = 0) -> list[RelationProbe]:
    """`per_edit` other-relation prompts for every request with a subject (none without)."""
    templates = relation_templates()
    probes = []
    for index, request in enumerate(requests):
        if not request.subject or not request.subject.strip():
            continue
        words = _content_words(request.prompt.replace(request.subject, " "))
        others = sorted(r for r, t in templates.items() if not (_content_words(t.replace("{}", " ")) & words))
        for relation in random.Random(seed * 1_000_003 + index).sample(others, min(per_edit, len(others))):
            probes.append(RelationProbe(index, relation, templates[relation].format(request.subject.strip())))
    return probes
