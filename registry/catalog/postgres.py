"""The PostgreSQL catalog: a registry shared by many processes on many hosts.

The queries are the shared ones (registry/catalog/sql.py); this module connects, runs the
Postgres migrations (`migrations/postgres/`) and provides the locking that makes many writers
safe without holding anything during training:

* One registry is one Postgres schema (`?schema=NAME` in the URL, default `sola`).
* A writer takes a session advisory lock on that schema for the moment it commits (what the
  DuckDB file lock is for a local registry: `Workspace.writing()` holds it for one commit, never
  for training). A writer that finds the branch moved meanwhile re-checks its edit against the
  new head (sola/workspace.py) and commits on top of it.
* Every write transaction is SERIALIZABLE, and a ref moves by compare-and-swap on the head the
  writer read inside it (`move_ref`), so two writers can never both move a branch from the same
  head, even without the advisory lock.
* Readers take no lock: each read sees committed rows only (MVCC), so a writer never blocks
  them. A reader's session is read-only (`default_transaction_read_only`).

Passwords never go into the URL (it is stored in the registry's `storage.json`): libpq reads
them from `PGPASSWORD` or `~/.pgpass`.
"""

from __future__ import annotations

import hashlib
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

from registry.catalog.sql import SQLCatalog
from registry.db import RegistryLocked, latest_version, migration_files
from registry.model import RegistryError

MIGRATIONS = "migrations.postgres"
DEFAULT_SCHEMA = "sola"
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_CONNECT_TIMEOUT_SECONDS = 10


@dataclass(frozen=True)
class PostgresLocation:
    """Where a registry's catalog lives: a database and a schema in it. `url` is what the
    registry's `storage.json` records (no password); `conninfo` is what libpq is given."""

    url: str
    conninfo: str
    schema: str
    described: str  # host:port/db schema S, for messages

    @classmethod
    def parse(cls, url: str) -> "PostgresLocation":
        """`postgresql://USER@HOST:PORT/DB[?schema=S]`; anything else is refused with the reason."""
        if not isinstance(url, str) or len(url) > 1000:
            raise RegistryError("--catalog: expected a postgresql:// URL of at most 1000 characters")
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise RegistryError(f"--catalog {url[:80]!r}: expected postgresql://USER@HOST:PORT/DB[?schema=S]")
        if parts.password is not None:
            raise RegistryError("--catalog: the URL must not hold a password (it is stored in storage.json); "
                                "give it to libpq through PGPASSWORD or ~/.pgpass")
        database = unquote(parts.path.lstrip("/"))
        if not database or "/" in database:
            raise RegistryError(f"--catalog {url[:80]!r}: name the database (postgresql://USER@HOST:PORT/DB)")
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"schema"})
        if unknown:
            raise RegistryError(f"--catalog: unknown URL parameter {unknown[0]!r} (only ?schema=NAME is read)")
        schema = query.get("schema", [DEFAULT_SCHEMA])[-1]
        if not _SCHEMA_NAME.fullmatch(schema):
            raise RegistryError(f"--catalog: schema {schema[:80]!r} must be a lower-case SQL name ([a-z_][a-z0-9_]*, at most 63)")
        try:
            port = parts.port
        except ValueError:
            raise RegistryError(f"--catalog {url[:80]!r}: the port is not a number") from None
        host = parts.hostname or "localhost"
        fields = {"dbname": database, "host": host, "port": str(port or 5432), "user": unquote(parts.username or "")}
        conninfo = " ".join(f"{k}='{v}'" for k, v in fields.items() if v and "'" not in v and "\\" not in v)
        clean = f"{parts.scheme}://{parts.netloc}/{parts.path.lstrip('/')}" + (f"?schema={schema}" if "schema" in query else "")
        return cls(clean, conninfo, schema, f"{host}:{port or 5432}/{database} schema {schema}")

    def lock_key(self) -> int:
        """The advisory lock id of this registry's writer lock (a signed 64-bit hash of the schema)."""
        return int.from_bytes(hashlib.sha256(f"sola-writer:{self.schema}".encode()).digest()[:8], "big", signed=True)


def _connect(location: PostgresLocation) -> Any:
    import psycopg

    try:
        connection = psycopg.connect(location.conninfo, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_SECONDS)
    except psycopg.Error as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise RegistryError(f"cannot reach the catalog at {location.described} ({first})") from None
    connection.execute("SET TIME ZONE 'UTC'")
    connection.execute(f"SET search_path TO {location.schema}")  # a checked SQL name (PostgresLocation.parse)
    return connection


def _schema_version(connection: Any, schema: str) -> int:
    exists = connection.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s AND table_name = 'schema_migrations'", [schema]
    ).fetchone()[0]
    if not exists:
        return 0
    return connection.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]


def _migrate(connection: Any, schema: str) -> list[int]:
    """Apply pending Postgres migrations, each in its own transaction with its record."""
    applied = []
    with connection.transaction():
        connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMPTZ NOT NULL)")
    current = _schema_version(connection, schema)
    for version, name, sql in migration_files(MIGRATIONS):
        if version <= current:
            continue
        with connection.transaction():
            connection.execute(sql)
            connection.execute("INSERT INTO schema_migrations VALUES (%s, %s, %s)", [version, name, datetime.now(timezone.utc)])
        applied.append(version)
    return applied


class PostgresCatalog(SQLCatalog):
    def __init__(self, connection: Any, location: PostgresLocation, writable: bool) -> None:
        super().__init__(writable)
        self.db = connection
        self.location = location

    # --- lifecycle ------------------------------------------------------------------------------
    @classmethod
    def create(cls, location: PostgresLocation) -> "PostgresCatalog":
        """A new registry in `location`'s schema (made if missing); refused where one exists."""
        catalog = cls._writer(location, wait_seconds=0.0)
        try:
            catalog.db.execute(f"CREATE SCHEMA IF NOT EXISTS {location.schema}")
            if _schema_version(catalog.db, location.schema) and catalog.db.execute("SELECT count(*) FROM commits").fetchone()[0]:
                raise RegistryError(f"the catalog at {location.described} already holds a registry "
                                    f"(use `sola init --join` to work with it from here)")
            _migrate(catalog.db, location.schema)
        except BaseException:
            catalog.close()
            raise
        return catalog

    @classmethod
    def open(cls, location: PostgresLocation, writable: bool, wait_seconds: float) -> "PostgresCatalog":
        """Open the registry in `location`, upgrading its schema first (under the writer lock)."""
        if writable:
            catalog = cls._writer(location, wait_seconds)
        else:
            catalog = cls(_connect(location), location, writable=False)
        try:
            version = _schema_version(catalog.db, location.schema)
            if version == 0:
                raise RegistryError(f"no registry in the catalog at {location.described} (run `sola init --catalog ...` first)")
            if version < latest_version(MIGRATIONS):
                if writable:
                    _migrate(catalog.db, location.schema)
                else:
                    with cls._writer(location, wait_seconds) as upgrader:
                        _migrate(upgrader.db, location.schema)
            if not writable:
                catalog.db.execute("SET default_transaction_read_only = on")
        except BaseException:
            catalog.close()
            raise
        return catalog

    @classmethod
    def _writer(cls, location: PostgresLocation, wait_seconds: float) -> "PostgresCatalog":
        """A connection holding this registry's writer lock (RegistryLocked after `wait_seconds`)."""
        import psycopg

        connection = _connect(location)
        connection.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        deadline = time.monotonic() + max(wait_seconds, 0.0)
        while not connection.execute("SELECT pg_try_advisory_lock(%s)", [location.lock_key()]).fetchone()[0]:
            if time.monotonic() >= deadline:
                connection.close()
                raise RegistryLocked("registry is locked by another sola writer")
            time.sleep(0.2)
        return cls(connection, location, writable=True)

    def close(self) -> None:
        self.db.close()  # ends the session: its advisory lock goes with it

    def __enter__(self) -> "PostgresCatalog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _execute(self, sql: str, params: list[Any] | tuple = ()) -> Any:
        return self.db.execute(sql.replace("?", "%s"), list(params))

    @contextmanager
    def transaction(self) -> Iterator[None]:
        import psycopg

        try:
            with self.db.transaction():
                yield
        except psycopg.errors.SerializationFailure:
            raise RegistryError("another writer changed the registry during this commit; nothing was written (run it again)") from None

    def schema_version(self) -> int:
        return _schema_version(self.db, self.location.schema)

    def latest_version(self) -> int:
        return latest_version(MIGRATIONS)


__all__ = ["PostgresCatalog", "PostgresLocation"]
