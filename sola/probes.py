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


def relation_templates(kind: str = "templates") -> dict[str, str]:
    """{relation id: template with one `{}` for the subject}: the evaluation probes
    ("templates"), or the disjoint set training may hold to the base ("training_templates")."""
    text = resources.files("sola").joinpath("probe_data/relation_templates.json").read_text(encoding="utf-8")
    return dict(json.loads(text)[kind])


def _content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 2 and w not in STOP_WORDS}


def other_relations(prompt: str, subject: str, templates: dict[str, str]) -> list[str]:
    """The relations of `templates` whose template shares no content word with the prompt (the
    subject aside): the edit's own relation and its near paraphrases are left out."""
    words = _content_words(prompt.replace(subject, " "))
    return sorted(r for r, t in templates.items() if not (_content_words(t.replace("{}", " ")) & words))


def training_prompts(prompt: str, subject: str | None, count: int, seed: int = 0) -> list[str]:
    """`count` other-relation prompts of the subject for an edit's training to hold to the base
    model (TrainConfig.relation_kl), from the training templates, never the evaluation ones; a
    relation is skipped when either of its templates shares a content word with the prompt.
    None without a subject. Seeded by the prompt, so an edit retrains on the same prompts."""
    if not subject or not subject.strip() or count <= 0:
        return []
    subject = subject.strip()
    training = relation_templates("training_templates")
    allowed = set(other_relations(prompt, subject, relation_templates())) & set(other_relations(prompt, subject, training))
    relations = sorted(allowed)
    chosen = random.Random(f"{seed}:{prompt}").sample(relations, min(count, len(relations)))
    return [training[r].format(subject) for r in chosen]


def relation_probes(requests: list[EditRequest], per_edit: int = 2, seed: int = 0) -> list[RelationProbe]:
    """`per_edit` other-relation prompts for every request with a subject (none without)."""
    templates = relation_templates()
    probes = []
    for index, request in enumerate(requests):
        if not request.names_subject:
            continue
        others = other_relations(request.prompt, request.subject, templates)
        for relation in random.Random(seed * 1_000_003 + index).sample(others, min(per_edit, len(others))):
            probes.append(RelationProbe(index, relation, templates[relation].format(request.subject.strip())))
    return probes
