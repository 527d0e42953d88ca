"""Bulk loading (registry.bulk) records exactly what storing the same edits one by one records."""

from __future__ import annotations

import numpy as np
import pytest

from registry.bulk import BulkLoader
from registry.store import Registry, RegistryError
from registry.verify import verify
from previous_release import raw_sql
from registry_helpers import BASE, ROUTING


def _edit(i: int, n_keys: int = 1, prompt: str | None = None) -> tuple[dict, dict, list[str]]:
    rng = np.random.default_rng(i)
    keys = rng.normal(size=(n_keys, 8)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    tensors = {"lora_A": rng.normal(size=(2, 8)).astype(np.float32), "lora_B": rng.normal(size=(16, 2)).astype(np.float32), "keys": keys}
    prompt = prompt or f"prompt {i}"
    rephrases = [f"{prompt} (rephrase {j})" for j in range(1, n_keys)]
    provenance = {"prompt": prompt, "target": f"target {i}", "rephrases": rephrases, "subject": f"s{i}", "author": "tester",
                  "reason": "test", "source": None, "created_at": f"2026-01-01T00:00:{i:02d}.000000Z"}  # fixed: same edit ids
    return tensors, provenance, [prompt, *rephrases]


def _script(add, set_active, flush=lambda: None) -> list[str]:
    """Adds (some with rephrases), revokes, a restore and supersedes, touching queued and flushed edits."""
    ids = []
    for i in range(6):
        tensors, provenance, prompts = _edit(i, n_keys=1 + i % 3)
        ids.append(add(tensors, provenance, prompts, "tester", f"add {i}", []))
    set_active(ids[1], False, "tester", "wrong")  # an edit still queued (batch 4) or already flushed
    flush()
    set_active(ids[4], False, "auditor", "harmful")
    tensors, provenance, prompts = _edit(6, prompt="prompt 2")
    ids.append(add(tensors, provenance, prompts, "tester", "fix 2", [ids[2]]))
    set_active(ids[1], True, "tester", "revoked by mistake")
    for i in range(7, 12):
        tensors, provenance, prompts = _edit(i, n_keys=2 if i == 9 else 1)
        ids.append(add(tensors, provenance, prompts, "tester", f"add {i}", [ids[0]] if i == 10 else []))
    set_active(ids[-1], False, "tester", "wrong again")
    set_active(ids[2], True, "tester", "superseded by mistake")  # a restore with no tombstone to lift
    return ids


def _plain(tmp_path, routing: dict = ROUTING) -> Registry:
    registry = Registry.create(tmp_path / "plain", BASE, routing, "tester")
    _script(lambda *a: registry.store_edit(*a)[0], registry.set_active)
    return registry


def _bulk(tmp_path, batch: int | None, routing: dict = ROUTING) -> Registry:
    registry = Registry.create(tmp_path / f"bulk-{batch}", BASE, routing, "tester")
    loader = BulkLoader(registry, batch=batch)
    _script(loader.add, loader.set_active, loader.flush if batch is None else lambda: None)
    loader.flush()
    return registry


def _history(registry: Registry) -> list[tuple]:
    commits = registry.log()[::-1]
    return [(c.seq, c.tree_id, c.tree_sum, c.n_active, c.author, c.op, c.message, c.reason, registry.changes(c.commit_id)) for c in commits]


def _rows(registry: Registry, sql: str) -> list[tuple]:
    return raw_sql(registry, sql)


@pytest.mark.parametrize("revoke_mode", ["delete", "tombstone"])
@pytest.mark.parametrize("batch", [None, 1, 4, 1000])
def test_bulk_fill_verifies_and_matches_one_by_one(tmp_path, batch, revoke_mode):
    routing = dict(ROUTING, revoke_mode=revoke_mode)
    plain, bulk = _plain(tmp_path, routing), _bulk(tmp_path, batch, routing)
    assert verify(bulk).ok, verify(bulk).problems
    assert verify(plain).ok
    # same commits, change for change: trees, tree sums, active counts, ops, messages, reasons
    assert _history(bulk) == _history(plain)
    assert _rows(bulk, "SELECT * FROM edits ORDER BY edit_id") == _rows(plain, "SELECT * FROM edits ORDER BY edit_id")
    assert _rows(bulk, "SELECT * FROM edit_keys ORDER BY key_id") == _rows(plain, "SELECT * FROM edit_keys ORDER BY key_id")
    reflog = "SELECT id, ref, actor, reason FROM reflog ORDER BY id"
    assert _rows(bulk, reflog) == _rows(plain, reflog)
    # same tree ids for the same active sets, so the same cached key index serves both
    for old, new in zip(plain.log(), bulk.log()):
        assert old.tree_id == new.tree_id
        assert plain.active_edit_ids(old) == bulk.active_edit_ids(new)
    assert bulk.tombstoned_edit_ids(bulk.head()) == plain.tombstoned_edit_ids(plain.head())
    search, key_edit = bulk.key_search(bulk.head(), tombstones=True)
    reference, reference_edit = plain.key_search(plain.head(), tombstones=True)
    assert key_edit == reference_edit
    assert all(np.array_equal(a, b) for a, b in zip(search.vectors(), reference.vectors()))
    assert verify(bulk).ok  # with the caches now present


def test_bulk_time_travel_uses_the_ref_log(tmp_path):
    bulk = _bulk(tmp_path, 4)
    for commit in bulk.log():
        moment = raw_sql(bulk, "SELECT time FROM reflog WHERE new_commit = ?", [commit.commit_id])[0][0]
        assert bulk.resolve_time(moment).commit_id == commit.commit_id


def test_bulk_refuses_what_store_edit_refuses(tmp_path):
    registry = Registry.create(tmp_path / "r", BASE, ROUTING, "tester")
    loader = BulkLoader(registry, batch=None)
    first = loader.add(*_edit(0), "tester", "add 0")
    with pytest.raises(RegistryError, match="already exists"):
        loader.add(*_edit(0), "tester", "again")
    loader.set_active(first, False, "tester", "wrong")
    with pytest.raises(RegistryError, match="already revoked"):
        loader.set_active(first, False, "tester", "wrong")
    with pytest.raises(RegistryError, match="not active"):
        loader.add(*_edit(1), "tester", "add 1", [first])
    with pytest.raises(RegistryError, match="reason is required"):
        loader.set_active(first, True, "tester", " ")
    loader.flush()
    assert registry.counts() == {"edits": 1, "commits": 3, "keys": 1}
    # an edit already in the registry: the whole batch is refused, nothing is half-written
    loader.add(*_edit(2), "tester", "add 2")
    loader.add(*_edit(0), "tester", "duplicate of a flushed edit")
    with pytest.raises(RegistryError, match="already exists"):
        loader.flush()
    assert registry.counts() == {"edits": 1, "commits": 3, "keys": 1}
    report = verify(registry)
    assert report.ok and any("unreferenced" in note for note in report.notes)
    with pytest.raises(RegistryError, match="read-only"):
        registry.close()
        BulkLoader(Registry.open(tmp_path / "r"))
