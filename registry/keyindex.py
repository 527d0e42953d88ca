"""Routing keys for search: a derived key matrix, IVF coarse lists and per-snapshot FAISS indexes.

All of it is a cache derived from DuckDB (`key_vectors`, checked against the objects by
`sola verify`): deleting `cache/` loses nothing, the next read rebuilds it. The key matrix holds
every key ever stored, row = key id, so the index for any snapshot is a row selection plus one
FAISS `add` instead of one DuckDB scan per snapshot.

Small snapshots get an exact flat index. From `FLAT_LIMIT` keys on, an exact scan costs more
than the 2 ms a routed prompt may spend on search (100k keys: 22 ms, memory bound), so the
snapshot gets an inverted-file index (`IndexIVFFlat`): keys are grouped by their nearest of
`nlist` centroids and a query scans only the `PROBES` nearest groups. Its scores are exact inner
products on the stored float32 keys, so a miss can only stop an edit from firing, never make the
wrong one fire; `docs/scaling.md` has the measured recall at the routing threshold. Centroids and
each key's group are trained once per registry (not per snapshot) and cached in `cache/ivf.npz`,
so a new snapshot's index is a grouped copy of its keys, not a training run.

This module imports FAISS and numpy; commands that never search (`log`, `diff`, ...) should not
import it (see `Registry.key_search`).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import faiss
import numpy as np

from registry.objects import CorruptObject, write_atomically

RowLoader = Callable[[int, int], np.ndarray]  # (first key id, end key id) -> (end-first, dim) float32

FLAT_LIMIT = 10_000  # below this many keys an exact scan is already ~2 ms: no IVF
PROBES = 16  # groups scanned per query; recall at the routing threshold is measured in docs/scaling.md
TRAIN_POINTS_PER_LIST = 32  # k-means sample size per centroid (deterministic, evenly spaced rows)
TRAIN_ITERATIONS = 4  # Lloyd iterations: enough for a coarse partition, cheap on a cold start
RETRAIN_GROWTH = 2  # retrain the centroids once the registry holds this many times the keys they saw
ASSIGN_BATCH = 16_384


def lists_for(rows: int) -> int:
    """Number of IVF groups for a registry with `rows` keys: a power of two near 1.6 * sqrt(rows)
    (94k keys -> 512), so a 16-group probe scans about 3% of the keys."""
    return int(min(2 ** round(np.log2(max(1.6 * np.sqrt(max(rows, 1)), 1))), max(rows, 1)))


class KeyMatrix:
    """Append-only float32 matrix file `keys.f32` with its committed row count in `keys.json`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_path = root / "keys.f32"
        self.meta_path = root / "keys.json"

    def _meta(self) -> dict[str, Any]:
        """The committed row count, width and owner; an absent or unreadable `keys.json` reads as
        an empty matrix (so the next sync rebuilds it: it is a cache)."""
        empty = {"rows": 0, "dim": 0, "owner": None}
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            return empty
        if (not isinstance(meta, dict) or not all(isinstance(meta.get(k), int) and not isinstance(meta.get(k), bool) and meta[k] >= 0
                                                  for k in ("rows", "dim"))):
            return empty
        return meta

    def damage(self) -> str | None:
        """Why `keys.f32` cannot hold the rows `keys.json` commits to (truncated, replaced by a
        directory, ...), or None when it can."""
        meta = self._meta()
        if meta["rows"] == 0:
            return None
        if meta["dim"] == 0:
            return f"{self.meta_path.name} records {meta['rows']} rows of width 0"
        try:
            size = os.stat(self.data_path).st_size if self.data_path.is_file() else None
        except OSError as error:
            return f"{self.data_path.name} cannot be read ({error.strerror})"
        if size is None:
            return f"{self.data_path.name} is missing"
        needed = meta["rows"] * meta["dim"] * 4
        if size < needed:
            return f"{self.data_path.name} holds {size} bytes, fewer than the {needed} its {meta['rows']} rows need"
        return None

    def sync(self, total_rows: int, dim: int, load_rows: RowLoader, owner: str, batch: int = 65_536) -> None:
        """Extend the matrix to `total_rows`, loading only the rows it lacks.

        Several read-only processes may sync the same cache at once (two cold `sola generate`s).
        So the file is never shrunk or rewritten in place: a first build or a rebuild goes to a
        temporary file renamed over the old one, an extension appends bytes that every process
        computes identically from the same key ids, and the committed row count only grows.
        `owner` identifies the registry (its first commit): a matrix left by another registry
        in the same directory is rebuilt, never reused."""
        meta = self._meta()
        rebuild = (meta.get("owner") != owner or meta["dim"] not in (0, dim) or meta["rows"] > total_rows
                   or self.damage() is not None)  # a damaged cache is rebuilt, never read
        rows = 0 if rebuild else meta["rows"]
        if rows == total_rows and self.data_path.exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        if rows == 0:
            fd, name = tempfile.mkstemp(prefix=".tmp-keys-", dir=self.root)
            try:
                with os.fdopen(fd, "wb") as handle:
                    self._write_rows(handle, 0, total_rows, load_rows, batch)
                os.replace(name, self.data_path)
            except BaseException:
                Path(name).unlink(missing_ok=True)
                raise
        else:
            with open(self.data_path, "r+b") as handle:
                handle.seek(rows * dim * 4)
                self._write_rows(handle, rows, total_rows, load_rows, batch)
        current = self._meta()
        if rebuild or current.get("owner") != owner or current["rows"] < total_rows:
            write_atomically(self.meta_path, json.dumps({"rows": total_rows, "dim": dim, "owner": owner}).encode())

    @staticmethod
    def _write_rows(handle: BinaryIO, first: int, end: int, load_rows: RowLoader, batch: int) -> None:
        for start in range(first, end, batch):
            block = np.ascontiguousarray(load_rows(start, min(start + batch, end)), dtype=np.float32)
            handle.write(block.tobytes())
        handle.flush()
        os.fsync(handle.fileno())

    def rows(self, key_ids: np.ndarray, dim: int) -> np.ndarray:
        meta = self._meta()
        if meta["rows"] == 0:
            return np.zeros((0, dim), np.float32)
        damage = self.damage()
        if damage is not None:
            raise CorruptObject(f"cache is damaged: {damage} (delete {self.root} to rebuild it)")
        matrix = np.memmap(self.data_path, dtype=np.float32, mode="r", shape=(meta["rows"], meta["dim"]))
        return np.asarray(matrix[key_ids])


def train_centroids(sample: np.ndarray, nlist: int) -> np.ndarray:
    """Spherical-enough k-means centroids for inner-product IVF (FAISS k-means, fixed seed)."""
    clustering = faiss.Clustering(sample.shape[1], nlist)
    clustering.niter = TRAIN_ITERATIONS
    clustering.seed = 1234
    clustering.max_points_per_centroid = TRAIN_POINTS_PER_LIST
    clustering.min_points_per_centroid = 1
    clustering.spherical = True
    quantizer = faiss.IndexFlatIP(sample.shape[1])
    clustering.train(np.ascontiguousarray(sample, dtype=np.float32), quantizer)
    return faiss.vector_to_array(clustering.centroids).reshape(nlist, sample.shape[1]).astype(np.float32)


def nearest_lists(keys: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group, score) of each key's nearest centroid by inner product."""
    quantizer = faiss.IndexFlatIP(centroids.shape[1])
    quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
    scores, groups = quantizer.search(np.ascontiguousarray(keys, dtype=np.float32), 1)
    return groups[:, 0].astype(np.int32), scores[:, 0]


class CoarseLists:
    """IVF centroids and the group of every key id, in one atomically written `ivf.npz`.

    Like the key matrix it is append-only between trainings and belongs to one registry
    (`owner`); it is retrained from evenly spaced key matrix rows when the registry has grown
    `RETRAIN_GROWTH`-fold since the last training."""

    def __init__(self, root: Path) -> None:
        self.path = root / "ivf.npz"

    def load(self) -> tuple[dict[str, Any], np.ndarray, np.ndarray] | None:
        """(meta, centroids, groups by key id), or None when absent or unreadable."""
        try:
            with np.load(self.path, allow_pickle=False) as data:
                meta, centroids, groups = json.loads(str(data["meta"])), data["centroids"], data["groups"]
        except Exception:  # noqa: BLE001 - absent, truncated, not a zip (BadZipFile), wrong arrays: a cache miss
            return None
        if (not isinstance(meta, dict) or centroids.ndim != 2 or groups.ndim != 1
                or (len(groups) and not 0 <= int(groups.min()) <= int(groups.max()) < len(centroids))):
            return None  # damaged: retrained on next use (a group past the centroids would crash FAISS)
        return meta, centroids, groups

    def _save(self, meta: dict[str, Any], centroids: np.ndarray, groups: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.array(json.dumps(meta)), centroids=centroids, groups=groups)
        write_atomically(self.path, buffer.getvalue())

    def sync(self, matrix: KeyMatrix, total_rows: int, dim: int, owner: str) -> tuple[np.ndarray, np.ndarray]:
        """Centroids and groups covering key ids 0..total_rows-1 (the matrix must hold them)."""
        found = self.load()
        meta, centroids, groups = found if found else ({}, np.zeros((0, dim), np.float32), np.zeros(0, np.int32))
        stale = (
            meta.get("owner") != owner
            or meta.get("dim") != dim
            or len(groups) > total_rows
            or total_rows >= RETRAIN_GROWTH * meta.get("trained_rows", 0)
        )
        if stale:
            nlist = lists_for(total_rows)
            sample_ids = np.unique(np.linspace(0, total_rows - 1, min(total_rows, nlist * TRAIN_POINTS_PER_LIST)).astype(np.int64))
            centroids = train_centroids(matrix.rows(sample_ids, dim), nlist)
            meta, groups = {"owner": owner, "dim": dim, "trained_rows": total_rows}, np.zeros(0, np.int32)
        if len(groups) == total_rows and not stale:
            return centroids, groups
        parts = [groups]
        for first in range(len(groups), total_rows, ASSIGN_BATCH):
            end = min(first + ASSIGN_BATCH, total_rows)
            parts.append(nearest_lists(matrix.rows(np.arange(first, end), dim), centroids)[0])
        groups = np.concatenate(parts).astype(np.int32)
        try:
            self._save(meta, centroids, groups)
        except OSError:
            pass  # a read-only location only costs the assignment next time
        return centroids, groups


class FaissKeySearch:
    """Inner-product search over normalised keys returning key ids: exact flat (IndexIDMap2 of
    IndexFlatIP) for small snapshots, IndexIVFFlat with exact re-scored distances for large ones."""

    def __init__(self, index: faiss.Index) -> None:
        self.index = index

    @classmethod
    def build(
        cls, keys: np.ndarray, key_ids: np.ndarray, dim: int, coarse: tuple[np.ndarray, np.ndarray] | None = None
    ) -> "FaissKeySearch":
        """A flat index, or with `coarse` = (centroids, group of each key in `key_ids`) an IVF index
        filled with those precomputed groups (no training, no quantizer pass)."""
        if coarse is None:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
            if len(key_ids):
                index.add_with_ids(np.ascontiguousarray(keys, dtype=np.float32), np.asarray(key_ids, dtype=np.int64))
            return cls(index)
        centroids, groups = coarse
        quantizer = faiss.IndexFlatIP(dim)
        quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
        index = faiss.IndexIVFFlat(quantizer, dim, len(centroids), faiss.METRIC_INNER_PRODUCT)
        index.nprobe = min(PROBES, len(centroids))
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # `vector(key_id)`, and still removable
        keys = np.ascontiguousarray(keys, dtype=np.float32)
        ids = np.ascontiguousarray(key_ids, dtype=np.int64)
        lists = np.ascontiguousarray(groups, dtype=np.int64)
        if len(ids):
            index.add_core(len(ids), faiss.swig_ptr(keys), faiss.swig_ptr(ids), faiss.swig_ptr(lists))
        return cls(index)

    @property
    def is_exact(self) -> bool:
        return not isinstance(self.index, faiss.IndexIVF)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.index.ntotal == 0:
            return np.full(len(queries), -np.inf, np.float32), np.full(len(queries), -1, np.int64)
        sims, ids = self.index.search(queries, 1)
        sims = np.where(ids[:, 0] >= 0, sims[:, 0], -np.inf).astype(np.float32)  # IVF: empty probed groups
        return sims, ids[:, 0]

    def neighbours(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.index.ntotal == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        sims, ids = self.index.search(np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32), min(k, self.index.ntotal))
        keep = ids[0] >= 0
        return sims[0][keep], ids[0][keep]

    def vector(self, key_id: int) -> np.ndarray:
        """The stored key of `key_id` (flat: the id map; IVF: the direct map set at build)."""
        return self.index.reconstruct(int(key_id))

    def copy(self) -> "FaissKeySearch":
        return FaissKeySearch(faiss.clone_index(self.index))

    def add(self, keys: np.ndarray, key_ids: np.ndarray) -> None:
        """New keys go to their nearest existing group (IVF) or to the end (flat)."""
        self.index.add_with_ids(np.ascontiguousarray(keys, dtype=np.float32), np.asarray(key_ids, dtype=np.int64))

    def remove(self, key_ids: np.ndarray) -> None:
        self.index.remove_ids(np.asarray(key_ids, dtype=np.int64))

    def _ivf_contents(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every key in the IVF groups, read straight from the inverted lists."""
        lists, dim = self.index.invlists, self.index.d
        ids, vectors = [np.zeros(0, np.int64)], [np.zeros((0, dim), np.float32)]
        for group in range(self.index.nlist):
            size = lists.list_size(group)
            if size:
                ids.append(faiss.rev_swig_ptr(lists.get_ids(group), size).astype(np.int64))
                codes = faiss.rev_swig_ptr(lists.get_codes(group), size * dim * 4).copy()
                vectors.append(codes.view(np.float32).reshape(size, dim))
        return np.concatenate(ids), np.concatenate(vectors)

    def ids(self) -> np.ndarray:
        if self.is_exact:
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)
        return self._ivf_contents()[0]

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(key ids ascending, their stored vectors): what the index actually searches."""
        if self.is_exact:
            ids = self.ids()
            stored = self.index.index.reconstruct_n(0, self.size) if self.size else np.zeros((0, self.index.d), np.float32)
        else:
            ids, stored = self._ivf_contents()
        order = np.argsort(ids, kind="stable")
        return ids[order], stored[order]
