"""Content-addressed, write-once object storage: `objects/<2 hex>/<62 hex>` named by sha256.

An object is written to a temporary file, fsynced, and renamed into place, so a reader (or a
crash) never sees a partial object under its final name. Objects are never modified.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


class CorruptObject(Exception):
    """An object's bytes no longer hash to its name, or it is missing."""


def fetched_bytes(found: "bytes | CorruptObject") -> bytes:
    """The bytes of one `get_many` result, raising the CorruptObject it holds instead."""
    if isinstance(found, CorruptObject):
        raise found
    return found


TEMPORARY_PREFIX = ".tmp-"  # what `write_atomically` names a file until it is renamed into place
_HEX = frozenset("0123456789abcdef")


def canonical_json(document: Any) -> bytes:
    """The one byte form of a JSON document: sorted keys, no spaces, UTF-8. NaN and infinities
    are refused: they are not JSON, and a document holding one would not read back elsewhere."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a fsynced temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    fsync_directory(path.parent)


class ObjectStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest[2:]

    def put(self, data: bytes) -> str:
        digest = sha256_hex(data)
        target = self.path(digest)
        if not target.exists():
            write_atomically(target, data)
        return digest

    def describe(self) -> str:
        return str(self.root)

    def check_reachable(self) -> None:
        """A local store is always reachable (a shared one checks its bucket here)."""

    def size(self, path: Path) -> int:
        return os.lstat(path).st_size

    def get(self, digest: str, fresh: bool = False) -> bytes:
        """The object's bytes, checked against its name (a flipped byte is never returned).
        `fresh` matters only for a shared store with a local cache (registry/remote_objects.py)."""
        target = self.path(digest)
        try:
            data = target.read_bytes()
        except FileNotFoundError:
            raise CorruptObject(f"object {digest[:12]} is missing from {self.root} (restore it from a backup; "
                                f"`sola verify` lists every damaged edit)") from None
        if sha256_hex(data) != digest:
            raise CorruptObject(f"object {digest[:12]} is corrupted (content hash mismatch; restore it from a backup)")
        return data

    def put_many(self, blobs: list[bytes]) -> list[str]:
        return [self.put(data) for data in blobs]

    def get_many(self, digests: list[str], fresh: bool = False) -> dict[str, bytes | CorruptObject]:
        """Each digest's checked bytes, or the CorruptObject `get` would raise for it (a shared
        store fetches them concurrently; here they are read one by one)."""
        out: dict[str, bytes | CorruptObject] = {}
        for digest in dict.fromkeys(digests):
            try:
                out[digest] = self.get(digest)
            except CorruptObject as error:
                out[digest] = error
        return out

    def get_json(self, digest: str) -> Any:
        return json.loads(self.get(digest))

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def __iter__(self) -> Iterator[str]:
        for kind, name, _ in self.files():
            if kind == "object":
                yield name

    def files(self) -> Iterator[tuple[str, str, Path]]:
        """Every file under the store as (kind, name, path): "object" (a regular file named by a
        sha256, name = the digest), "temporary" (a `.tmp-*` file an interrupted write left in a
        prefix directory, name = its path under the store) or "other" (anything else, which sola
        did not write and never removes). Symbolic links are "other", never followed."""
        if not self.root.is_dir():
            return
        for prefix in sorted(self.root.iterdir()):
            relative = prefix.name
            if not (len(relative) == 2 and set(relative) <= _HEX and prefix.is_dir() and not prefix.is_symlink()):
                yield "other", relative, prefix
                continue
            for item in sorted(prefix.iterdir()):
                name = f"{relative}/{item.name}"
                regular = item.is_file() and not item.is_symlink()
                if regular and len(item.name) == 62 and set(item.name) <= _HEX:
                    yield "object", relative + item.name, item
                elif regular and item.name.startswith(TEMPORARY_PREFIX):
                    yield "temporary", name, item
                else:
                    yield "other", name, item
