"""Routing keys for search: a derived key matrix and per-snapshot FAISS indexes.

Both are caches derived from DuckDB + objects (the source of truth): deleting `cache/` loses
nothing, the next read rebuilds it. The key matrix holds every key ever stored, row = key id,
so the index for any snapshot is a row selection plus one FAISS `add` instead of opening one
object per edit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np

from registry.objects import write_atomically

RowLoader = Callable[[int, int], np.ndarray]  # (first key id, end key id) -> (end-first, dim) float32


class KeyMatrix:
    """Append-only float32 matrix file `keys.f32` with its committed row count in `keys.json`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_path = root / "keys.f32"
        self.meta_path = root / "keys.json"

    def _meta(self) -> dict[str, Any]:
        try:
            return json.loads(self.meta_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {"rows": 0, "dim": 0, "owner": None}

    def sync(self, total_rows: int, dim: int, load_rows: RowLoader, owner: str, batch: int = 4096) -> None:
        """Extend the matrix to `total_rows`, loading only the rows it lacks.

        `owner` identifies the registry (its first commit): a matrix left by another registry
        in the same directory is rebuilt, never reused."""
        meta = self._meta()
        if meta.get("owner") != owner or meta["dim"] not in (0, dim) or meta["rows"] > total_rows:
            meta = {"rows": 0, "dim": dim}  # stale: rebuild from the objects
        self.root.mkdir(parents=True, exist_ok=True)
        rows = meta["rows"]
        if rows == total_rows and self.data_path.exists():
            return
        mode = "r+b" if self.data_path.exists() and rows > 0 else "wb"
        with open(self.data_path, mode) as handle:
            handle.seek(rows * dim * 4)
            for first in range(rows, total_rows, batch):
                end = min(first + batch, total_rows)
                block = np.ascontiguousarray(load_rows(first, end), dtype=np.float32)
                handle.write(block.tobytes())
            handle.truncate(total_rows * dim * 4)
            handle.flush()
            os.fsync(handle.fileno())
        write_atomically(self.meta_path, json.dumps({"rows": total_rows, "dim": dim, "owner": owner}).encode())

    def rows(self, key_ids: np.ndarray, dim: int) -> np.ndarray:
        meta = self._meta()
        if meta["rows"] == 0:
            return np.zeros((0, dim), np.float32)
        matrix = np.memmap(self.data_path, dtype=np.float32, mode="r", shape=(meta["rows"], meta["dim"]))
        return np.asarray(matrix[key_ids])


class FaissKeySearch:
    """Exact inner-product search over normalised keys, returning key ids (FAISS IndexIDMap2)."""

    def __init__(self, index: faiss.Index) -> None:
        self.index = index

    @classmethod
    def build(cls, keys: np.ndarray, key_ids: np.ndarray, dim: int) -> "FaissKeySearch":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        if len(key_ids):
            index.add_with_ids(np.ascontiguousarray(keys, dtype=np.float32), np.asarray(key_ids, dtype=np.int64))
        return cls(index)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.index.ntotal == 0:
            return np.full(len(queries), -np.inf, np.float32), np.full(len(queries), -1, np.int64)
        sims, ids = self.index.search(queries, 1)
        return sims[:, 0], ids[:, 0]

    def neighbours(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.index.ntotal == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        sims, ids = self.index.search(np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32), min(k, self.index.ntotal))
        keep = ids[0] >= 0
        return sims[0][keep], ids[0][keep]

    def copy(self) -> "FaissKeySearch":
        return FaissKeySearch(faiss.clone_index(self.index))

    def add(self, keys: np.ndarray, key_ids: np.ndarray) -> None:
        self.index.add_with_ids(np.ascontiguousarray(keys, dtype=np.float32), np.asarray(key_ids, dtype=np.int64))

    def remove(self, key_ids: np.ndarray) -> None:
        self.index.remove_ids(np.asarray(key_ids, dtype=np.int64))

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def save(self, path: Path) -> None:
        write_atomically(path, faiss.serialize_index(self.index).tobytes())

    @classmethod
    def load(cls, path: Path) -> "FaissKeySearch":
        data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        return cls(faiss.deserialize_index(data))
