"""Objects on shared storage (S3 and other fsspec filesystems), named by sha256 like local ones.

The layout under the URL's prefix is the local one (`<2 hex>/<62 hex>`), so copying objects
between stores copies names unchanged. Objects are written once and never overwritten: a put
first checks whether the name exists, then writes with S3's conditional create (`If-None-Match:
*`), so two writers racing on one object cannot replace each other's bytes (and the bytes are
the same: the name is their hash). Every read is checked against its name.

Reads go through a local cache under the registry's `cache/objects/` (a serving replica reads
each LoRA once): a cached file is used only while it still hashes to its name, and `sola verify`
bypasses it (`fresh=True`) so that it checks what the shared store holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

from registry.model import RegistryError
from registry.objects import CorruptObject, ObjectStore, fetched_bytes, sha256_hex, write_atomically

_HEX = frozenset("0123456789abcdef")


def parse_objects_url(url: str) -> tuple[str, dict[str, Any]]:
    """(fsspec URL without parameters, filesystem options) from `s3://BUCKET/PREFIX[?endpoint_url=URL]`.
    Credentials never go in the URL: s3fs reads them from the usual AWS variables and files."""
    if not isinstance(url, str) or len(url) > 1000:
        raise RegistryError("--objects: expected an s3:// URL of at most 1000 characters")
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise RegistryError(f"--objects {url[:80]!r}: expected s3://BUCKET/PREFIX (a local registry keeps objects/ without --objects)")
    if parts.username or parts.password:
        raise RegistryError("--objects: the URL must not hold credentials (s3fs reads AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws)")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"endpoint_url"})
    if unknown:
        raise RegistryError(f"--objects: unknown URL parameter {unknown[0]!r} (only ?endpoint_url=URL is read)")
    options: dict[str, Any] = {}
    if "endpoint_url" in query:
        endpoint = query["endpoint_url"][-1]
        if urlsplit(endpoint).scheme not in ("http", "https"):
            raise RegistryError(f"--objects: endpoint_url {endpoint[:80]!r} must be an http(s) URL")
        options["endpoint_url"] = endpoint
    prefix = parts.path.strip("/")
    return f"s3://{parts.netloc}" + (f"/{prefix}" if prefix else ""), options


class RemoteObjectStore:
    """The `ObjectStore` interface over an fsspec filesystem, with a verified local read cache."""

    def __init__(self, url: str, cache_root: Path) -> None:
        import fsspec

        self.url = url
        location, options = parse_objects_url(url)
        self.fs, self.base = fsspec.core.url_to_fs(location, **options)
        self.fs.invalidate_cache()
        self.cache = ObjectStore(cache_root)  # the same layout, local: a cached file is still checked on read

    def path(self, digest: str) -> str:
        return f"{self.base}/{digest[:2]}/{digest[2:]}"

    def describe(self) -> str:
        return self.url.split("?")[0]

    def check_reachable(self) -> None:
        """Fail now, with the reason, when the bucket cannot be listed (wrong name, endpoint or credentials)."""
        bucket = self.base.split("/")[0]
        try:
            self.fs.ls(bucket, refresh=True)
        except Exception as error:  # botocore, aiohttp and fsspec raise many kinds; all mean the same here
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            raise RegistryError(f"cannot reach the object store {self.describe()} ({type(error).__name__}: {first})") from None

    def put(self, data: bytes) -> str:
        digest = sha256_hex(data)
        if not self.exists(digest):
            try:
                self.fs.pipe_file(self.path(digest), data, mode="create")
            except FileExistsError:
                pass  # another writer stored the same bytes first: the name is their hash
        return digest

    def put_many(self, blobs: list[bytes]) -> list[str]:
        """Many puts at once: concurrent conditional creates (`If-None-Match: *`), which the
        store refuses for a name already present; then those are put one by one as in `put`."""
        named = {sha256_hex(data): data for data in blobs}
        try:
            self.fs.pipe({self.path(d): data for d, data in named.items()}, mode="create")
        except FileExistsError:
            for data in named.values():
                self.put(data)
        return list(named)

    def get(self, digest: str, fresh: bool = False) -> bytes:
        """The object's bytes, checked against its name; from the local cache unless `fresh`."""
        return fetched_bytes(self.get_many([digest], fresh)[digest])

    def get_many(self, digests: list[str], fresh: bool = False) -> dict[str, bytes | CorruptObject]:
        """Many objects at once (S3 GETs run concurrently): each digest maps to its checked bytes
        or to the CorruptObject that `get` would raise for it."""
        out: dict[str, bytes | CorruptObject] = {}
        wanted = []
        for digest in dict.fromkeys(digests):
            if not fresh and self.cache.exists(digest):
                try:
                    out[digest] = self.cache.get(digest)
                    continue
                except CorruptObject:
                    pass
            wanted.append(digest)
        fetched = self.fs.cat([self.path(d) for d in wanted], on_error="return") if wanted else {}
        for digest in wanted:
            data = fetched.get(self.path(digest))
            if not isinstance(data, bytes):
                out[digest] = CorruptObject(f"object {digest[:12]} is missing from {self.describe()} (restore it from a backup; "
                                            f"`sola verify` lists every damaged edit)")
            elif sha256_hex(data) != digest:
                out[digest] = CorruptObject(f"object {digest[:12]} in {self.describe()} is corrupted (content hash mismatch; "
                                            f"restore it from a backup)")
            else:
                write_atomically(self.cache.path(digest), data)
                out[digest] = data
        return out

    def get_json(self, digest: str) -> Any:
        return json.loads(self.get(digest))

    def exists(self, digest: str) -> bool:
        return bool(self.fs.exists(self.path(digest)))

    def __iter__(self) -> Iterator[str]:
        for kind, name, _ in self.files():
            if kind == "object":
                yield name

    def files(self) -> Iterator[tuple[str, str, str]]:
        """Every file under the prefix as (kind, name, path): "object" (named by a sha256) or
        "other" (anything else; sola never removes it). A put leaves no temporary files."""
        base = self.base.rstrip("/") + "/"
        for path in sorted(self.fs.find(self.base)):
            relative = path[len(base):] if path.startswith(base) else path
            prefix, _, rest = relative.partition("/")
            if len(prefix) == 2 and len(rest) == 62 and set(prefix + rest) <= _HEX:
                yield "object", prefix + rest, path
            else:
                yield "other", relative, path

    def size(self, path: str) -> int:
        return int(self.fs.size(path))


__all__ = ["RemoteObjectStore", "parse_objects_url"]
