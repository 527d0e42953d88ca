"""Snapshots for serving: an immutable bank per tree, built once, cached, shared by every request.

A registry that other processes write can be read only in short read transactions (DuckDB
gives a writer the file to itself for the moment it commits). So a snapshot takes everything it
needs in one short read — the tree's key index, its tombstones, and where each active edit's
LoRA object lies — and afterwards reads only immutable, hash-checked object files. Two requests
at two revisions each hold their own snapshot; the routed layer takes the bank per call.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from registry.model import Commit
from registry.objects import ObjectStore
from registry.store import Registry, load_tensors
from sola.layer import EditBank

READ_WAIT_SECONDS = 10.0  # a reader retries this long while a writer commits


@contextmanager
def reading(root: Path, wait_seconds: float = READ_WAIT_SECONDS) -> Iterator[Registry]:
    """One short read transaction on a registry that other processes may be writing."""
    registry = Registry.open(root, writable=False, wait_seconds=wait_seconds)
    try:
        yield registry
    finally:
        registry.close()


def object_fetcher(objects: ObjectStore, tensors: dict[str, str], device: torch.device | str = "cpu", dtype: torch.dtype | None = None):
    """A LoRA fetcher that reads only the (hash-checked) objects, never the catalog."""
    def fetch(edit_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        loaded = load_tensors(objects.get(tensors[edit_id]))
        a, b = torch.from_numpy(loaded["lora_A"].copy()), torch.from_numpy(loaded["lora_B"].copy())
        return a.to(device=device, dtype=dtype or a.dtype), b.to(device=device, dtype=dtype or b.dtype)

    return fetch


def snapshot_bank(registry: Registry, commit: Commit, device: torch.device | str = "cpu") -> EditBank:
    """The bank of `commit`'s tree, needing no further catalog reads once built."""
    search, key_edit = registry.key_search(commit, tombstones=True)
    members = registry.members(commit)
    active = [e for e, s in members.items() if s == "active"]
    rows = registry.catalog.edit_rows(active)
    tensors = {e: row["tensors_sha256"] for e, row in rows.items()}
    answers = {e: (row["prompt"], row["target"]) for e, row in rows.items()}
    tombstones = frozenset(e for e, s in members.items() if s == "tombstone")
    return EditBank(search, key_edit, object_fetcher(registry.objects, tensors, device), tombstones, answers)


@dataclass(frozen=True)
class Snapshot:
    """A revision as served: the commit it resolved to and its tree's bank."""

    commit: Commit
    bank: EditBank

    @property
    def tree_id(self) -> str:
        return self.commit.tree_id


class SnapshotCache:
    """Banks by tree id, least recently used evicted past `capacity` (thread-safe)."""

    def __init__(self, root: Path, capacity: int = 8, device: torch.device | str = "cpu") -> None:
        self.root = Path(root)
        self.capacity = capacity
        self.device = device
        self._banks: OrderedDict[str, EditBank] = OrderedDict()
        self._commits: OrderedDict[str, Commit] = OrderedDict()  # commits are immutable: resolved once
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def cached(self, commit_id: str) -> Snapshot | None:
        """The snapshot of a commit seen before whose tree's bank is still cached (no read needed)."""
        with self._lock:
            commit = self._commits.get(commit_id)
            bank = self._banks.get(commit.tree_id) if commit is not None else None
            if bank is None:
                return None
            self._banks.move_to_end(commit.tree_id)
            self.hits += 1
            return Snapshot(commit, bank)

    def snapshot(self, registry: Registry, commit: Commit) -> Snapshot:
        """The snapshot of `commit`, building its bank inside the caller's read if it is new."""
        with self._lock:
            self._commits[commit.commit_id] = commit
            while len(self._commits) > 4096:
                self._commits.popitem(last=False)
            bank = self._banks.get(commit.tree_id)
            if bank is not None:
                self._banks.move_to_end(commit.tree_id)
                self.hits += 1
                return Snapshot(commit, bank)
        bank = snapshot_bank(registry, commit, self.device)
        with self._lock:
            self.misses += 1
            self._banks[commit.tree_id] = bank
            self._banks.move_to_end(commit.tree_id)
            while len(self._banks) > self.capacity:
                self._banks.popitem(last=False)
        return Snapshot(commit, bank)

    def resolve(self, revision: str) -> Snapshot:
        """Resolve a revision in one short read and return its snapshot."""
        with reading(self.root) as registry:
            return self.snapshot(registry, registry.resolve(revision))


__all__ = ["Snapshot", "SnapshotCache", "reading", "snapshot_bank", "object_fetcher"]
