"""Copy a registry to other storage (local <-> PostgreSQL + S3) with every id unchanged.

`sola migrate-storage` makes a new registry directory whose catalog and objects live where the
user says, and copies into it every row of every catalog table, verbatim, and every object the
rows point at, each checked against its name on both sides (read from the source; read back from
the copy by its verify). Nothing is recomputed, so commit,
tree, edit and tag ids and the ref log chain are the source's own; the copy is then verified in
full (`registry.verify`) and compared with the source (commits, refs, ref log head).

The source is opened for writing only to hold its writer lock: no commit can land half-way
through the copy. The source is never changed. A copy interrupted at any point leaves nothing
that opens as a registry: the rows go in one transaction, a local catalog is built under a
temporary name and renamed into place, and `storage.json` is written last.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from registry.catalog.duckdb import DuckDBCatalog
from registry.catalog.postgres import PostgresCatalog, PostgresLocation
from registry.catalog.sql import TABLES
from registry.model import RegistryError
from registry.objects import fetched_bytes
from registry.storage import DATABASE, Storage, open_objects, registry_exists, write_storage
from registry.store import Registry, backfills
from registry.verify import referenced_objects, verify

Progress = Callable[[str, int, int], None]
PARTIAL = DATABASE + ".partial"


def _summary(registry: Registry) -> dict[str, Any]:
    """What must be identical after a copy: every commit id, every ref, the ref log head."""
    count, head = registry.catalog.reflog_head()
    return {"commits": sorted(c.commit_id for c in registry.all_commits()), "refs": registry.catalog.refs(),
            "reflog": (count, head)}


_OBJECT_CHUNK = 64


def _copy(source: Registry, catalog: Any, objects: Any, progress: Progress | None) -> tuple[int, list[str], int]:
    """Every referenced object (checked on both sides), then every row in one transaction."""
    if catalog.latest_version() != source.catalog.schema_version():
        raise RegistryError(f"schema versions differ (source {source.catalog.schema_version()}, target {catalog.latest_version()})")
    names = sorted(referenced_objects(source))
    copied = 0
    for start in range(0, len(names), _OBJECT_CHUNK):  # a chunk at a time: concurrent GETs and PUTs on S3
        chunk = names[start : start + _OBJECT_CHUNK]
        found = source.objects.get_many(chunk, fresh=True)  # each checked against its name
        blobs = [fetched_bytes(found[d]) for d in chunk]
        objects.put_many(blobs)  # read back and re-hashed by the verify of the copy below
        copied += sum(len(b) for b in blobs)
        if progress:
            progress("objects", start + len(chunk), len(names))
    rows = 0
    with catalog.transaction():
        for step, table in enumerate(TABLES):
            columns, values = source.catalog.scan(table)
            rows += catalog.insert_scanned(table, columns, values)
            if progress:
                progress("catalog tables", step + 1, len(TABLES))
    return rows, names, copied


def migrate_storage(source: Registry, target_root: Path, storage: Storage, progress: Progress | None = None) -> dict[str, Any]:
    """Copy `source` (opened writable, for its lock) into a new registry at `target_root` on
    `storage`; returns what was copied and the verification of the copy."""
    if not source.writable:
        raise RegistryError("migrate-storage holds the source's writer lock: open it writable")
    target_root = Path(target_root)
    if registry_exists(target_root) or (target_root / PARTIAL).exists():
        raise RegistryError(f"a registry (or an interrupted copy, {PARTIAL}) already exists at {target_root}")
    if target_root.resolve() == Path(source.root).resolve():
        raise RegistryError("the target directory is the source's; name a new directory")
    storage.check()
    started = time.monotonic()
    created = not target_root.exists()  # a failed copy removes the directory only if this call made it
    objects = open_objects(target_root, storage)
    objects.check_reachable()
    if storage.catalog is not None:
        catalog: Any = PostgresCatalog.create(PostgresLocation.parse(storage.catalog))
    else:
        target_root.mkdir(parents=True, exist_ok=True)
        catalog = DuckDBCatalog.create(target_root / PARTIAL, backfills(objects))
    try:
        rows, names, copied = _copy(source, catalog, objects, progress)
    except BaseException:
        catalog.close()  # a Postgres copy rolls back; shared objects already written stay, unreferenced
        if created:
            shutil.rmtree(target_root, ignore_errors=True)
        else:
            for leftover in (target_root / PARTIAL, target_root / (PARTIAL + ".wal")):
                leftover.unlink(missing_ok=True)
        raise
    catalog.close()
    if storage.catalog is None:
        os.replace(target_root / PARTIAL, target_root / DATABASE)
    if storage.shared:
        write_storage(target_root, storage)

    with Registry.open(target_root) as copy:
        report = verify(copy)
        expected = _summary(source)
        same = _summary(copy) == expected
    if not same:
        report.problems.append("the copy's commits, refs or ref log head differ from the source's")
    return {"from": str(source.root), "to": str(target_root), "catalog": storage.catalog or str(target_root / DATABASE),
            "objects": objects.describe(), "tables": len(TABLES), "rows": rows, "objects_copied": len(names),
            "bytes_copied": copied, "commits": len(expected["commits"]), "ids_unchanged": same,
            "verify": {"ok": report.ok and same, "problems": report.problems}, "seconds": round(time.monotonic() - started, 3)}


__all__ = ["migrate_storage"]
