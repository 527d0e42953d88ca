"""The records of a registry's history: commits with parents, trees as edit sets, and their hashes.

A **tree** is the edit set a model snapshot routes by: each member edit has a state, `active`
(its LoRA fires) or `tombstone` (a revoked edit whose keys keep their inputs and send them to
the base model). Its id hashes the base model and routing config together with the set, summed
additively (sha256 terms mod 2^256), so any tree is derived from another in O(changes) and two
revisions with the same content share one tree id whatever path led to them.

A **commit** points at a tree and lists its parents (none for init, one usually, two for a
merge); its `changes` are the edits whose state differs from its first parent's tree. Its id is
the sha256 of its canonical record. Commits written before edit sets (format 1) hashed their
global position `seq` and their one parent; they keep their ids and are checked as written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Mapping

from registry.objects import canonical_json, sha256_hex

MODULUS = 1 << 256
MAIN = "main"
ACTIVE, TOMBSTONE, ABSENT = "active", "tombstone", None  # the states an edit can have in a tree
STATES = (ACTIVE, TOMBSTONE)
COMMIT_FORMAT = 2  # records with a parent list; format 1 hashed `seq` and one `parent`

State = str | None
Changes = list[tuple[str, State]]


class RegistryError(Exception):
    """A user-facing failure: unknown revision, bad state transition, wrong registry path."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """ISO 8601; a time without zone is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        raise RegistryError(f"not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


# --- tree identity --------------------------------------------------------------------------------
def member_term(edit_id: str, state: State) -> int:
    """An edit's contribution to its tree's set hash (0 when absent)."""
    if state is ABSENT:
        return 0
    tag = b"sola-edit\0" if state == ACTIVE else b"sola-tombstone\0"
    return int(hashlib.sha256(tag + edit_id.encode()).hexdigest(), 16)


def tree_id_for(config_digest: str, set_sum: int) -> str:
    return sha256_hex(b"sola-tree\0" + config_digest.encode() + b"\0" + f"{set_sum:064x}".encode())


@dataclass(frozen=True)
class TreeSummary:
    """What a tree's row records besides its members: set hash and counts."""

    tree_id: str
    tree_sum: int
    n_active: int
    n_tombstones: int

    def changed(self, config_digest: str, transitions: list[tuple[str, State, State]]) -> "TreeSummary":
        """The summary after (edit, old state, new state) transitions, in O(transitions)."""
        total, active, tombstones = self.tree_sum, self.n_active, self.n_tombstones
        for edit_id, old, new in transitions:
            total = (total - member_term(edit_id, old) + member_term(edit_id, new)) % MODULUS
            active += (new == ACTIVE) - (old == ACTIVE)
            tombstones += (new == TOMBSTONE) - (old == TOMBSTONE)
        return TreeSummary(tree_id_for(config_digest, total), total, active, tombstones)

    @classmethod
    def empty(cls, config_digest: str) -> "TreeSummary":
        return cls(tree_id_for(config_digest, 0), 0, 0, 0)

    @classmethod
    def of(cls, config_digest: str, members: Mapping[str, str]) -> "TreeSummary":
        return cls.empty(config_digest).changed(config_digest, [(e, ABSENT, s) for e, s in members.items()])


# --- commits --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Commit:
    commit_id: str
    seq: int  # position in this registry's write order (not part of a format-2 id)
    parents: tuple[str, ...]
    tree_id: str
    tree_sum: str
    n_active: int
    author: str
    time: datetime
    op: str
    message: str
    reason: str | None
    format: int = COMMIT_FORMAT

    @property
    def parent_id(self) -> str | None:
        """The first parent: the branch this commit continues (`REV~1`)."""
        return self.parents[0] if self.parents else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "commit": self.commit_id,
            "seq": self.seq,
            "parent": self.parent_id,
            "parents": list(self.parents),
            "tree": self.tree_id,
            "active_edits": self.n_active,
            "author": self.author,
            "time": iso(self.time),
            "op": self.op,
            "message": self.message,
            "reason": self.reason,
        }


def commit_record(commit: Commit, changes: Changes) -> dict[str, Any]:
    """The hashed content of a commit; its id is sha256 of this record's canonical JSON."""
    if commit.format == 1:
        return {
            "parent": commit.parent_id,
            "seq": commit.seq,
            "tree": commit.tree_id,
            "author": commit.author,
            "time": iso(commit.time),
            "op": commit.op,
            "message": commit.message,
            "reason": commit.reason,
            "changes": [[edit_id, state == ACTIVE] for edit_id, state in changes],
        }
    return {
        "format": "sola.commit/2",
        "parents": list(commit.parents),
        "tree": commit.tree_id,
        "author": commit.author,
        "time": iso(commit.time),
        "op": commit.op,
        "message": commit.message,
        "reason": commit.reason,
        "changes": [[edit_id, state] for edit_id, state in changes],
    }


def commit_id_of(commit: Commit, changes: Changes) -> str:
    return sha256_hex(canonical_json(commit_record(commit, changes)))


def new_commit(parents: list[str], tree: TreeSummary, changes: Changes, author: str, op: str, message: str,
               reason: str | None, seq: int, moment: datetime | None = None) -> Commit:
    draft = Commit("", seq, tuple(parents), tree.tree_id, f"{tree.tree_sum:064x}", tree.n_active, author,
                   moment or utcnow(), op, message, reason, COMMIT_FORMAT)
    return replace(draft, commit_id=commit_id_of(draft, changes))


@dataclass(frozen=True)
class RefEntry:
    """One ref move in the ref log (`new_commit` None: the branch was deleted).

    The ref log is one hash chain over all refs in id order: each entry records `prev_hash`,
    the `entry_hash` of the entry before it (None for the first), and its own `entry_hash`
    (`reflog_entry_hash`), so an entry changed, removed or inserted behind sola's back breaks
    the chain at that point (`sola verify`), and a checkpoint of the head hash pins everything
    before it (registry/checkpoint.py)."""

    id: int
    ref: str
    old_commit: str | None
    new_commit: str | None
    actor: str
    time: datetime
    reason: str
    kind: str | None = None  # branch | tag: what the move made the ref
    prev_hash: str | None = None
    entry_hash: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "old": self.old_commit, "new": self.new_commit, "actor": self.actor,
                "time": iso(self.time), "reason": self.reason}


REFLOG_FORMAT = "sola.reflog/1"


def reflog_record(registry_id: str, prev_hash: str | None, entry_id: int, ref: str, kind: str, old: str | None,
                  new: str | None, actor: str, moment: datetime, reason: str) -> dict[str, Any]:
    """The hashed content of a ref log entry. `registry_id` (the id of the registry's init
    commit) ties the chain to one registry, `prev_hash` to everything written before it."""
    return {"format": REFLOG_FORMAT, "registry": registry_id, "prev": prev_hash, "id": int(entry_id), "ref": ref,
            "kind": kind, "old": old, "new": new, "actor": actor, "time": iso(moment), "reason": reason}


def reflog_entry_hash(registry_id: str, prev_hash: str | None, entry_id: int, ref: str, kind: str, old: str | None,
                      new: str | None, actor: str, moment: datetime, reason: str) -> str:
    return sha256_hex(canonical_json(reflog_record(registry_id, prev_hash, entry_id, ref, kind, old, new, actor, moment, reason)))


@dataclass(frozen=True)
class Review:
    """An approval (or rejection) of a source branch's head for merging into a target branch."""

    id: int
    source: str
    source_commit: str
    target: str
    author: str
    verdict: str  # approve | reject
    reason: str | None
    time: datetime

    def to_dict(self, current_source_head: str | None = None) -> dict[str, Any]:
        document = {"review": self.id, "source": self.source, "source_commit": self.source_commit, "target": self.target,
                    "author": self.author, "verdict": self.verdict, "reason": self.reason, "time": iso(self.time)}
        if current_source_head is not None:
            document["stale"] = current_source_head != self.source_commit
        return document


@dataclass
class TreeDelta:
    """How a tree is stored: its members that differ from its base tree (state None: absent there).

    Bases follow the skip-delta rule (Subversion's FSFS): a tree at level L is stored against its
    derivation ancestor at level L with the lowest set bit cleared, so reading any tree applies at
    most log2(L) deltas and the deltas of a history of n trees hold O(n log n) rows in all."""

    tree_id: str
    base_id: str | None
    level: int
    summary: TreeSummary
    members: dict[str, State] = field(default_factory=dict)


def skip_base_level(level: int) -> int:
    return level & (level - 1)


__all__ = ["Commit", "RegistryError", "TreeSummary", "TreeDelta", "RefEntry", "Review", "MAIN", "ACTIVE", "TOMBSTONE",
           "ABSENT", "commit_record", "new_commit", "reflog_record", "reflog_entry_hash", "tree_id_for", "member_term", "iso", "parse_time", "utcnow"]
