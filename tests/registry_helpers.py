"""Build registries with random tensors of a small shape, through the real store code path."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from registry.storage import Storage
from registry.store import Registry, iso, utcnow

ROUTING = {"layer": 1, "module": "mlp.up_proj", "rank": 2, "alpha": 2.0, "threshold": 0.1, "key_function": "mean",
           "duplicate_distance": 0.002, "key_dim": 8, "block_path": "model.layers"}
BASE = {"spec": "tiny", "name": "tiny", "sha256": "ab" * 32}


def new_registry(root: Path, storage: Storage = Storage(), **routing) -> Registry:
    return Registry.create(root, BASE, dict(ROUTING, **routing), "tester", storage=storage)


def unit_key(seed: int) -> np.ndarray:
    """A random normalised routing key (1, 8)."""
    key = np.random.default_rng(seed).normal(size=(1, 8)).astype(np.float32)
    return key / np.linalg.norm(key)


def add_edit(registry: Registry, prompt: str, target: str = "x", seed: int = 0, author: str = "tester", key: np.ndarray | None = None,
             branch: str = "main", supersede: list[str] = ()) -> str:
    rng = np.random.default_rng(seed)
    key = unit_key(seed) if key is None else np.asarray(key, dtype=np.float32).reshape(1, -1)
    rng.normal(size=(1, 8))
    tensors = {"lora_A": rng.normal(size=(2, 8)).astype(np.float32), "lora_B": rng.normal(size=(16, 2)).astype(np.float32), "keys": key}
    provenance = {"prompt": prompt, "target": target, "author": author, "reason": "test", "source": None, "subject": None,
                  "created_at": iso(utcnow())}
    edit_id, _ = registry.store_edit(tensors, provenance, [prompt], author, f"add {prompt}", supersede, branch)
    return edit_id


def stored_bytes(registry: Registry, digest: str) -> bytes:
    """An object's bytes as its store holds them (a local file, or the S3 object itself)."""
    path = registry.objects.path(digest)
    return path.read_bytes() if isinstance(path, Path) else registry.objects.fs.cat_file(path)


def replace_stored(registry: Registry, digest: str, data: bytes | None) -> None:
    """Tamper with an object where it is stored, behind sola's back (None deletes it)."""
    path = registry.objects.path(digest)
    if isinstance(path, Path):
        path.unlink() if data is None else path.write_bytes(data)
    elif data is None:
        registry.objects.fs.rm(path)
    else:
        registry.objects.fs.pipe_file(path, data)
