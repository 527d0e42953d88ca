"""The DuckDB catalog: one `registry.duckdb` file, one writing process at a time.

The queries are the shared ones (registry/catalog/sql.py); this module opens the file, runs its
migrations (`migrations/`) and holds the back-fills older registries need. DuckDB allows one
read-write process per file; a second one gets `RegistryLocked` after its wait. Ids that other
engines would take from a sequence (`seq`, key ids, ref log ids) are `max() + 1` under that
file lock.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import duckdb

from registry.catalog.sql import SQLCatalog, state_out
from registry.db import Backfill, connect, latest_version, migrate, schema_version
from registry.model import State


class DuckDBCatalog(SQLCatalog):
    def __init__(self, connection: duckdb.DuckDBPyConnection, writable: bool) -> None:
        super().__init__(writable)
        self.db = connection
        self.db.execute("SET TimeZone = 'UTC'")

    # --- lifecycle ------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path, writable: bool, wait_seconds: float, backfills: Callable[[], dict[int, Backfill]]) -> "DuckDBCatalog":
        """Open the file, upgrading its schema first when it was made by an older release."""
        connection = connect(path, read_only=not writable, wait_seconds=wait_seconds)
        if schema_version(connection) < latest_version():
            if not writable:  # upgrading needs the write lock; reopen briefly as a writer
                connection.close()
                connection = connect(path, read_only=False, wait_seconds=wait_seconds)
                migrate(connection, backfills=backfills())
                connection.close()
                connection = connect(path, read_only=True, wait_seconds=wait_seconds)
            else:
                migrate(connection, backfills=backfills())
        return cls(connection, writable)

    @classmethod
    def create(cls, path: Path, backfills: dict[int, Backfill]) -> "DuckDBCatalog":
        connection = connect(path, read_only=False)
        migrate(connection, backfills=backfills)
        return cls(connection, True)

    def close(self) -> None:
        self.db.close()

    def _execute(self, sql: str, params: list[Any] | tuple = ()) -> duckdb.DuckDBPyConnection:
        return self.db.execute(sql, list(params))

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def schema_version(self) -> int:
        return schema_version(self.db)

    def latest_version(self) -> int:
        return latest_version()


def backfill_edit_sets(connection: duckdb.DuckDBPyConnection, tombstones: bool, digest: str) -> None:
    """Migration 4 for a registry made before edit sets: parents, change states and one tree per
    commit, by replaying the line once, inside the migration's transaction. Commit, edit and
    tree ids do not change (the tree hash was already the additive hash of the same content)."""
    from registry.trees import TreeStore

    if not connection.execute("SELECT count(*) FROM commits").fetchone()[0]:
        return  # a registry being created: its first commit is written by the new code
    connection.execute("INSERT INTO commit_parents SELECT commit_id, 0, parent_id FROM commits WHERE parent_id IS NOT NULL")
    connection.execute(
        """UPDATE commit_changes SET state = CASE WHEN commit_changes.active THEN 'active'
                                                  WHEN ? AND c.op = 'revoke' THEN 'tombstone' ELSE 'absent' END
           FROM commits c WHERE c.commit_id = commit_changes.commit_id""", [tombstones])
    store = TreeStore(digest, lambda tree_id: None)
    by_commit: dict[str, dict[str, State]] = {}
    for commit_id, edit_id, state in connection.execute("SELECT commit_id, edit_id, state FROM commit_changes ORDER BY seq, rowid").fetchall():
        by_commit.setdefault(commit_id, {})[edit_id] = state_out(state)
    tree = store.empty().tree_id
    for commit_id, stored_tree in connection.execute("SELECT commit_id, tree_id FROM commits ORDER BY seq").fetchall():
        tree = store.derive(tree, by_commit.get(commit_id, {})).tree_id
        if tree != stored_tree:
            raise RuntimeError(f"migration 4: replaying commit {commit_id[:12]} gives tree {tree[:12]}, not {stored_tree[:12]}")
    DuckDBCatalog(connection, True).insert_trees(store.take_pending())


def backfill_reflog_chain(connection: duckdb.DuckDBPyConnection) -> None:
    """Migration 5: chain the existing ref log, in id order, inside the migration's transaction.
    An entry's kind is its ref's kind (a ref that no longer exists was a deleted branch: tags
    cannot be deleted)."""
    from registry.model import reflog_entry_hash

    root = connection.execute("SELECT commit_id FROM commits WHERE seq = 0").fetchone()
    rows = connection.execute("SELECT id, ref, old_commit, new_commit, actor, time, reason FROM reflog ORDER BY id").fetchall()
    if root is None or not rows:
        return  # a registry being created: its entries are chained as they are written
    kinds = dict(connection.execute("SELECT name, kind FROM refs").fetchall())
    chained, prev = [], None
    for entry_id, ref, old, new, actor, moment, reason in rows:
        kind = kinds.get(ref, "branch")
        entry_hash = reflog_entry_hash(root[0], prev, entry_id, ref, kind, old, new, actor, moment, reason)
        chained.append([entry_id, kind, prev, entry_hash])
        prev = entry_hash
    connection.execute("CREATE TEMP TABLE reflog_chain (id BIGINT, kind VARCHAR, prev_hash VARCHAR, entry_hash VARCHAR)")
    DuckDBCatalog(connection, True)._insert("reflog_chain", chained)
    connection.execute("""UPDATE reflog SET kind = c.kind, prev_hash = c.prev_hash, entry_hash = c.entry_hash
                          FROM reflog_chain c WHERE c.id = reflog.id""")
    connection.execute("DROP TABLE reflog_chain")


def backfill_key_vectors(connection: duckdb.DuckDBPyConnection, read_object: Callable[[str], bytes]) -> None:
    """Migration 3 for a registry made before it: copy every key out of its (hash-checked)
    tensors object into `key_vectors`, inside the migration's transaction."""
    from registry.store import key_vector_blobs, load_tensors

    rows = connection.execute(
        """SELECT k.key_id, k.ordinal, e.tensors_sha256 FROM edit_keys k JOIN edits e USING (edit_id)
           WHERE k.key_id NOT IN (SELECT key_id FROM key_vectors) ORDER BY e.tensors_sha256, k.ordinal"""
    ).fetchall()
    keys_by_object: dict[str, list[bytes]] = {}
    catalog = DuckDBCatalog(connection, True)
    batch: list[list[Any]] = []
    for key_id, ordinal, sha in rows:
        if sha not in keys_by_object:
            keys_by_object = {sha: key_vector_blobs(load_tensors(read_object(sha)))}
        batch.append([key_id, keys_by_object[sha][ordinal]])
        if len(batch) >= 10_000:
            catalog._insert("key_vectors", batch)
            batch = []
    if batch:
        catalog._insert("key_vectors", batch)


def registry_settings(connection: duckdb.DuckDBPyConnection) -> tuple[bool, str]:
    """(tombstones, config digest) from the stored configuration, for the migration back-fills."""
    from registry.objects import canonical_json, sha256_hex

    values = dict(connection.execute("SELECT name, value FROM registry_config").fetchall())
    if "routing" not in values:
        return False, ""
    routing, base = json.loads(values["routing"]), json.loads(values["base_model"])
    digest = sha256_hex(canonical_json({"base_model": base["sha256"], "routing": routing}))
    return routing.get("revoke_mode", "delete") == "tombstone", digest


__all__ = ["DuckDBCatalog", "backfill_edit_sets", "backfill_key_vectors", "backfill_reflog_chain"]
