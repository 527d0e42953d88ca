"""The store: content addressing, history, revisions, time travel, tags, migrations, integrity."""

from __future__ import annotations

import time

import numpy as np
import pytest

from registry.db import latest_version
from registry.inspect import revoked_report
from registry.store import CorruptObject, Registry, RegistryError, iso, utcnow
from registry.verify import verify
from previous_release import PreviousRelease, raw_sql
from registry_helpers import BASE, ROUTING, add_edit, new_registry, replace_stored, stored_bytes


def test_edit_id_is_the_sha256_of_its_provenance_bytes(tmp_path, storage):
    import hashlib

    registry = new_registry(tmp_path / "r", storage)
    edit = add_edit(registry, "p1")
    assert hashlib.sha256(stored_bytes(registry, edit)).hexdigest() == edit
    tensors_sha = registry.edit_row(edit)["tensors_sha256"]
    assert hashlib.sha256(stored_bytes(registry, tensors_sha)).hexdigest() == tensors_sha


def test_same_active_set_gives_the_same_tree_id(tmp_path, storage):
    registry = new_registry(tmp_path / "r", storage)
    a = add_edit(registry, "a", seed=1)
    after_a = registry.head()
    b = add_edit(registry, "b", seed=2)
    registry.set_active(b, False, "tester", "wrong")
    after_revoke = registry.head()
    assert after_revoke.commit_id != after_a.commit_id
    assert after_revoke.tree_id == after_a.tree_id
    assert registry.active_edit_ids(after_revoke) == [a]


def test_tombstones_give_a_revoke_its_own_tree_and_a_restore_the_tree_before_it(tmp_path, storage):
    registry = new_registry(tmp_path / "r", storage, revoke_mode="tombstone")
    a = add_edit(registry, "a", seed=1)
    after_a = registry.head()
    b = add_edit(registry, "b", seed=2)
    after_b = registry.head()
    registry.set_active(b, False, "tester", "wrong")
    revoked = registry.head()
    assert registry.active_edit_ids(revoked) == [a] and revoked.tree_id not in (after_a.tree_id, after_b.tree_id)
    assert registry.tombstoned_edit_ids(revoked) == {b} and registry.tombstoned_edit_ids(after_b) == set()
    assert sorted(set(registry.key_search(revoked, tombstones=True)[1].values())) == sorted([a, b])
    assert set(registry.key_search(revoked)[1].values()) == {a}
    registry.set_active(b, True, "tester", "right after all")
    assert registry.head().tree_id == after_b.tree_id and registry.tombstoned_edit_ids(registry.head()) == set()
    assert verify(registry).ok, verify(registry).problems


def test_a_superseded_edit_leaves_no_tombstone(tmp_path, storage):
    import numpy as np

    registry = new_registry(tmp_path / "r", storage, revoke_mode="tombstone")
    old = add_edit(registry, "a", seed=1)
    tensors = {"lora_A": np.ones((2, 8), np.float32), "lora_B": np.ones((16, 2), np.float32),
               "keys": np.eye(8, dtype=np.float32)[:1]}
    provenance = {"prompt": "a", "target": "y", "author": "tester", "reason": "fix", "source": None, "subject": None,
                  "created_at": iso(utcnow())}
    new, commit = registry.store_edit(tensors, provenance, ["a"], "tester", "fix a", [old])
    assert registry.tombstoned_edit_ids(commit) == set()
    assert set(registry.key_search(commit, tombstones=True)[1].values()) == {new}
    assert verify(registry).ok


def test_revisions_resolve_by_ref_prefix_and_ancestry(tmp_path, storage):
    registry = new_registry(tmp_path / "r", storage)
    add_edit(registry, "a", seed=1)
    add_edit(registry, "b", seed=2)
    head = registry.head()
    assert registry.resolve("main").commit_id == head.commit_id
    assert registry.resolve(head.commit_id[:8]).commit_id == head.commit_id
    assert registry.resolve("main~2").op == "init"
    with pytest.raises(RegistryError, match="unknown revision"):
        registry.resolve("deadbeefdeadbeef")
    with pytest.raises(RegistryError, match="past the first commit"):
        registry.resolve("main~3")


def test_point_in_time_resolves_to_what_main_pointed_at(tmp_path, storage):
    registry = new_registry(tmp_path / "r", storage)
    first = add_edit(registry, "a", seed=1)
    between = registry.head()
    time.sleep(0.01)
    add_edit(registry, "b", seed=2)
    at = registry.resolve(at=between.time.isoformat())
    assert at.commit_id == between.commit_id
    assert registry.active_edit_ids(at) == [first]
    with pytest.raises(RegistryError, match="before the first commit"):
        registry.resolve(at="2000-01-01T00:00:00Z")


def test_tags_are_immutable(tmp_path, storage):
    registry = new_registry(tmp_path / "r", storage)
    add_edit(registry, "a")
    registry.tag("v1", registry.head(), "tester")
    add_edit(registry, "b", seed=3)
    with pytest.raises(RegistryError, match="immutable"):
        registry.tag("v1", registry.head(), "tester")
    assert registry.resolve("v1").seq == 1


def test_diff_lists_added_and_removed_edits(tmp_path, storage):
    registry = new_registry(tmp_path / "r", storage)
    a = add_edit(registry, "a", seed=1)
    b = add_edit(registry, "b", seed=2)
    registry.set_active(a, False, "tester", "obsolete")
    changes = registry.diff(registry.resolve("main~2"), registry.head())
    assert changes == {"added": [b], "removed": [a]}


def test_revoke_twice_and_restore_active_are_refused(tmp_path, storage):
    registry = new_registry(tmp_path / "r", storage)
    a = add_edit(registry, "a")
    registry.set_active(a, False, "tester", "r1")
    with pytest.raises(RegistryError, match="already revoked"):
        registry.set_active(a, False, "tester", "r2")
    registry.set_active(a, True, "tester", "back")
    with pytest.raises(RegistryError, match="already active"):
        registry.set_active(a, True, "tester", "again")


def test_revoked_report_names_who_when_why_and_live_span(tmp_path, storage):
    registry = new_registry(tmp_path / "r", storage)
    a = add_edit(registry, "a")
    registry.set_active(a, False, "auditor", "false fact")
    [item] = revoked_report(registry)
    assert (item["edit"], item["revoked_by"], item["reason"]) == (a, "auditor", "false fact")
    assert item["commit"] == registry.head().commit_id
    assert len(item["live"]) == 1 and item["live"][0]["until"] == item["revoked_at"]


def test_key_search_cache_is_rebuilt_after_deletion(tmp_path, storage):
    import shutil

    registry = new_registry(tmp_path / "r", storage)
    a = add_edit(registry, "a", seed=1)
    search, key_edit = registry.key_search(registry.head())
    key = registry.edit_tensors(a)["keys"]
    shutil.rmtree(tmp_path / "r" / "cache")
    rebuilt, rebuilt_edit = registry.key_search(registry.head())
    sims, ids = rebuilt.search(key)
    assert rebuilt_edit[int(ids[0])] == a and sims[0] == pytest.approx(1.0, abs=1e-6)


def test_verify_passes_on_a_healthy_registry(tmp_path, storage):
    registry = new_registry(tmp_path / "r", storage)
    a = add_edit(registry, "a", seed=1)
    add_edit(registry, "b", seed=2)
    registry.set_active(a, False, "tester", "x")
    registry.key_search(registry.head())
    report = verify(registry)
    assert report.ok, report.problems


def test_verify_detects_a_flipped_byte_in_an_object(tmp_path, storage):
    registry = new_registry(tmp_path / "r", storage)
    a = add_edit(registry, "a")
    digest = registry.edit_row(a)["tensors_sha256"]
    registry.edit_lora(a)  # read once: a shared store now holds it in the local cache, which verify must not trust
    data = bytearray(stored_bytes(registry, digest))
    data[-1] ^= 0x01
    replace_stored(registry, digest, bytes(data))
    report = verify(registry)
    assert not report.ok and any("corrupted" in p for p in report.problems)


def test_verify_detects_an_edited_commit_row(tmp_path, storage):
    registry = new_registry(tmp_path / "r", storage)
    add_edit(registry, "a")
    raw_sql(registry, "UPDATE commits SET author = 'mallory' WHERE op = 'add'")
    report = verify(registry)
    assert any("does not hash to its id" in p for p in report.problems)


def test_verify_detects_a_deleted_object(tmp_path, storage):
    registry = new_registry(tmp_path / "r", storage)
    a = add_edit(registry, "a")
    registry.provenance(a)  # cached locally for a shared store; verify must still see it gone
    replace_stored(registry, a, None)
    report = verify(registry)
    assert any("missing" in p for p in report.problems)


def test_previous_schema_is_upgraded_on_open(tmp_path):
    old = PreviousRelease(tmp_path / "old", 1, BASE, ROUTING)
    old.add("a", seed=1)
    old.close()
    upgraded = Registry.open(tmp_path / "old")
    assert upgraded.catalog.schema_version() == latest_version() >= 4
    indexes = {r[0] for r in raw_sql(upgraded, "SELECT index_name FROM duckdb_indexes()")}
    assert "commit_changes_edit" in indexes
    assert verify(upgraded).ok, verify(upgraded).problems


def test_upgrade_to_key_vectors_copies_every_key_from_its_tensors_object(tmp_path):
    old = PreviousRelease(tmp_path / "old", 2, BASE, ROUTING)
    edits = [old.add(f"p{i}", seed=i) for i in range(3)]
    old.close()
    upgraded = Registry.open(tmp_path / "old")
    rows = raw_sql(upgraded, "SELECT k.edit_id, k.ordinal, v.vector FROM edit_keys k JOIN key_vectors v USING (key_id) ORDER BY key_id")
    assert len(rows) == 2 * len(edits)
    for edit_id, ordinal, vector in rows:
        expected = upgraded.edit_tensors(edit_id)["keys"][ordinal]
        assert np.array_equal(np.frombuffer(vector, dtype="<f4"), expected)
    # the index is then built from the copies and finds each stored key
    search, key_edit = upgraded.key_search(upgraded.head())
    sims, ids = search.search(upgraded.edit_tensors(edits[1])["keys"])
    assert [key_edit[int(i)] for i in ids] == [edits[1], edits[1]]


def test_store_edit_keeps_each_key_once_in_key_vectors_covered_by_the_provenance_digest(tmp_path):
    import hashlib

    from safetensors.numpy import load

    registry = new_registry(tmp_path / "r")
    a = add_edit(registry, "a", seed=4)
    rng = np.random.default_rng(4)
    written_key = rng.normal(size=(1, 8)).astype(np.float32)
    written_key /= np.linalg.norm(written_key)
    [(vector,)] = raw_sql(registry, "SELECT vector FROM key_vectors")
    assert vector == written_key[0].astype("<f4").tobytes()
    assert registry.provenance(a)["keys_sha256"] == hashlib.sha256(vector).hexdigest()
    assert set(load(registry.objects.get(registry.edit_row(a)["tensors_sha256"]))) == {"lora_A", "lora_B"}
    assert np.array_equal(registry.edit_tensors(a)["keys"], written_key)


def test_verify_fails_when_the_duckdb_key_copy_is_tampered(tmp_path):
    registry = new_registry(tmp_path / "r")
    add_edit(registry, "a", seed=1)
    b = add_edit(registry, "b", seed=2)
    forged = np.ones(8, dtype="<f4") / np.sqrt(8)
    raw_sql(registry, "UPDATE key_vectors SET vector = ? WHERE key_id = 1", [forged.tobytes()])
    report = verify(registry)
    assert f"edit {b[:12]}: its key_vectors rows do not match keys_sha256 in its provenance" in report.problems
    with pytest.raises(CorruptObject, match="do not match its provenance"):
        registry.edit_tensors(b)


def test_verify_fails_when_a_key_copy_of_an_older_edit_differs_from_its_tensors_object(tmp_path):
    old = PreviousRelease(tmp_path / "old", 2, BASE, ROUTING)
    old.add("a", seed=1)
    old.close()
    upgraded = Registry.open(tmp_path / "old", writable=True)
    forged = np.ones(8, dtype="<f4") / np.sqrt(8)
    raw_sql(upgraded, "UPDATE key_vectors SET vector = ? WHERE key_id = 1", [forged.tobytes()])
    report = verify(upgraded)
    assert "key_vectors: 1 vector(s) differ from the tensors objects (first: key 1)" in report.problems


def test_verify_fails_when_a_key_vector_is_missing(tmp_path):
    registry = new_registry(tmp_path / "r")
    add_edit(registry, "a", seed=1)
    raw_sql(registry, "DELETE FROM key_vectors")
    report = verify(registry)
    assert any("have no vector" in p for p in report.problems)


def test_second_writer_gets_a_lock_error(tmp_path):
    import subprocess
    import sys

    new_registry(tmp_path / "r").close()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('locked', flush=True); time.sleep(30)"),
        str(tmp_path / "r" / "registry.duckdb")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        from registry.db import RegistryLocked

        with pytest.raises(RegistryLocked, match="locked by another sola process"):
            Registry.open(tmp_path / "r", writable=True, wait_seconds=0.5)
    finally:
        holder.kill()


def _near(keys: np.ndarray, distance: float, rng: np.random.Generator) -> np.ndarray:
    """Each key moved to exactly `distance` cosine distance in a random orthogonal direction."""
    noise = rng.normal(size=keys.shape).astype(np.float32)
    noise -= (noise * keys).sum(1, keepdims=True) * keys
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    cos = 1.0 - distance
    return (cos * keys + np.sqrt(1 - cos * cos) * noise).astype(np.float32)


def test_ivf_search_returns_the_exact_nearest_key_for_queries_at_the_routing_threshold():
    from registry.keyindex import FaissKeySearch, lists_for, nearest_lists, train_centroids

    rng = np.random.default_rng(0)
    keys = rng.normal(size=(12_000, 64)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    ids = np.arange(100, 100 + len(keys), dtype=np.int64)
    centroids = train_centroids(keys[::10], lists_for(len(keys)))
    ivf = FaissKeySearch.build(keys, ids, 64, (centroids, nearest_lists(keys, centroids)[0]))
    exact = FaissKeySearch.build(keys, ids, 64)
    assert not ivf.is_exact and exact.is_exact
    picks = rng.choice(len(keys), 300, replace=False)
    for distance in (0.01, 0.04):
        queries = _near(keys[picks], distance, rng)
        sims, found = ivf.search(queries)
        exact_sims, exact_found = exact.search(queries)
        assert np.array_equal(found, exact_found) and np.array_equal(found, ids[picks])
        assert np.allclose(sims, exact_sims, atol=1e-6) and np.allclose(sims, 1 - distance, atol=1e-5)


def test_key_vectors_read_back_from_flat_and_ivf_indexes_after_remove_and_add():
    """The radius ratio reads a fired key's vector back from the snapshot index (EditBank.isolation)."""
    from registry.keyindex import FaissKeySearch, nearest_lists, train_centroids

    rng = np.random.default_rng(1)
    keys = rng.normal(size=(400, 16)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    ids = np.arange(len(keys), dtype=np.int64)
    centroids = train_centroids(keys, 8)
    for search in (FaissKeySearch.build(keys, ids, 16), FaissKeySearch.build(keys, ids, 16, (centroids, nearest_lists(keys, centroids)[0]))):
        search.remove(np.array([5], dtype=np.int64))
        search.add(keys[5:6] * -1, np.array([400], dtype=np.int64))
        copy = search.copy()
        assert np.array_equal(copy.vector(7), keys[7]) and np.array_equal(copy.vector(400), -keys[5])
        with pytest.raises(RuntimeError):
            copy.vector(5)


def _ivf_registry(tmp_path, monkeypatch, n: int = 30) -> tuple[Registry, list[str]]:
    import registry.keyindex

    monkeypatch.setattr(registry.keyindex, "FLAT_LIMIT", 10)
    registry = new_registry(tmp_path / "r")
    return registry, [add_edit(registry, f"p{i}", seed=i) for i in range(n)]


def test_key_search_above_the_flat_limit_is_ivf_and_drops_revoked_keys(tmp_path, monkeypatch):
    registry, edits = _ivf_registry(tmp_path, monkeypatch)
    search, key_edit = registry.key_search(registry.head())
    assert not search.is_exact and search.size == len(edits)
    keys = np.concatenate([registry.edit_tensors(e)["keys"] for e in edits])
    sims, ids = search.search(keys)
    assert [key_edit[int(i)] for i in ids] == edits and np.allclose(sims, 1.0, atol=1e-6)
    # the in-memory head index is updated by copy + remove (what Workspace does after a revoke)
    revoked_key = next(k for k, e in key_edit.items() if e == edits[3])
    updated = search.copy()
    updated.remove(np.array([revoked_key]))
    assert updated.search(keys[3:4])[1][0] != revoked_key and search.search(keys[3:4])[1][0] == revoked_key
    # and a snapshot after the revoke, rebuilt from the cached groups, no longer holds it
    registry.set_active(edits[3], False, "tester", "wrong")
    after, after_edit = registry.key_search(registry.head())
    assert revoked_key not in after.ids().tolist() and after.size == len(edits) - 1
    assert after_edit[int(after.search(keys[4:5])[1][0])] == edits[4]
    assert verify(registry).ok, verify(registry).problems


def test_verify_fails_when_a_cached_ivf_group_is_not_the_nearest_centroid(tmp_path, monkeypatch):
    from registry.keyindex import CoarseLists

    registry, _ = _ivf_registry(tmp_path, monkeypatch)
    registry.key_search(registry.head())
    lists = CoarseLists(tmp_path / "r" / "cache")
    meta, centroids, groups = lists.load()
    best = groups.copy()
    groups[0] = (groups[0] + 1) % len(centroids)
    lists._save(meta, centroids, groups)
    report = verify(registry)
    assert any("ivf.npz puts 1 key(s) in a group that is not their nearest" in p for p in report.problems)
    lists._save(meta, centroids, best)
    assert verify(registry).ok



def test_key_matrix_stays_readable_while_another_process_rebuilds_it(tmp_path):
    """Read-only processes share one cache: while one rebuilds the matrix (here: it was left by
    another registry), another reading it meanwhile must get the complete old rows, never a
    truncated file."""
    from registry.keyindex import KeyMatrix

    rng = np.random.default_rng(0)
    old, new = rng.normal(size=(40, 8)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)
    KeyMatrix(tmp_path).sync(40, 8, lambda first, end: old[first:end], owner="r1", batch=16)
    seen_mid_write = []

    def loader_of_the_rebuilding_process(first: int, end: int) -> np.ndarray:
        seen_mid_write.append(KeyMatrix(tmp_path).rows(np.arange(40), 8))  # another process reads meanwhile
        return new[first:end]

    KeyMatrix(tmp_path).sync(50, 8, loader_of_the_rebuilding_process, owner="r2", batch=16)
    assert len(seen_mid_write) == 4 and all(np.array_equal(rows, old) for rows in seen_mid_write)
    assert np.array_equal(KeyMatrix(tmp_path).rows(np.arange(50), 8), new)
