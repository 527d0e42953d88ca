"""DuckDB access (and the migration listing both catalogs use): one writer at a time, numbered migrations applied in order and recorded."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Callable, Mapping

import duckdb

Backfill = Callable[[duckdb.DuckDBPyConnection], None]  # data a migration needs from outside SQL (objects)


class RegistryLocked(Exception):
    """Another process holds the registry's write lock."""


def migration_files(package: str = "migrations") -> list[tuple[int, str, str]]:
    """(version, name, sql) for every `NNNN_*.sql` shipped in a migrations package, in order
    (`migrations` for DuckDB, `migrations.postgres` for the Postgres catalog)."""
    found = []
    for entry in resources.files(package).iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def connect(path: Path, read_only: bool, wait_seconds: float = 0.0) -> duckdb.DuckDBPyConnection:
    """Open the database; a lock held by another process becomes RegistryLocked after `wait_seconds`."""
    deadline = time.monotonic() + max(wait_seconds, 0.0)
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as error:
            if "lock" not in str(error).lower():
                raise
            if time.monotonic() >= deadline:
                raise RegistryLocked("registry is locked by another sola process") from None
            time.sleep(0.2)


def schema_version(connection: duckdb.DuckDBPyConnection) -> int:
    """The newest migration applied; 0 for a file without the migrations table (a new one).
    Read on every open, so it asks the table directly (about 1 ms) rather than the
    information schema first (about 8 ms)."""
    try:
        return connection.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
    except duckdb.CatalogException:
        return 0


def migrate(
    connection: duckdb.DuckDBPyConnection, up_to: int | None = None, backfills: Mapping[int, Backfill] | None = None
) -> list[int]:
    """Apply pending migrations, each in its own transaction with its record; returns versions applied.

    `backfills[version]` runs inside that version's transaction after its SQL, for data SQL
    cannot compute (version 3 copies keys out of the objects): the upgrade is all or nothing."""
    connection.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
    )
    current = schema_version(connection)
    applied = []
    for version, name, sql in migration_files():
        if version <= current or (up_to is not None and version > up_to):
            continue
        connection.execute("BEGIN TRANSACTION")
        try:
            connection.execute(sql)
            if backfills and version in backfills:
                backfills[version](connection)
            connection.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, ?)", [version, name, datetime.now(timezone.utc)]
            )
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        applied.append(version)
    return applied


def latest_version(package: str = "migrations") -> int:
    return max(version for version, _, _ in migration_files(package))
