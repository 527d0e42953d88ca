"""`sola verify`: recompute every hash and invariant the registry relies on.

DuckDB has no triggers, so append-only is a convention of the code; this check is what makes
it trustworthy. It reads everything (objects, rows, chain, refs, caches) and names each
problem. Unreferenced objects and the temporary files of an interrupted object write are
reported as notes: they are what an interrupted `edit` leaves behind, are harmless, and
`sola gc` (`collect_garbage`) removes them.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as load_safetensors

from registry.keyindex import CoarseLists, nearest_lists
from registry.objects import CorruptObject, ObjectStore, fetched_bytes
from registry import checkpoint as checkpoints_module
from registry.model import (ABSENT, ACTIVE, MAIN, MODULUS, TOMBSTONE, Commit, RefEntry, RegistryError, commit_id_of, iso, member_term,
                            parse_time, reflog_entry_hash, tree_id_for)
from registry.store import Registry, key_vector_blobs, keys_digest

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


def verify(registry: Registry, checkpoints: list[tuple[str, Any]] = (), public_key: bytes | None = None,
           witness: Path | None = None) -> Report:
    """Check everything; with `checkpoints` ((label, parsed checkpoint document) each), also
    that the registry's ref log extends each of them (registry/checkpoint.py), with
    `public_key` that each is signed by that key, and with `witness` that it extends every
    checkpoint of this registry in that witness file."""
    report = Report()
    if registry.catalog.schema_version() != registry.catalog.latest_version():
        report.problems.append(f"schema version {registry.catalog.schema_version()} != {registry.catalog.latest_version()}")
    keys_by_id: dict[int, np.ndarray] = {}
    stored_keys: dict[int, bytes] = dict(registry.catalog.scan("key_vectors")[1])
    referenced = _check_edits(registry, report, keys_by_id, stored_keys)
    _check_key_vectors(registry, report, keys_by_id, stored_keys)
    known_edits = {row[0] for row in registry.catalog.scan("edits")[1]}
    trees = _check_trees(registry, report, known_edits)
    commits = _check_commits(registry, report, known_edits, trees)
    entries = registry.catalog.reflog()
    chain = _check_reflog_chain(registry, report, entries)
    _check_refs(registry, report, commits, entries)
    _check_checkpoints(registry, report, chain, list(checkpoints), public_key)
    if witness is not None:
        _check_witness(registry, report, chain, witness)
    _check_caches(registry, report, keys_by_id)
    found = garbage(registry, referenced)
    if found["objects"]:
        report.notes.append(f"{len(found['objects'])} unreferenced object(s) (left by interrupted edits; harmless; `sola gc` removes them)")
    if found["temporary"]:
        report.notes.append(f"{len(found['temporary'])} temporary file(s) in objects/ (left by an interrupted write; harmless; "
                            f"`sola gc` removes them), first: {found['temporary'][0]['path']}")
    if found["other"]:
        report.notes.append(f"{len(found['other'])} file(s) in objects/ that sola did not write (left alone), first: {found['other'][0]}")
    report.checked["objects"] = len(referenced)
    return report


def referenced_objects(registry: Registry) -> set[str]:
    """Every object a row points at: each edit's provenance object (its id) and tensors object."""
    columns, rows = registry.catalog.scan("edits")
    at = columns.index("tensors_sha256")
    return {row[0] for row in rows} | {row[at] for row in rows}


def garbage(registry: Registry, referenced: set[str] | None = None) -> dict[str, Any]:
    """What `sola gc` would remove: objects no row points at and `.tmp-*` files in objects/
    (each with its size), plus the names of other files there (never removed)."""
    referenced = referenced_objects(registry) if referenced is None else referenced
    found: dict[str, Any] = {"objects": [], "temporary": [], "other": []}
    for kind, name, path in registry.objects.files():
        if kind == "other":
            found["other"].append(f"objects/{name}")
            continue
        if kind == "object" and name in referenced:
            continue
        try:
            size = registry.objects.size(path)
        except FileNotFoundError:
            continue
        if kind == "object":
            found["objects"].append({"object": name, "bytes": size})
        else:
            found["temporary"].append({"path": f"objects/{name}", "bytes": size})
    return found


def collect_garbage(registry: Registry, remove: bool = True) -> dict[str, Any]:
    """List (and with `remove`, delete) unreferenced objects and temporary files in objects/.

    The caller holds the write lock (a writable registry): every object write happens under it,
    between writing an edit's objects and committing its row, so nothing found here can belong
    to a write in progress. Only regular files sola names (a sha256, or `.tmp-*` in a prefix
    directory) are touched; symbolic links and anything else are left alone."""
    if not registry.writable:
        raise RegistryError("gc needs the registry opened for writing (the write lock)")
    if remove and not isinstance(registry.objects, ObjectStore):
        raise RegistryError(f"gc removes files from a local objects/ only; {registry.objects.describe()} is shared "
                            f"(expire unreferenced objects there with the bucket's own lifecycle rules, using `sola gc --dry-run --json`)")
    found = garbage(registry)
    removed = 0
    if remove:
        root = registry.objects.root.resolve()
        for item in found["objects"] + found["temporary"]:
            relative = item["path"].removeprefix("objects/") if "path" in item else f"{item['object'][:2]}/{item['object'][2:]}"
            path = registry.objects.root / relative
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(info.st_mode) or path.resolve().parent.parent != root:
                continue
            os.unlink(path)
            removed += 1
    total = sum(item["bytes"] for item in found["objects"] + found["temporary"])
    return {"removed": remove, "files_removed": removed, "bytes": total, "objects": found["objects"],
            "temporary": found["temporary"], "other": found["other"]}


_FETCH_CHUNK = 64  # edits whose objects verify fetches at once


def _check_edits(registry: Registry, report: Report, keys_by_id: dict[int, np.ndarray], stored_keys: dict[int, bytes]) -> set[str]:
    """Check every edit's objects against its rows; collect its verified keys by key id.

    An edit's keys are verified against `keys_sha256` in its provenance (keys kept in
    `key_vectors` only) or, for edits written before that layout, against the `keys` tensor
    of its tensors object."""
    referenced: set[str] = set()
    dim = registry.key_dim()
    rank = int(registry.routing["rank"])
    columns, edit_rows = registry.catalog.scan("edits")
    key_columns, all_keys = registry.catalog.scan("edit_keys")
    key_rows: dict[str, list[tuple[int, int, str]]] = {}
    for row in all_keys:
        key = dict(zip(key_columns, row))
        key_rows.setdefault(key["edit_id"], []).append((key["key_id"], key["ordinal"], key["prompt"]))
    count = 0
    fetched: dict[str, bytes | CorruptObject] = {}
    object_columns = (columns.index("edit_id"), columns.index("tensors_sha256"))
    for index, values in enumerate(edit_rows):
        if index % _FETCH_CHUNK == 0:  # the next chunk's objects in one request batch (concurrent on S3)
            chunk = edit_rows[index : index + _FETCH_CHUNK]
            fetched = registry.objects.get_many([v[at] for v in chunk for at in object_columns], fresh=True)
        row = dict(zip(columns, values))
        edit_id = row["edit_id"]
        short = edit_id[:12]
        count += 1
        referenced.update({edit_id, row["tensors_sha256"]})
        try:
            document = json.loads(fetched_bytes(fetched[edit_id]))
        except (CorruptObject, json.JSONDecodeError) as error:
            report.problems.append(f"edit {short}: provenance {error}")
            continue
        for name in _EDIT_FIELDS:
            if document.get(name) != row[name]:
                report.problems.append(f"edit {short}: row field {name!r} differs from its provenance object")
        if _created_at(document) != iso(row["created_at"]):
            report.problems.append(f"edit {short}: row field 'created_at' differs from its provenance object")
        if document.get("tensors_sha256") != row["tensors_sha256"]:
            report.problems.append(f"edit {short}: row points at a different tensors object than its provenance")
        prompts = document.get("key_prompts", [])
        keys = key_rows.get(edit_id, [])
        if row["n_keys"] != len(prompts) or [(o, p) for _, o, p in keys] != list(enumerate(prompts)):
            report.problems.append(f"edit {short}: key rows do not match its provenance")
        try:
            tensors = load_safetensors(fetched_bytes(fetched[row["tensors_sha256"]]))
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
    key_ids = [row[0] for row in all_keys]
    if key_ids != list(range(len(key_ids))):
        report.problems.append("edit_keys: key ids are not dense")
    report.checked["edits"] = count
    return referenced


def _created_at(document: dict[str, Any]) -> str | None:
    try:
        return iso(parse_time(document["created_at"]))
    except (KeyError, RegistryError, TypeError):
        return None


def _check_key_vectors(registry: Registry, report: Report, keys_by_id: dict[int, np.ndarray], stored: dict[int, bytes]) -> None:
    """One `key_vectors` row per key id, each byte-identical to the key verified for its edit
    (for older edits: its row in the hash-checked tensors object)."""
    key_ids = [r[0] for r in registry.catalog.scan("edit_keys")[1]]
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


def _check_trees(registry: Registry, report: Report, known_edits: set[str]) -> "_Trees":
    """Every tree against its base: its rows, counts and set hash. By induction from the empty
    tree (level 0, no rows) every stored edit set then hashes to its tree id."""
    digest = registry.config_digest()
    trees = _Trees(registry)
    problems = report.problems
    for tree_id, (base_id, level, tree_sum, n_active, n_tombstones) in trees.info.items():
        short = tree_id[:12]
        if base_id is None:
            if level != 0 or trees.deltas.get(tree_id):
                problems.append(f"tree {short}: has no base but is not the empty tree")
            elif tree_id != tree_id_for(digest, 0) or tree_sum != 0 or n_active or n_tombstones:
                problems.append(f"tree {short}: content does not hash to its id (empty tree)")
            continue
        if base_id not in trees.info:
            problems.append(f"tree {short}: base tree {base_id[:12]} is missing")
            continue
        if trees.info[base_id][1] >= level:
            problems.append(f"tree {short}: base tree {base_id[:12]} is not below it (a cycle?)")
            continue
        base = trees.info[base_id]
        total, active, tombstones = base[2], base[3], base[4]
        for edit_id, state in trees.deltas.get(tree_id, {}).items():
            if state not in (ACTIVE, TOMBSTONE, ABSENT):
                problems.append(f"tree {short}: edit {edit_id[:12]} has unknown state {state!r}")
                continue
            if state is not ABSENT and edit_id not in known_edits:
                problems.append(f"tree {short}: refers to missing edit {edit_id[:12]}")
            old = trees.state(base_id, edit_id)
            total = (total - member_term(edit_id, old) + member_term(edit_id, state)) % MODULUS
            active += (state == ACTIVE) - (old == ACTIVE)
            tombstones += (state == TOMBSTONE) - (old == TOMBSTONE)
        if (total, active, tombstones) != (tree_sum, n_active, n_tombstones) or tree_id != tree_id_for(digest, total):
            problems.append(f"tree {short}: content does not hash to its id (tampered tree row?)")
    report.checked["trees"] = len(trees.info)
    return trees


class _Trees:
    """Tree rows as read by verify, with each edit's state looked up along a base chain."""

    def __init__(self, registry: Registry) -> None:
        _, rows = registry.catalog.scan("trees")
        self.info = {r[0]: (r[1], int(r[2]), int(r[3], 16), int(r[4]), int(r[5])) for r in rows}
        self.deltas: dict[str, dict[str, str | None]] = {}
        for tree_id, edit_id, state in registry.catalog.scan("tree_members")[1]:
            self.deltas.setdefault(tree_id, {})[edit_id] = None if state == "absent" else state
        self._chains: dict[str, list[str]] = {}

    def chain(self, tree_id: str) -> list[str]:
        if tree_id not in self._chains:
            chain, current = [], tree_id
            while current is not None and current in self.info and len(chain) <= 80:
                chain.append(current)
                current = self.info[current][0]
            self._chains[tree_id] = chain
        return self._chains[tree_id]

    def state(self, tree_id: str, edit_id: str) -> str | None:
        for tree in self.chain(tree_id):
            delta = self.deltas.get(tree)
            if delta and edit_id in delta:
                return delta[edit_id]
        return None


def _check_commits(registry: Registry, report: Report, known_edits: set[str], trees: _Trees) -> list[Commit]:
    """Every commit: its id, its parents (present, written before it), and its tree = its first
    parent's tree with its changes applied."""
    commits = registry.all_commits()
    by_id = {c.commit_id: c for c in commits}
    changes_by_commit = registry.catalog.all_changes()
    _, parent_rows = registry.catalog.scan("commit_parents")
    stray = set(changes_by_commit) - set(by_id)
    if stray:
        report.problems.append(f"{len(stray)} change row(s) belong to no commit")
    if {r[0] for r in parent_rows} - set(by_id):
        report.problems.append("commit_parents: rows belong to no commit")
    _check_commit_mirrors(registry, report, by_id)
    empty = tree_id_for(registry.config_digest(), 0)
    for commit in commits:
        short = commit.commit_id[:12]
        changes = changes_by_commit.get(commit.commit_id, [])
        if commit_id_of(commit, changes) != commit.commit_id:
            report.problems.append(f"commit {short}: content does not hash to its id (edited row?)")
        missing = [p for p in commit.parents if p not in by_id]
        if missing:
            report.problems.append(f"commit {short}: parent {missing[0][:12]} does not exist")
            continue
        if any(by_id[p].seq >= commit.seq for p in commit.parents):
            report.problems.append(f"commit {short}: a parent was written after it (a cycle?)")
            continue
        if commit.tree_id not in trees.info:
            report.problems.append(f"commit {short}: its tree {commit.tree_id[:12]} is missing")
            continue
        tree = trees.info[commit.tree_id]
        if commit.tree_sum != f"{tree[2]:064x}" or commit.n_active != tree[3]:
            report.problems.append(f"commit {short}: its tree summary differs from the tree row")
        for edit_id, _ in changes:
            if edit_id not in known_edits:
                report.problems.append(f"commit {short}: refers to missing edit {edit_id[:12]}")
        if not commit.parents:
            if commit.tree_id != empty or changes:
                report.problems.append(f"commit {short}: a root commit must hold the empty tree")
            continue
        parent_tree = by_id[commit.parent_id].tree_id
        if parent_tree not in trees.info:
            continue
        total = trees.info[parent_tree][2]
        for edit_id, state in changes:
            old = trees.state(parent_tree, edit_id)
            if old == state:
                report.problems.append(f"commit {short}: changes {edit_id[:12]} to the state it already had")
            total = (total - member_term(edit_id, old) + member_term(edit_id, state)) % MODULUS
        if total != tree[2]:
            report.problems.append(f"commit {short}: tree does not match its first parent's tree with its changes")
    report.checked["commits"] = len(commits)
    return commits


def _check_commit_mirrors(registry: Registry, report: Report, by_id: dict[str, Commit]) -> None:
    """Columns that repeat what the hashed records hold: `commits.parent_id` (the first parent
    in `commit_parents`), `commit_changes.seq` (its commit's) and `.active` (state 'active').
    `commits.seq` of a format-2 commit is this registry's write order and hashed nowhere; a
    parent must come before its child (checked with the parents)."""
    columns, rows = registry.catalog.scan("commits")
    for values in rows:
        row = dict(zip(columns, values))
        commit = by_id.get(row["commit_id"])
        if commit is not None and row["parent_id"] != commit.parent_id:
            report.problems.append(f"commit {commit.commit_id[:12]}: row field 'parent_id' differs from its first parent")
    columns, rows = registry.catalog.scan("commit_changes")
    wrong: dict[str, str] = {}
    for values in rows:
        row = dict(zip(columns, values))
        commit = by_id.get(row["commit_id"])
        if commit is None:
            continue  # reported as a change row of no commit
        if row["seq"] != commit.seq:
            wrong.setdefault(commit.commit_id, "seq")
        if row["active"] != (row["state"] == ACTIVE):
            wrong.setdefault(commit.commit_id, "active")
    for commit_id, name in wrong.items():
        report.problems.append(f"commit {commit_id[:12]}: change row field {name!r} differs from its commit")


def _check_reflog_chain(registry: Registry, report: Report, entries: list[RefEntry]) -> list[tuple[int, str]]:
    """Each ref log entry hashes to its `entry_hash` and names the entry before it (in id
    order, all refs together) as `prev_hash`; returns (entry id, hash) of the chain recomputed
    from the first entry, which is what checkpoints are compared with."""
    problems: list[str] = []
    try:
        registry_id = registry.catalog.registry_id()
    except RuntimeError as error:
        report.problems.append(f"ref log: cannot be checked ({error})")
        return []
    chain: list[tuple[int, str]] = []
    previous = None
    recomputed: str | None = None
    for entry in entries:
        label = f"ref log entry {entry.id} ({entry.ref} at {iso(entry.time)} by {entry.actor})"
        fields = (entry.id, entry.ref, entry.kind, entry.old_commit, entry.new_commit, entry.actor, entry.time, entry.reason)
        own = reflog_entry_hash(registry_id, entry.prev_hash, *fields)
        if entry.entry_hash is None or entry.kind is None:
            problems.append(f"{label}: is not chained (no hash): it was added behind sola's back")
        elif own != entry.entry_hash:
            problems.append(f"{label}: content does not hash to its entry hash (its time, actor, reason, ref or commits were changed)")
        expected_prev = previous.entry_hash if previous is not None else None
        if entry.prev_hash != expected_prev:
            if previous is None:
                problems.append(f"{label}: is the first entry but names a previous one (the entries before it were removed)")
            else:
                gap = f"; ids jump from {previous.id} to {entry.id}" if entry.id != previous.id + 1 else ""
                problems.append(f"{label}: does not follow ref log entry {previous.id} "
                                f"(an entry between them was removed or inserted, or entry {previous.id} was changed{gap})")
        recomputed = own if entry.prev_hash == recomputed else reflog_entry_hash(registry_id, recomputed, *fields)
        chain.append((entry.id, recomputed))
        previous = entry
    report.problems.extend(problems[:10])
    if len(problems) > 10:
        report.problems.append(f"ref log: {len(problems) - 10} more broken link(s)")
    report.checked["reflog"] = len(chain)
    return chain


def _check_refs(registry: Registry, report: Report, commits: list[Commit], entries: list[RefEntry]) -> None:
    """Every ref and ref log entry points at a commit; each ref's log is an unbroken chain that
    ends where the ref is (or, for a deleted branch, in its deletion); a tag's log is its
    creation alone (tags never move and are never deleted), and each ref is the kind its log
    made it."""
    ids = {c.commit_id for c in commits}
    refs = {name: (kind, commit_id) for name, kind, commit_id in registry.catalog.refs()}
    logs: dict[str, list] = {}
    for entry in entries:
        logs.setdefault(entry.ref, []).append(entry)
        for commit_id in (entry.old_commit, entry.new_commit):
            if commit_id is not None and commit_id not in ids:
                report.problems.append(f"ref log entry {entry.id} ({entry.ref}): points at missing commit {commit_id[:12]}")
    for name, (kind, commit_id) in refs.items():
        if commit_id not in ids:
            report.problems.append(f"ref {name}: points at missing commit {commit_id[:12]}")
        log = logs.get(name, [])
        if not log or log[-1].new_commit != commit_id:
            report.problems.append(f"ref {name}: ref log does not end at the ref's commit")
        if log and log[-1].kind is not None and log[-1].kind != kind:
            report.problems.append(f"ref {name}: is a {kind} but its ref log made it a {log[-1].kind}")
    for name, log in logs.items():
        for previous, entry in zip(log[:-1], log[1:]):
            if entry.old_commit != previous.new_commit:
                report.problems.append(f"ref {name}: ref log chain is broken")
                break
        for position, entry in enumerate(log):
            if entry.kind == "tag" and (entry.old_commit is not None or position + 1 < len(log)):
                report.problems.append(f"tag {name}: moved or deleted after creation (tags are immutable)")
                break
        if name not in refs and log[-1].new_commit is not None:
            if log[-1].kind == "tag":
                report.problems.append(f"tag {name}: deleted (ref log entry {log[-1].id} created it; tags are immutable)")
            else:
                report.problems.append(f"ref {name}: its ref log says it exists but the ref is gone")
    if MAIN not in refs:
        report.problems.append("ref main: missing")
    report.checked["refs"] = len(refs)


def _check_checkpoints(registry: Registry, report: Report, chain: list[tuple[int, str]], checkpoints: list[tuple[str, Any]],
                       public_key: bytes | None) -> None:
    """The ref log extends every checkpoint given (`sola verify --checkpoint`, `--witness`)."""
    if not checkpoints:
        return
    try:
        registry_id = registry.catalog.registry_id()
    except RuntimeError:
        return  # reported with the ref log
    for label, document in checkpoints:
        for problem in checkpoints_module.check(document, registry_id, chain, public_key):
            report.problems.append(f"{label}: {problem}")
    report.checked["checkpoints"] = len(checkpoints)


def _check_witness(registry: Registry, report: Report, chain: list[tuple[int, str]], path: Path) -> None:
    """Every checkpoint line of this registry in a witness file (lines of other registries
    sharing the file are skipped; an unreadable line is a problem: witness files are only
    ever appended to)."""
    try:
        lines = checkpoints_module.read_file(path)
        registry_id = registry.catalog.registry_id()
    except (RegistryError, RuntimeError) as error:
        report.problems.append(f"witness {path}: {error}")
        return
    mine, others, problems = [], 0, []
    for number, document, why in lines:
        if why is not None:
            problems.append(f"witness {path} line {number}: {why}")
        elif isinstance(document, dict) and document.get("registry") not in (None, registry_id):
            others += 1
        else:
            mine.append((f"witness {path} line {number}", document))
    if not mine:
        problems.append(f"witness {path}: holds no checkpoint of this registry")
    if others:
        report.notes.append(f"witness {path}: {others} checkpoint(s) of other registries skipped")
    for label, document in mine:
        problems.extend(f"{label}: {problem}" for problem in checkpoints_module.check(document, registry_id, chain))
    report.problems.extend(problems[:5])
    if len(problems) > 5:
        report.problems.append(f"witness {path}: {len(problems) - 5} more line(s) fail")
    report.checked["witness_checkpoints"] = len(mine)


def _check_caches(registry: Registry, report: Report, keys_by_id: dict[int, np.ndarray]) -> None:
    """Derived caches (key matrix, IVF groups) must agree with the source of truth (or be
    absent: they rebuild). Per-snapshot indexes are not cached on disk: they are rebuilt from
    these two in well under a second.

    `keys_by_id` holds the keys already read and hash-checked from the objects, so the cache
    is compared without reading any object a second time."""
    dim = registry.key_dim()
    meta = registry.key_matrix._meta()
    damage = registry.key_matrix.damage()
    if damage is not None:
        report.problems.append(f"cache: {damage} (delete {registry.root / 'cache'} to rebuild it; nothing else is lost)")
    elif meta["rows"]:
        total = registry.catalog.count("edit_keys")
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
    lists = CoarseLists(registry.root / "cache")
    found = lists.load()
    report.checked["ivf_groups"] = 0 if found is None else len(found[2])
    if found is None:
        if lists.path.exists():
            report.problems.append(f"cache: {lists.path.name} is damaged or unreadable (delete {registry.root / 'cache'} to rebuild it)")
        return
    _, centroids, groups = found
    if centroids.shape[1] != registry.key_dim():
        report.problems.append("cache: ivf.npz centroids do not have the registry's key width (delete cache/ to rebuild)")
        return
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
