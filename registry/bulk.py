"""Bulk loading: many edits' objects written first, then one transaction for many commits.

`Registry.store_edit` pays, per edit, two fsynced object writes and one catalog transaction of
about a dozen statements, so one-by-one loading runs at ~30 edits/s: fine for an interactive
`sola edit`, too slow for an import of 100k edits. `BulkLoader` keeps every invariant of the
one-by-one path and only changes how rows reach the catalog:

- objects go through the same `ObjectStore.put` (temp file, fsync, rename, directory fsync),
  and all of them are durable before the transaction that refers to them commits;
- every edit, revoke, restore and supersede is still its own commit on the branch, in call
  order, built by the same `new_commit` over trees derived by the same `TreeStore` (kept in
  memory for the batch), with its own ref log entry;
- key ids stay dense and in call order, each key's vector in the same transaction as its row.

`tests/test_bulk.py` checks that a bulk-filled registry passes `verify` and that its commits
carry the same trees, ops, messages and changes as the same edits stored one by one. A failed
flush rolls its whole batch back; its objects stay behind as unreferenced objects, which
`verify` reports as harmless, exactly like an interrupted edit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from registry.model import ABSENT, ACTIVE, MAIN, Commit, RegistryError, State, new_commit
from registry.store import Registry


@dataclass
class _Pending:
    op: str  # add | supersede | revoke | restore
    changes: dict[str, State]
    author: str
    message: str
    reason: str | None
    edit_row: list[Any] | None = None  # the `edits` row for add/supersede
    keys: tuple[str, list[str], list[bytes]] | None = None  # (edit id, key prompts, key vectors)


@dataclass
class BulkLoader:
    """Queue edits and state changes on one branch; `flush` records them as consecutive commits.

    Use as a context manager (flushes on a clean exit, discards the queue on an exception) or
    call `flush()` yourself; with `batch` set, `add`/`set_active` flush every `batch` commits."""

    registry: Registry
    batch: int | None = 1000
    branch: str = MAIN
    commits: list[Commit] = field(default_factory=list)  # every commit made by this loader, in order
    _queue: list[_Pending] = field(default_factory=list)
    _state: dict[str, State] = field(default_factory=dict)  # edit id -> state, for edits touched by queued commits
    _facts: dict[str, tuple[str, str]] = field(default_factory=dict)  # queued edit id -> (prompt, target)

    def __post_init__(self) -> None:
        if not self.registry.writable:
            raise RegistryError("registry opened read-only")
        self.registry.check_direct_write(self.branch)

    # --- queueing ------------------------------------------------------------------------------
    def state(self, edit_id: str) -> State:
        if edit_id in self._state:
            return self._state[edit_id]
        return self.registry.edit_state(edit_id, self.registry.branch_head(self.branch))

    def is_active(self, edit_id: str) -> bool:
        return self.state(edit_id) == ACTIVE

    def add(self, tensors: dict[str, np.ndarray], provenance: dict[str, Any], key_prompts: list[str], author: str,
            message: str, supersede: Iterable[str] = ()) -> str:
        """Same arguments and checks as `Registry.store_edit`; returns the edit id (commit comes at flush)."""
        edit_id, row, document, key_blobs = self.registry.write_edit_objects(tensors, provenance, key_prompts, author)
        if edit_id in self._facts:  # against the registry: checked for the whole batch at flush
            raise RegistryError(f"edit {edit_id[:12]} already exists")
        superseded = list(supersede)
        for old in superseded:
            if not self.is_active(old):
                raise RegistryError(f"cannot supersede {old[:12]}: it is not active")
        changes: dict[str, State] = {old: ABSENT for old in superseded}
        changes[edit_id] = ACTIVE
        op = "supersede" if superseded else "add"
        self._queue.append(_Pending(op, changes, author, message, document.get("reason"), row, (edit_id, list(key_prompts), key_blobs)))
        self._facts[edit_id] = (document["prompt"], document["target"])
        self._state.update(changes)
        self._maybe_flush()
        return edit_id

    def set_active(self, edit_id: str, active: bool, author: str, reason: str) -> None:
        """Same checks and commit message as `Registry.set_active`."""
        if not reason or not reason.strip():
            raise RegistryError("a reason is required")
        if self.is_active(edit_id) == active:
            raise RegistryError(f"edit {edit_id[:12]} is already {'active' if active else 'revoked'}")
        prompt, target = self._facts.get(edit_id) or (lambda row: (row["prompt"], row["target"]))(self.registry.edit_row(edit_id))
        op = "restore" if active else "revoke"
        new_state = ACTIVE if active else self.registry.revoked_state
        self._queue.append(_Pending(op, {edit_id: new_state}, author, f"{op} {edit_id[:12]}: {prompt} -> {target}", reason))
        self._state[edit_id] = new_state
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if self.batch is not None and len(self._queue) >= self.batch:
            self.flush()

    # --- writing -------------------------------------------------------------------------------
    def flush(self) -> list[Commit]:
        """Record every queued edit and commit in one transaction; returns the new commits."""
        if not self._queue:
            return []
        queue, self._queue = self._queue, []
        registry = self.registry
        try:
            clash = registry.catalog.existing_edit([p.edit_row[0] for p in queue if p.edit_row is not None])
            if clash:
                raise RegistryError(f"edit {clash[:12]} already exists")
            with registry.transaction():
                made = self._record(queue)
        finally:
            self._state.clear()
            self._facts.clear()
        self.commits.extend(made)
        return made

    def _record(self, queue: list[_Pending]) -> list[Commit]:
        registry, catalog, trees = self.registry, self.registry.catalog, self.registry.trees
        head = registry.check_direct_write(self.branch)
        seq = catalog.next_seq()
        made: list[tuple[Commit, list[tuple[str, State]]]] = []
        moves = []
        parent = head
        for pending in queue:
            before = trees.states(parent.tree_id, pending.changes)
            transitions = [(e, s) for e, s in pending.changes.items() if before[e] != s]
            tree = trees.derive(parent.tree_id, dict(transitions))
            commit = new_commit([parent.commit_id], tree, transitions, pending.author, pending.op, pending.message, pending.reason, seq)
            made.append((commit, transitions))
            moves.append((parent.commit_id, commit.commit_id, pending.author, commit.time, f"{pending.op}: {pending.message}"))
            parent, seq = commit, seq + 1
        catalog.insert_edits([p.edit_row for p in queue if p.edit_row is not None], [p.keys for p in queue if p.keys is not None])
        catalog.insert_trees(trees.take_pending())
        catalog.insert_commits(made)
        catalog.move_ref_many(self.branch, "branch", moves)
        return [c for c, _ in made]

    def discard(self) -> None:
        """Drop queued work (its objects stay as unreferenced objects, like an interrupted edit)."""
        self._queue.clear()
        self._state.clear()
        self._facts.clear()

    def __enter__(self) -> "BulkLoader":
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.flush()
        else:
            self.discard()


__all__ = ["BulkLoader"]
