"""`sola verify`: recompute every hash and invariant the registry relies on.

DuckDB has no triggers, so append-only is a convention of the code; this check is what makes
it trustworthy. It reads everything (objects, rows, chain, refs, caches) and names each
problem. Unreferenced objects are reported as notes: they are what an interrupted `edit`
leaves behind and are harmless.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from safetensors.numpy import load as load_safetensors

from registry.db import latest_version, schema_version
from registry.keyindex import CoarseLists, nearest_lists
from registry.objects import CorruptObject, canonical_json, sha256_hex
from registry.store import (
    MODULUS,
    Commit,
    Registry,
    commit_record,
    edit_term,
    iso,
    key_vector_blobs,
    keys_digest,
    tombstone_changes,
    tombstone_term,
    tree_id_for,
)

_EDIT_FIELDS = ("prompt", "target", "subject", "author", "reason", "source")


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": self.problems, "notes": self.notes, "checked": self.checked}


def verify(registry: Registry) -> Report:
    report = Report()
    if schema_version(registry.db) != latest_version():
        report.problems.append(f"schema version {schema_version(registry.db)} != {latest_version()}")
    keys_by_id: dict[int, np.ndarray] = {}
    stored_keys: dict[int, bytes] = dict(registry.db.execute("SELECT key_id, vector FROM key_vectors").fetchall())
    referenced = _check_edits(registry, report, keys_by_id, stored_keys)
    _check_key_vectors(registry, report, keys_by_id, stored_keys)
    commits = _check_chain(registry, report)
    _check_refs(registry, report, commits)
    _check_caches(registry, report, keys_by_id)
    orphans = [d for d in registry.objects if d not in referenced]
    if orphans:
        report.notes.append(f"{len(orphans)} unreferenced object(s) (left by interrupted edits; harmless)")
    report.checked["objects"] = len(referenced)
    return report


def _check_edits(registry: Registry, report: Report, keys_by_id: dict[int, np.ndarray], stored_keys: dict[int, bytes]) -> set[str]:
    """Check every edit's objects against its rows; collect its verified keys by key id.

    An edit's keys are verified against `keys_sha256` in its provenance (keys kept in
    `key_vectors` only) or, for edits written before that layout, against the `keys` tensor
    of its tensors object."""
    referenced: set[str] = set()
    dim = registry.key_dim()
    rank = int(registry.routing["rank"])
    cursor = registry.db.execute("SELECT * FROM edits ORDER BY edit_id")
    columns = [d[0] for d in cursor.description]
    edit_rows = cursor.fetchall()  # fetch now: the next execute on this connection replaces the result
    key_rows: dict[str, list[tuple[int, int, str]]] = {}
    for key_id, edit_id, ordinal, prompt in registry.db.execute("SELECT key_id, edit_id, ordinal, prompt FROM edit_keys ORDER BY key_id").fetchall():
        key_rows.setdefault(edit_id, []).append((key_id, ordinal, prompt))
    count = 0
    for values in edit_rows:
        row = dict(zip(columns, values))
        edit_id = row["edit_id"]
        short = edit_id[:12]
        count += 1
        referenced.update({edit_id, row["tensors_sha256"]})
        try:
            document = registry.objects.get_json(edit_id)
        except (CorruptObject, json.JSONDecodeError) as error:
            report.problems.append(f"edit {short}: provenance {error}")
            continue
        for name in _EDIT_FIELDS:
            if document.get(name) != row[name]:
                report.problems.append(f"edit {short}: row field {name!r} differs from its provenance object")
        if document.get("tensors_sha256") != row["tensors_sha256"]:
            report.problems.append(f"edit {short}: row points at a different tensors object than its provenance")
        prompts = document.get("key_prompts", [])
        keys = key_rows.get(edit_id, [])
        if row["n_keys"] != len(prompts) or [(o, p) for _, o, p in keys] != list(enumerate(prompts)):
            report.problems.append(f"edit {short}: key rows do not match its provenance")
        try:
            tensors = load_safetensors(registry.objects.get(row["tensors_sha256"]))
        except CorruptObject as error:
            report.problems.append(f"edit {short}: tensors {error}")
            continue
        if "keys_sha256" in document:
            blobs = [stored_keys.get(key_id, b"") for key_id, _, _ in keys]
            if keys_digest(blobs) != document["keys_sha256"]:
                report.problems.append(f"edit {short}: its key_vectors rows do not match keys_sha256 in its provenance")
                continue
            tensors["keys"] = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), -1)
        for key_id, ordinal, _ in keys:
            if ordinal < len(tensors.get("keys", ())):
                keys_by_id[key_id] = tensors["keys"][ordinal]
        shapes = {name: tuple(t.shape) for name, t in tensors.items()}
        if shapes.get("keys", (None,))[0] != len(prompts) or shapes.get("keys", (0, 0))[1] != dim or shapes.get("lora_A", (0,))[0] != rank:
            report.problems.append(f"edit {short}: tensor shapes {shapes} do not fit the routing config")
    all_key_ids = registry.db.execute("SELECT count(*), coalesce(max(key_id), -1) FROM edit_keys").fetchone()
    if all_key_ids[0] != all_key_ids[1] + 1:
        report.problems.append("edit_keys: key ids are not dense")
    report.checked["edits"] = count
    return referenced


def _check_key_vectors(registry: Registry, report: Report, keys_by_id: dict[int, np.ndarray], stored: dict[int, bytes]) -> None:
    """One `key_vectors` row per key id, each byte-identical to the key verified for its edit
    (for older edits: its row in the hash-checked tensors object)."""
    key_ids = [r[0] for r in registry.db.execute("SELECT key_id FROM edit_keys").fetchall()]
    missing = [k for k in key_ids if k not in stored]
    extra = set(stored) - set(key_ids)
    if missing:
        report.problems.append(f"key_vectors: {len(missing)} key(s) have no vector (first: key {missing[0]})")
    if extra:
        report.problems.append(f"key_vectors: {len(extra)} vector(s) belong to no key")
    differing = [k for k in key_ids if k in stored and k in keys_by_id and stored[k] != key_vector_blobs({"keys": keys_by_id[k][None]})[0]]
    if differing:
        report.problems.append(f"key_vectors: {len(differing)} vector(s) differ from the tensors objects (first: key {differing[0]})")
    report.checked["key_vectors"] = len(stored)


def _check_chain(registry: Registry, report: Report) -> list[Commit]:
    commits = registry.all_commits()
    known_edits = {r[0] for r in registry.db.execute("SELECT edit_id FROM edits").fetchall()}
    changes_by_commit: dict[str, list[tuple[str, bool]]] = {}
    for commit_id, edit_id, active, seq in registry.db.execute(
        "SELECT commit_id, edit_id, active, seq FROM commit_changes ORDER BY seq, rowid"
    ).fetchall():
        changes_by_commit.setdefault(commit_id, []).append((edit_id, bool(active)))
    stray = set(changes_by_commit) - {c.commit_id for c in commits}
    if stray:
        report.problems.append(f"{len(stray)} change row(s) belong to no commit")
    digest = registry.config_digest()
    active: set[str] = set()
    tombstoned: set[str] = set()
    enabled = registry.tombstones
    set_sum, previous = 0, None
    for position, commit in enumerate(commits):
        short = commit.commit_id[:12]
        if commit.seq != position:
            report.problems.append(f"commit {short}: seq {commit.seq} breaks the chain at position {position}")
        if commit.parent_id != (previous.commit_id if previous else None):
            report.problems.append(f"commit {short}: parent does not match the previous commit")
        changes = changes_by_commit.get(commit.commit_id, [])
        if sha256_hex(canonical_json(commit_record(commit, changes))) != commit.commit_id:
            report.problems.append(f"commit {short}: content does not hash to its id (edited row?)")
        for edit_id, becomes_active in changes:
            if edit_id not in known_edits:
                report.problems.append(f"commit {short}: refers to missing edit {edit_id[:12]}")
            if becomes_active == (edit_id in active):
                report.problems.append(f"commit {short}: {'activates' if becomes_active else 'revokes'} {edit_id[:12]} twice")
            (active.add if becomes_active else active.discard)(edit_id)
            set_sum = (set_sum + (edit_term(edit_id) if becomes_active else -edit_term(edit_id))) % MODULUS
        for edit_id, entering in tombstone_changes(commit.op, changes, enabled, tombstoned.__contains__):
            (tombstoned.add if entering else tombstoned.discard)(edit_id)
            set_sum = (set_sum + (tombstone_term(edit_id) if entering else -tombstone_term(edit_id))) % MODULUS
        if commit.tree_sum != f"{set_sum:064x}" or commit.n_active != len(active) or commit.tree_id != tree_id_for(digest, set_sum):
            report.problems.append(f"commit {short}: tree does not match the replayed active set and tombstones")
        previous = commit
    report.checked["commits"] = len(commits)
    return commits


def _check_refs(registry: Registry, report: Report, commits: list[Commit]) -> None:
    ids = {c.commit_id for c in commits}
    refs = registry.db.execute("SELECT name, kind, commit_id FROM refs").fetchall()
    for name, kind, commit_id in refs:
        if commit_id not in ids:
            report.problems.append(f"ref {name}: points at missing commit {commit_id[:12]}")
        log = registry.db.execute("SELECT old_commit, new_commit FROM reflog WHERE ref = ? ORDER BY id", [name]).fetchall()
        if not log or log[-1][1] != commit_id:
            report.problems.append(f"ref {name}: ref log does not end at the ref's commit")
        for (old, new), (_, previous_new) in zip(log[1:], log[:-1]):
            if old != previous_new:
                report.problems.append(f"ref {name}: ref log chain is broken")
                break
        if kind == "tag" and len(log) != 1:
            report.problems.append(f"tag {name}: moved after creation (tags are immutable)")
    if commits and dict((n, c) for n, _, c in refs).get("main") != commits[-1].commit_id:
        report.problems.append("ref main: does not point at the newest commit")
    report.checked["refs"] = len(refs)


def _check_caches(registry: Registry, report: Report, keys_by_id: dict[int, np.ndarray]) -> None:
    """Derived caches (key matrix, IVF groups) must agree with the source of truth (or be
    absent: they rebuild). Per-snapshot indexes are not cached on disk: they are rebuilt from
    these two in well under a second.

    `keys_by_id` holds the keys already read and hash-checked from the objects, so the cache
    is compared without reading any object a second time."""
    dim = registry.key_dim()
    meta = registry.key_matrix._meta()
    if meta["rows"]:
        total = registry.db.execute("SELECT count(*) FROM edit_keys").fetchone()[0]
        rows = min(meta["rows"], total)
        if meta["rows"] > total:
            report.problems.append("cache: key matrix has more rows than the registry has keys (delete cache/ to rebuild)")
        for first in range(0, rows, 4096):
            end = min(first + 4096, rows)
            if any(k not in keys_by_id for k in range(first, end)):
                break  # an unreadable object, already reported with the edit it belongs to
            expected = np.stack([keys_by_id[k] for k in range(first, end)])
            if not np.array_equal(registry.key_matrix.rows(np.arange(first, end), dim), expected):
                report.problems.append(f"cache: key matrix rows {first}..{end} differ from the objects (delete cache/ to rebuild)")
                break
    _check_coarse_lists(registry, report, keys_by_id)


def _check_coarse_lists(registry: Registry, report: Report, keys_by_id: dict[int, np.ndarray]) -> None:
    """Each cached IVF group must be its key's nearest centroid (up to float rounding): a wrong
    group would make the index miss that key, i.e. an edit that silently stops firing."""
    found = CoarseLists(registry.root / "cache").load()
    report.checked["ivf_groups"] = 0 if found is None else len(found[2])
    if found is None:
        return
    _, centroids, groups = found
    ids = [k for k in range(len(groups)) if k in keys_by_id]
    if len(ids) != len(groups):
        report.problems.append("cache: ivf.npz covers keys the registry does not have (delete cache/ to rebuild)")
        return
    if not ids:
        return
    keys = np.stack([keys_by_id[k] for k in ids])
    best_group, best = nearest_lists(keys, centroids)
    assigned = np.einsum("ij,ij->i", keys, centroids[groups])
    wrong = np.flatnonzero((groups != best_group) & (assigned < best - 1e-5))
    if len(wrong):
        report.problems.append(f"cache: ivf.npz puts {len(wrong)} key(s) in a group that is not their nearest (delete cache/ to rebuild)")


__all__ = ["verify", "Report", "iso"]
