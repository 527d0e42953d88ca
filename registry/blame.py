"""`sola blame PROMPT`: the answer history of one prompt along a branch, from keys and trees alone.

The prompt's key is computed once (by the caller, with the model). Only keys within the routing
threshold of it can ever answer it, and a key's radius depends only on keys within threshold /
radius_ratio of that key; those few keys' edits are the only ones whose changes can change the
answer. So blame reads the changes of those edits, walks the branch's first-parent chain oldest
first applying them, and re-decides (with the routing rule's arithmetic, exactly, on the stored
float32 keys) only at commits that touch them: one matrix-vector product and a walk, however
long the history.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from registry.graph import first_parents
from registry.lineage import follow
from registry.model import ACTIVE, TOMBSTONE, Commit
from registry.routing import SubjectQuery, subject_scores, subject_winner
from registry.store import Registry


def _decide(candidates: list[tuple[int, float]], neighbours: dict[int, list[tuple[int, float]]], owner: list[str],
            states: dict[str, str | None], threshold: float, ratio: float,
            nearest: Callable[[list[int]], int]) -> tuple[str | None, str | None, float]:
    """(edit answering or None, tombstone holding the input or None, distance) for the present
    keys; `nearest` picks the key the query goes to among them (as registry.routing does)."""
    present = dict((k, d) for k, d in candidates if states.get(owner[k]) in (ACTIVE, TOMBSTONE))
    if not present:
        return None, None, float("inf")
    key = nearest(list(present))
    distance = present[key]
    radius = threshold
    if ratio > 0:
        own = owner[key]
        near = [d for k, d in neighbours.get(key, []) if owner[k] != own and states.get(owner[k]) in (ACTIVE, TOMBSTONE)]
        if near:
            radius = min(radius, ratio * min(near))
    if distance >= radius:
        return None, None, distance
    edit = owner[key]
    return (edit, None, distance) if states[edit] == ACTIVE else (None, edit, distance)


def blame(registry: Registry, query: "np.ndarray | SubjectQuery", head: Commit) -> list[dict[str, Any]]:
    """One entry per commit (oldest first) of `head`'s first-parent chain at which the edit that
    answers the query changed: an edit starts answering, stops, another takes over, a tombstone
    holds it."""
    rule = registry.rule
    key_ids, owners, matrix = registry.all_keys()
    if not len(key_ids):
        return []
    if isinstance(query, SubjectQuery):  # a prompt's subject query: scored by the subject rule
        similarities, lengths = subject_scores(query, matrix)
        distances = np.maximum(0.0, 1.0 - similarities)
        ids = np.asarray(key_ids)

        def nearest(present: list[int]) -> int:  # near-ties: the longer window (subject_winner)
            return present[subject_winner(similarities[present], lengths[present], ids[present])]
    else:
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        distances = np.maximum(0.0, 1.0 - matrix @ query)

        def nearest(present: list[int]) -> int:
            return min(present, key=lambda k: (float(distances[k]), k))
    close = np.flatnonzero(distances < rule.threshold)
    candidates = [(int(k), float(distances[k])) for k in close]
    neighbours: dict[int, list[tuple[int, float]]] = {}
    relevant = {owners[k] for k, _ in candidates}
    if rule.radius_ratio > 0:
        reach = rule.threshold / rule.radius_ratio
        for key, _ in candidates:
            around = np.maximum(0.0, 1.0 - matrix @ matrix[key])
            near = np.flatnonzero(around < reach)
            neighbours[key] = [(int(k), float(around[k])) for k in near if int(k) != key]
            relevant.update(owners[int(k)] for k in near)
    if not relevant:
        return []
    touching: dict[str, list[tuple[str, str | None]]] = {}
    for commit_id, edit_id, state in registry.catalog.changes_of_edits(relevant):
        touching.setdefault(commit_id, []).append((edit_id, state))
    chain = first_parents(registry.catalog.parent_map(), head.commit_id)[::-1]
    states: dict[str, str | None] = {}
    answer: tuple[str | None, str | None] = (None, None)
    moments: list[tuple[str, str | None, str | None, float]] = []
    for commit_id in chain:
        if commit_id not in touching:
            continue
        for edit_id, state in touching[commit_id]:
            states[edit_id] = state
        edit, holder, distance = _decide(candidates, neighbours, owners, states, rule.threshold, rule.radius_ratio, nearest)
        if (edit, holder) != answer:
            answer = (edit, holder)
            moments.append((commit_id, edit, holder, distance))
    commits = registry.catalog.commits(c for c, _, _, _ in moments)
    facts = registry.catalog.edit_rows(e for _, a, b, _ in moments for e in (a, b) if e)
    out = []
    for commit_id, edit, holder, distance in moments:
        commit = commits[commit_id]
        entry = {"commit": commit_id, "time": commit.to_dict()["time"], "author": commit.author, "op": commit.op,
                 "reason": commit.reason, "message": commit.message, "edit": edit, "tombstone": holder,
                 "distance": None if edit is None and holder is None else round(distance, 6)}
        if edit is not None:
            entry.update(prompt=facts[edit]["prompt"], target=facts[edit]["target"])
        out.append(entry)
    lineages: dict[str, dict[str, Any] | None] = {}
    for entry in out:  # a rebased edit: the origin edit it was re-trained from, as the origin records it
        edit = entry["edit"] or entry["tombstone"]
        if edit is not None:
            if edit not in lineages:
                lineages[edit] = follow(registry, edit)
            if lineages[edit] is not None:
                entry["lineage"] = lineages[edit]
    return out


__all__ = ["blame"]
