"""Where a registry keeps its catalog and its objects: local files, or shared backends.

A local registry directory holds `registry.duckdb` and `objects/`. A shared one holds only
`storage.json`, naming a PostgreSQL catalog and/or an S3 object store (registry/catalog/
postgres.py, registry/remote_objects.py), plus its derived `cache/`: many directories on many
hosts can point at the same shared registry, each with its own cache. `storage.json` is written
once, atomically, before the catalog is created, and never holds a secret.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.model import RegistryError
from registry.objects import ObjectStore, canonical_json, write_atomically

DATABASE = "registry.duckdb"
STORAGE_FILE = "storage.json"
STORAGE_FORMAT = "sola.storage/1"


@dataclass(frozen=True)
class Storage:
    catalog: str | None = None  # a postgresql:// URL; None: `registry.duckdb` in the directory
    objects: str | None = None  # an s3:// URL; None: `objects/` in the directory

    @property
    def shared(self) -> bool:
        return self.catalog is not None or self.objects is not None

    def check(self) -> "Storage":
        """Parse both URLs (refusing bad ones with the reason) before anything is written."""
        if self.catalog is not None:
            from registry.catalog.postgres import PostgresLocation

            PostgresLocation.parse(self.catalog)
        if self.objects is not None:
            from registry.remote_objects import parse_objects_url

            parse_objects_url(self.objects)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"format": STORAGE_FORMAT, "catalog": self.catalog, "objects": self.objects}


def registry_exists(root: Path) -> bool:
    return (Path(root) / DATABASE).is_file() or (Path(root) / STORAGE_FILE).is_file()


def read_storage(root: Path) -> Storage:
    """The directory's storage: `storage.json` when present, else the local layout."""
    path = Path(root) / STORAGE_FILE
    if not path.is_file():
        return Storage()
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeError, json.JSONDecodeError) as error:
        raise RegistryError(f"{path} is not readable JSON ({type(error).__name__}); restore it (it names the shared catalog and objects)") from None
    if not isinstance(document, dict) or document.get("format") != STORAGE_FORMAT or \
            any(not isinstance(document.get(k), (str, type(None))) for k in ("catalog", "objects")):
        raise RegistryError(f"{path} is not a sola storage file (expected format {STORAGE_FORMAT} with catalog and objects URLs or null)")
    return Storage(document.get("catalog"), document.get("objects")).check()


def write_storage(root: Path, storage: Storage) -> None:
    write_atomically(Path(root) / STORAGE_FILE, canonical_json(storage.to_dict()) + b"\n")


def open_objects(root: Path, storage: Storage) -> Any:
    """The registry's object store: `objects/` or the shared one (with its cache in `cache/objects/`)."""
    if storage.objects is None:
        return ObjectStore(Path(root) / "objects")
    from registry.remote_objects import RemoteObjectStore

    return RemoteObjectStore(storage.objects, Path(root) / "cache" / "objects")


__all__ = ["DATABASE", "STORAGE_FILE", "Storage", "open_objects", "read_storage", "registry_exists", "write_storage"]
