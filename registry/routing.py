"""The routing and neighbour rule, in one place, on stored keys only (numpy; no model, no torch).

Everything that asks "which edit answers this input" or "which edits are too close" uses this
module: the routed layer at inference (`sola.layer.EditBank`), `edit`'s collision check,
`show`'s neighbours, `conflicts`, revoke's reroute report, merge and cherry-pick checks, blame.

The rule: a query (a pooled, L2-normalised vector, or for subject keys a `SubjectQuery`: the
prompt's token and window vectors, scored by `subject_scores`) goes to its nearest key (for
subject keys, near-ties go to the key met by the longer window: `subject_winner`). That key's edit
fires when the cosine distance is under the key's radius, min(threshold, radius_ratio x the
key's isolation: its distance to the nearest key of another edit), unless the edit is a
tombstone (revoked): then the base model answers. Neighbours of a vector are the *active* edits
with a key within a radius of it; tombstones are neither duplicates nor contradictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np


class KeySearch(Protocol):
    """Nearest-key lookup over normalised keys.

    `search`: (similarity, key id) of the nearest key per query, id -1 if empty.
    `neighbours`: the k nearest (similarities, key ids) of one vector, best first.
    `vector`: the stored key of a key id.
    `vectors`: (key ids ascending, their stored keys): every key the search holds."""

    def search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def vectors(self) -> tuple[np.ndarray, np.ndarray]: ...

    def neighbours(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def vector(self, key_id: int) -> np.ndarray: ...


class ExactKeySearch:
    """Brute-force inner-product search in numpy; the in-memory reference implementation."""

    def __init__(self, keys: np.ndarray, key_ids: np.ndarray) -> None:
        self.keys = np.ascontiguousarray(keys, dtype=np.float32)
        self.key_ids = np.asarray(key_ids, dtype=np.int64)

    def search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(self.key_ids) == 0:
            return np.full(len(queries), -np.inf, dtype=np.float32), np.full(len(queries), -1, dtype=np.int64)
        sims = queries.astype(np.float32) @ self.keys.T
        best = sims.argmax(axis=1)
        return sims[np.arange(len(queries)), best], self.key_ids[best]

    def neighbours(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims = self.keys @ query.astype(np.float32).reshape(-1)
        order = np.argsort(-sims, kind="stable")[:k]
        return sims[order], self.key_ids[order]

    def vector(self, key_id: int) -> np.ndarray:
        return self.keys[int(np.flatnonzero(self.key_ids == key_id)[0])]

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(self.key_ids, kind="stable")
        return self.key_ids[order], self.keys[order]


@dataclass(frozen=True)
class SubjectQuery:
    """A prompt as a subject key sees it: the normalised vectors of its tokens (at the token
    layer) and of its windows of 1..max_window tokens (means at the span layer), position 0
    excluded. Built by `sola.keys`; scored against stored keys by `subject_similarity`."""

    tokens: np.ndarray  # (n tokens, d)
    windows: np.ndarray  # (n windows, d)
    # the token count of each window, where the query keeps only some of them (windows that end
    # where a name may end, sola.keys.name_ends); None: every window, laid out by length
    lengths: np.ndarray | None = None


# Keys the first stage passes to the exact two-part score (docs/scaling.md, "Subject keys").
SUBJECT_CANDIDATES = 64
# From this many keys on, the first stage scores tokens in a PROJECTED_DIMS-dimensional
# projection of the token parts (their top principal directions) instead of in full: at 10k keys
# the full first stage is most of the routing cost. The exact two-part score still decides.
PROJECT_FROM = 4096
PROJECTED_DIMS = 128


# Subject keys a query meets equally well (similarities within SUBJECT_TIE) are told apart by the
# window that meets them: the longer one wins, then the lower key id. In "Manila Bay, in" the
# best token and window meet a key on "Manila" exactly as they meet the key on "Manila Bay"; the
# query is about the longer subject, and without this rule an edit on the name inside another
# edit's subject could take that edit's prompts, or keep them after that edit is revoked.
SUBJECT_TIE = 1e-5


def window_lengths(query: SubjectQuery) -> np.ndarray:
    """The token count of each of the query's windows (sola.keys lays them out by length: every
    1-token window, then every 2-token window, ...), or as the query records them."""
    if query.lengths is not None:
        return np.asarray(query.lengths, dtype=np.int64)
    tokens, remaining, lengths, width = len(query.tokens), len(query.windows), [], 1
    while remaining > 0 and width <= tokens:
        count = min(tokens - width + 1, remaining)
        lengths += [width] * count
        remaining -= count
        width += 1
    return np.asarray(lengths, dtype=np.int64)


def subject_scores(query: SubjectQuery, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(similarity, best window's token count) of a query to each subject key (n, 2d). The
    similarity is the mean of its best token's cosine to each key's token part and its best
    window's cosine to the key's span part.

    A subject key is [token part; span part] / sqrt(2), each part unit length, so the inner
    product of two keys is the same mean of two cosines: a stored key compared with another (a
    collision, a neighbour) is on the scale a prompt's query is."""
    keys = np.asarray(keys, dtype=np.float32)
    half = keys.shape[1] // 2
    token_parts, span_parts = keys[:, :half] * np.float32(np.sqrt(2.0)), keys[:, half:] * np.float32(np.sqrt(2.0))
    best_token = (query.tokens.astype(np.float32) @ token_parts.T).max(axis=0)
    windows = query.windows.astype(np.float32) @ span_parts.T
    best = windows.argmax(axis=0)
    best_window = windows[best, np.arange(windows.shape[1])]
    return ((best_token + best_window) / 2.0).astype(np.float32), window_lengths(query)[best]


def subject_similarity(query: SubjectQuery, keys: np.ndarray) -> np.ndarray:
    """Cosine similarity of a query to subject keys (n, 2d): subject_scores without the windows."""
    return subject_scores(query, keys)[0]


def subject_winner(similarities: np.ndarray, lengths: np.ndarray, key_ids: np.ndarray) -> int:
    """The position of the key a subject query goes to: the most similar; among keys within
    SUBJECT_TIE of it, the one met by the longest window, then the lowest key id."""
    tied = np.flatnonzero(similarities >= similarities.max() - SUBJECT_TIE)
    return int(min(tied, key=lambda i: (-int(lengths[i]), int(key_ids[i]))))


class SubjectIndex:
    """A snapshot's subject keys laid out for the two-stage search: the token parts in one
    contiguous matrix (the first stage), the whole keys beside them (the exact second stage).
    Built once per bank from its KeySearch (`vectors`), which stays the source of truth. From
    PROJECT_FROM keys on, the first stage works in the token parts' top PROJECTED_DIMS principal
    directions (computed here, from the keys alone, so the same keys always give the same index)."""

    def __init__(self, key_ids: np.ndarray, keys: np.ndarray, project_from: int = PROJECT_FROM) -> None:
        self.key_ids = np.asarray(key_ids, dtype=np.int64)
        self.keys = np.ascontiguousarray(keys, dtype=np.float32)
        half = self.keys.shape[1] // 2
        self.token_parts = np.ascontiguousarray(self.keys[:, :half] * np.float32(np.sqrt(2.0)))
        self.projection: np.ndarray | None = None
        self.first_stage = self.token_parts
        if len(self.key_ids) >= project_from and half > PROJECTED_DIMS:
            self.projection = principal_directions(self.token_parts, PROJECTED_DIMS)
            self.first_stage = np.ascontiguousarray(self.token_parts @ self.projection)

    @classmethod
    def of(cls, search: "KeySearch") -> "SubjectIndex":
        key_ids, keys = search.vectors()
        return cls(key_ids, keys)

    def first_scores(self, query: SubjectQuery) -> np.ndarray:
        """Every key's best-token cosine to the query (approximate once projected)."""
        tokens = np.asarray(query.tokens, dtype=np.float32)
        if self.projection is not None:
            tokens = tokens @ self.projection
        return (tokens @ self.first_stage.T).max(axis=0)

    def nearest(self, queries: list[SubjectQuery], candidates: int = SUBJECT_CANDIDATES) -> tuple[np.ndarray, np.ndarray]:
        """(similarity, key id) of the nearest key per query, in two stages: every key's best
        token cosine (one matrix product), then the exact two-part score of the `candidates`
        keys best by it. A key outside them would need its span part to beat the winner's by
        more than its token part trails: the exact rule up to such rare cases (measured in
        docs/scaling.md)."""
        sims = np.full(len(queries), -np.inf, dtype=np.float32)
        ids = np.full(len(queries), -1, dtype=np.int64)
        if len(self.key_ids) == 0:
            return sims, ids
        for row, query in enumerate(queries):
            best_token = self.first_scores(query)
            if len(best_token) > candidates:
                chosen = np.argpartition(-best_token, candidates - 1)[:candidates]
            else:
                chosen = np.arange(len(best_token))
            scores, lengths = subject_scores(query, self.keys[chosen])
            best = subject_winner(scores, lengths, self.key_ids[chosen])
            sims[row], ids[row] = scores[best], self.key_ids[chosen[best]]
        return sims, ids


def principal_directions(vectors: np.ndarray, dims: int) -> np.ndarray:
    """(d, dims): the top `dims` eigenvectors of the vectors' (uncentred) second moment, the
    subspace that keeps most of their inner products with anything. Signs fixed so that the
    result depends on the vectors only."""
    sample = vectors[:: max(1, len(vectors) // PROJECT_FROM)]  # every k-th key: enough for the subspace, and cheap
    moment = (sample.T @ sample).astype(np.float64) / max(1, len(sample))
    _, eigenvectors = np.linalg.eigh(moment)
    top = eigenvectors[:, ::-1][:, :dims]
    signs = np.sign(top[np.abs(top).argmax(axis=0), np.arange(dims)])
    return np.ascontiguousarray((top * signs).astype(np.float32))


def nearest_subject(search: "KeySearch", queries: list[SubjectQuery], candidates: int = SUBJECT_CANDIDATES,
                    index: SubjectIndex | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(similarity, key id) of the nearest subject key per query (SubjectIndex.nearest)."""
    return (index if index is not None else SubjectIndex.of(search)).nearest(queries, candidates)


@dataclass
class Routing:
    """Per-sequence decision: which edit fired (None), the cosine distance to the nearest key,
    whose key that is, and the radius that key had (the threshold, or less under `radius_ratio`)."""

    edits: list[str | None]
    distances: list[float]
    nearest: list[str | None]
    radii: list[float]

    @classmethod
    def unrouted(cls, batch: int) -> "Routing":
        return cls([None] * batch, [float("inf")] * batch, [None] * batch, [float("nan")] * batch)


@dataclass(frozen=True)
class RoutingRule:
    threshold: float
    radius_ratio: float
    duplicate_distance: float

    @classmethod
    def from_record(cls, routing: dict) -> "RoutingRule":
        """The rule a recorded routing config routes by (older records: threshold only)."""
        return cls(float(routing["threshold"]), float(routing.get("radius_ratio", 0.0)),
                   float(routing.get("duplicate_distance", 0.002)))


def isolation(search: KeySearch, key_edit: dict[int, str], key_id: int) -> float:
    """Cosine distance from key `key_id` to the nearest key of another edit (inf when there is
    none). Keys of the same edit (its rephrases) do not count: they point to the same LoRA."""
    own = key_edit[key_id]
    vector, k = search.vector(key_id), 8
    while True:
        sims, ids = search.neighbours(vector, k)
        for sim, other in zip(sims.tolist(), ids.tolist()):
            if key_edit.get(int(other), own) != own:
                return max(0.0, 1.0 - float(sim))
        if len(ids) < k or k >= len(key_edit):
            return float("inf")
        k *= 4


def decide(search: KeySearch, key_edit: dict[int, str], tombstones: frozenset[str] | set[str],
           queries: np.ndarray | list[SubjectQuery], rule: RoutingRule, subject_index: SubjectIndex | None = None) -> Routing:
    """The routing rule for pooled, normalised queries (n, dim), or for subject queries (the
    search's keys laid out once as `subject_index` when the caller keeps one)."""
    if not key_edit:
        return Routing.unrouted(len(queries))
    if isinstance(queries, list):
        sims, key_ids = nearest_subject(search, queries, index=subject_index)
    else:
        sims, key_ids = search.search(np.ascontiguousarray(queries, dtype=np.float32))
    edits, distances, nearest, radii = [], [], [], []
    for sim, key_id in zip(sims.tolist(), key_ids.tolist()):
        edit = key_edit.get(int(key_id)) if key_id >= 0 else None
        distance = max(0.0, float(1.0 - sim)) if edit is not None else float("inf")
        radius = rule.threshold
        if edit is not None and distance < radius and rule.radius_ratio > 0:
            radius = min(radius, rule.radius_ratio * isolation(search, key_edit, int(key_id)))
        nearest.append(edit)
        distances.append(distance)
        radii.append(radius)
        edits.append(edit if distance < radius and edit not in tombstones else None)
    return Routing(edits, distances, nearest, radii)


def nearest_active(search: KeySearch, key_edit: dict[int, str], tombstones: frozenset[str] | set[str], vector: np.ndarray,
                   radius: float, k: int = 16) -> list[tuple[str, float]]:
    """Active edits with a key within `radius` of `vector`, closest first, as (edit, distance).
    The search widens only as far as tombstones crowd the neighbourhood."""
    if not key_edit:
        return []
    wanted = k
    while True:
        sims, ids = search.neighbours(np.asarray(vector, dtype=np.float32), wanted)
        active = [(float(s), int(i)) for s, i in zip(sims.tolist(), ids.tolist()) if i >= 0 and key_edit[int(i)] not in tombstones]
        if len(active) >= k or len(ids) < wanted:
            break
        wanted *= 4
    found: dict[str, float] = {}
    for sim, key_id in active[:k]:
        distance = max(0.0, 1.0 - sim)
        edit = key_edit[key_id]
        if distance < radius and edit not in found:
            found[edit] = distance
    return sorted(found.items(), key=lambda item: item[1])


def same_answer(prompt_a: str, target_a: str, prompt_b: str, target_b: str) -> bool:
    """Whether two facts give the same continuation (`--target Rome` == `--target ' Rome'`)."""
    return join_target(prompt_a, target_a).strip() == join_target(prompt_b, target_b).strip()


def join_target(prompt: str, target: str) -> str:
    """`--target Rome` and `--target ' Rome'` mean the same continuation (DESIGN.md section 5)."""
    if target[:1].isspace() or prompt[-1:].isspace():
        return target
    return " " + target


@dataclass(frozen=True)
class Collision:
    """A pair of edits whose keys lie within the duplicate bound: `contradicts` when they answer differently."""

    a: str
    b: str
    distance: float
    contradicts: bool


def collisions(keys_a: dict[str, np.ndarray], keys_b: dict[str, np.ndarray], facts: Callable[[str], tuple[str, str]],
               radius: float) -> list[Collision]:
    """Pairs (edit of A, edit of B) with keys closer than `radius` (exact, both sides small)."""
    if not keys_a or not keys_b:
        return []
    ids_b = [e for e, k in keys_b.items() for _ in range(len(k))]
    matrix_b = np.concatenate([np.asarray(k, dtype=np.float32) for k in keys_b.values()])
    found: dict[tuple[str, str], float] = {}
    for edit_a, rows in keys_a.items():
        sims = np.asarray(rows, dtype=np.float32) @ matrix_b.T
        for column, edit_b in enumerate(ids_b):
            distance = max(0.0, 1.0 - float(sims[:, column].max()))
            if edit_b != edit_a and distance < radius:
                pair = (edit_a, edit_b)
                found[pair] = min(distance, found.get(pair, distance))
    out = []
    for (a, b), distance in sorted(found.items(), key=lambda item: item[1]):
        prompt_a, target_a = facts(a)
        prompt_b, target_b = facts(b)
        out.append(Collision(a, b, distance, not same_answer(prompt_a, target_a, prompt_b, target_b)))
    return out


__all__ = ["KeySearch", "ExactKeySearch", "SubjectQuery", "SubjectIndex", "subject_similarity", "nearest_subject", "Routing", "RoutingRule", "decide", "isolation", "nearest_active", "collisions",
           "same_answer", "join_target"]
