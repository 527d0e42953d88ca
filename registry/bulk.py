"""Bulk loading: many edits' objects written first, then one DuckDB transaction for many commits.

`Registry.store_edit` pays, per edit, two fsynced object writes and one DuckDB transaction of
about a dozen statements (roughly 0.5-2 ms each on a busy 2-core machine; several scan a whole
table), so one-by-one loading runs at ~30 edits/s. That is fine for an interactive `sola edit`
and too slow for an import of 100k edits. `BulkLoader` keeps every invariant of the one-by-one
path and only changes how rows reach DuckDB:

- objects go through the same `ObjectStore.put` (temp file, fsync, rename, directory fsync),
  and all of them are durable before the transaction that refers to them commits;
- every edit, revoke, restore and supersede is still its own commit, in call order. Each
  commit is derived from its parent by `next_commit`, a line-for-line copy of the arithmetic in
  `Registry._append_commit` built on the store's own `commit_record`, `edit_term`,
  `tree_id_for` and `Commit` (so the hash chain, incremental tree sum, n_active, message and
  ref log entry are the ones `store_edit`/`set_active` would write), and each ref move gets its
  own ref log row;
- key ids stay dense and in call order, as `store_edit` assigns them, and each key's
  `key_vectors` copy goes into the same transaction as its `edit_keys` row;
- the rows of a whole batch go in with multi-row INSERTs in one transaction.

`tests/test_bulk.py` checks that a bulk-filled registry passes `registry.verify` and that its
commits carry the same trees, tree sums, ops, messages and changes as the same edits stored one
by one (only times, and therefore commit ids, differ, as between any two runs). A failed flush
rolls its whole batch back; the batch's objects stay behind as unreferenced objects, which
`verify` reports as harmless, exactly like an interrupted edit. Duplicate edits within a batch
are refused at `add`; duplicates of edits already in the registry are refused at `flush`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from registry.db import insert_rows
from registry.store import (
    _COMMIT_COLUMNS,
    MAIN,
    Commit,
    Registry,
    RegistryError,
    next_commit,
    tombstone_changes,
)

@dataclass
class _Pending:
    op: str  # add | supersede | revoke | restore
    changes: list[tuple[str, bool]]
    author: str
    message: str
    reason: str | None
    edit_row: list[Any] | None = None  # the `edits` row for add/supersede
    key_prompts: list[str] | None = None
    key_vectors: list[bytes] | None = None  # the `key_vectors` copies of its key rows


class BulkLoader:
    """Queue edits and state changes; `flush` records them as consecutive commits in one transaction.

    Use as a context manager (flushes on a clean exit, discards the queue on an exception) or
    call `flush()` yourself; with `batch` set, `add`/`set_active` flush every `batch` commits.
    """

    def __init__(self, registry: Registry, batch: int | None = 1000) -> None:
        if not registry.writable:
            raise RegistryError("registry opened read-only")
        self.registry = registry
        self.batch = batch
        self._queue: list[_Pending] = []
        self._state: dict[str, bool] = {}  # edit id -> active, for edits touched by queued commits
        self._rows: dict[str, tuple[str, str]] = {}  # queued edit id -> (prompt, target)
        self.commits: list[Commit] = []  # every commit made by this loader, in order

    # --- queueing ------------------------------------------------------------------------------
    def is_active(self, edit_id: str) -> bool:
        if edit_id in self._state:
            return self._state[edit_id]
        return self.registry.is_active(edit_id)

    def add(
        self,
        tensors: dict[str, np.ndarray],
        provenance: dict[str, Any],
        key_prompts: list[str],
        author: str,
        message: str,
        supersede: Iterable[str] = (),
    ) -> str:
        """Same arguments and checks as `Registry.store_edit`; returns the edit id (commit comes at flush)."""
        edit_id, row, document, key_blobs = self.registry.write_edit_objects(tensors, provenance, key_prompts, author)
        if edit_id in self._rows:  # against the registry: checked for the whole batch at flush
            raise RegistryError(f"edit {edit_id[:12]} already exists")
        superseded = list(supersede)
        for old in superseded:
            if not self.is_active(old):
                raise RegistryError(f"cannot supersede {old[:12]}: it is not active")
        changes = [(old, False) for old in superseded] + [(edit_id, True)]
        op = "supersede" if superseded else "add"
        self._queue.append(_Pending(op, changes, author, message, document.get("reason"), row, list(key_prompts), key_blobs))
        self._rows[edit_id] = (document["prompt"], document["target"])
        for edit, active in changes:
            self._state[edit] = active
        self._maybe_flush()
        return edit_id

    def set_active(self, edit_id: str, active: bool, author: str, reason: str) -> None:
        """Same checks and commit message as `Registry.set_active`."""
        if not reason or not reason.strip():
            raise RegistryError("a reason is required")
        if self.is_active(edit_id) == active:
            raise RegistryError(f"edit {edit_id[:12]} is already {'active' if active else 'revoked'}")
        if edit_id in self._rows:
            prompt, target = self._rows[edit_id]
        else:
            row = self.registry.edit_row(edit_id)
            prompt, target = row["prompt"], row["target"]
        op = "restore" if active else "revoke"
        message = f"{op} {edit_id[:12]}: {prompt} -> {target}"
        self._queue.append(_Pending(op, [(edit_id, active)], author, message, reason))
        self._state[edit_id] = active
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
        registry, db = self.registry, self.registry.db
        try:
            fresh = [p.edit_row[0] for p in queue if p.edit_row is not None]
            for start in range(0, len(fresh), 500):
                chunk = fresh[start : start + 500]
                clash = db.execute(f"SELECT edit_id FROM edits WHERE edit_id IN ({', '.join('?' * len(chunk))}) LIMIT 1", chunk).fetchone()
                if clash:
                    raise RegistryError(f"edit {clash[0][:12]} already exists")
            with registry.transaction():
                made = self._record(queue)
        finally:
            self._state.clear()
            self._rows.clear()
        self.commits.extend(made)
        return made

    def _record(self, queue: list[_Pending]) -> list[Commit]:
        """The rows `store_edit`/`set_active` would insert, for every queued commit, in call order."""
        registry, db = self.registry, self.registry.db
        row = db.execute(f"SELECT {_COMMIT_COLUMNS} FROM commits ORDER BY seq DESC LIMIT 1").fetchone()
        parent = registry._commit_from_row(row) if row else None
        digest = registry.config_digest()
        next_key = db.execute("SELECT coalesce(max(key_id), -1) + 1 FROM edit_keys").fetchone()[0]
        next_log = db.execute("SELECT coalesce(max(id), -1) + 1 FROM reflog").fetchone()[0]
        main = db.execute("SELECT commit_id FROM refs WHERE name = ?", [MAIN]).fetchone()
        old_ref = main[0] if main else None
        edit_rows, key_rows, vector_rows, commit_rows, change_rows, log_rows, made = [], [], [], [], [], [], []
        enabled = registry.tombstones
        tombstoned: dict[str, bool] = {}  # edit id -> tombstoned, for edits this batch revoked or restored

        def is_tombstoned(edit_id: str) -> bool:
            return tombstoned[edit_id] if edit_id in tombstoned else registry.is_tombstoned(edit_id)

        for pending in queue:
            if pending.edit_row is not None:
                edit_rows.append(pending.edit_row)
                for ordinal, (text, vector) in enumerate(zip(pending.key_prompts or [], pending.key_vectors or [])):
                    key_rows.append([next_key, pending.edit_row[0], ordinal, text])
                    vector_rows.append([next_key, vector])
                    next_key += 1
            tombstones = tombstone_changes(pending.op, pending.changes, enabled, is_tombstoned)
            tombstoned.update(tombstones)
            commit = next_commit(parent, digest, pending.changes, pending.author, pending.op, pending.message, pending.reason, tombstones)
            commit_rows.append([getattr(commit, name) for name in _COMMIT_COLUMNS.split(", ")])
            change_rows.extend([commit.commit_id, commit.seq, edit_id, active] for edit_id, active in pending.changes)
            log_rows.append([next_log, MAIN, old_ref, commit.commit_id, pending.author, commit.time, f"{pending.op}: {pending.message}"])
            next_log, old_ref = next_log + 1, commit.commit_id
            made.append(commit)
            parent = commit
        insert_rows(db, "edits", edit_rows)
        insert_rows(db, "edit_keys", key_rows)
        insert_rows(db, "key_vectors", vector_rows)
        insert_rows(db, "commits", commit_rows, _COMMIT_COLUMNS)
        insert_rows(db, "commit_changes", change_rows)
        if main is None:
            db.execute("INSERT INTO refs VALUES (?, ?, ?)", [MAIN, "branch", made[-1].commit_id])
        else:
            db.execute("UPDATE refs SET commit_id = ? WHERE name = ?", [made[-1].commit_id, MAIN])
        insert_rows(db, "reflog", log_rows)
        return made

    def discard(self) -> None:
        """Drop queued work (its objects stay as unreferenced objects, like an interrupted edit)."""
        self._queue.clear()
        self._state.clear()
        self._rows.clear()

    def __enter__(self) -> "BulkLoader":
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.flush()
        else:
            self.discard()


__all__ = ["BulkLoader"]
