"""The store: content addressing, history, revisions, time travel, tags, migrations, integrity."""

from __future__ import annotations

import time

import pytest

from registry.db import connect, migrate, schema_version, latest_version
from registry.inspect import revoked_report
from registry.store import Registry, RegistryError
from registry.verify import verify
from registry_helpers import BASE, ROUTING, add_edit, new_registry


def test_edit_id_is_the_sha256_of_its_provenance_bytes(tmp_path):
    import hashlib

    registry = new_registry(tmp_path / "r")
    edit = add_edit(registry, "p1")
    assert hashlib.sha256(registry.objects.path(edit).read_bytes()).hexdigest() == edit
    tensors_sha = registry.edit_row(edit)["tensors_sha256"]
    assert hashlib.sha256(registry.objects.path(tensors_sha).read_bytes()).hexdigest() == tensors_sha


def test_same_active_set_gives_the_same_tree_id(tmp_path):
    registry = new_registry(tmp_path / "r")
    a = add_edit(registry, "a", seed=1)
    after_a = registry.head()
    b = add_edit(registry, "b", seed=2)
    registry.set_active(b, False, "tester", "wrong")
    after_revoke = registry.head()
    assert after_revoke.commit_id != after_a.commit_id
    assert after_revoke.tree_id == after_a.tree_id
    assert registry.active_edit_ids(after_revoke) == [a]


def test_revisions_resolve_by_ref_prefix_and_ancestry(tmp_path):
    registry = new_registry(tmp_path / "r")
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


def test_point_in_time_resolves_to_what_main_pointed_at(tmp_path):
    registry = new_registry(tmp_path / "r")
    first = add_edit(registry, "a", seed=1)
    between = registry.head()
    time.sleep(0.01)
    add_edit(registry, "b", seed=2)
    at = registry.resolve(at=between.time.isoformat())
    assert at.commit_id == between.commit_id
    assert registry.active_edit_ids(at) == [first]
    with pytest.raises(RegistryError, match="before the first commit"):
        registry.resolve(at="2000-01-01T00:00:00Z")


def test_tags_are_immutable(tmp_path):
    registry = new_registry(tmp_path / "r")
    add_edit(registry, "a")
    registry.tag("v1", registry.head(), "tester")
    add_edit(registry, "b", seed=3)
    with pytest.raises(RegistryError, match="immutable"):
        registry.tag("v1", registry.head(), "tester")
    assert registry.resolve("v1").seq == 1


def test_diff_lists_added_and_removed_edits(tmp_path):
    registry = new_registry(tmp_path / "r")
    a = add_edit(registry, "a", seed=1)
    b = add_edit(registry, "b", seed=2)
    registry.set_active(a, False, "tester", "obsolete")
    changes = registry.diff(registry.resolve("main~2"), registry.head())
    assert changes == {"added": [b], "removed": [a]}


def test_revoke_twice_and_restore_active_are_refused(tmp_path):
    registry = new_registry(tmp_path / "r")
    a = add_edit(registry, "a")
    registry.set_active(a, False, "tester", "r1")
    with pytest.raises(RegistryError, match="already revoked"):
        registry.set_active(a, False, "tester", "r2")
    registry.set_active(a, True, "tester", "back")
    with pytest.raises(RegistryError, match="already active"):
        registry.set_active(a, True, "tester", "again")


def test_revoked_report_names_who_when_why_and_live_span(tmp_path):
    registry = new_registry(tmp_path / "r")
    a = add_edit(registry, "a")
    registry.set_active(a, False, "auditor", "false fact")
    [item] = revoked_report(registry)
    assert (item["edit"], item["revoked_by"], item["reason"]) == (a, "auditor", "false fact")
    assert item["commit"] == registry.head().commit_id
    assert len(item["live"]) == 1 and item["live"][0]["until"] == item["revoked_at"]


def test_key_search_cache_is_rebuilt_after_deletion(tmp_path):
    import shutil

    registry = new_registry(tmp_path / "r")
    a = add_edit(registry, "a", seed=1)
    search, key_edit = registry.key_search(registry.head())
    key = registry.edit_tensors(a)["keys"]
    shutil.rmtree(tmp_path / "r" / "cache")
    rebuilt, rebuilt_edit = registry.key_search(registry.head())
    sims, ids = rebuilt.search(key)
    assert rebuilt_edit[int(ids[0])] == a and sims[0] == pytest.approx(1.0, abs=1e-6)


def test_verify_passes_on_a_healthy_registry(tmp_path):
    registry = new_registry(tmp_path / "r")
    a = add_edit(registry, "a", seed=1)
    add_edit(registry, "b", seed=2)
    registry.set_active(a, False, "tester", "x")
    registry.key_search(registry.head())
    report = verify(registry)
    assert report.ok, report.problems


def test_verify_detects_a_flipped_byte_in_an_object(tmp_path):
    registry = new_registry(tmp_path / "r")
    a = add_edit(registry, "a")
    path = registry.objects.path(registry.edit_row(a)["tensors_sha256"])
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    report = verify(registry)
    assert not report.ok and any("corrupted" in p for p in report.problems)


def test_verify_detects_an_edited_commit_row(tmp_path):
    registry = new_registry(tmp_path / "r")
    add_edit(registry, "a")
    registry.db.execute("UPDATE commits SET author = 'mallory' WHERE op = 'add'")
    report = verify(registry)
    assert any("does not hash to its id" in p for p in report.problems)


def test_verify_detects_a_deleted_object(tmp_path):
    registry = new_registry(tmp_path / "r")
    a = add_edit(registry, "a")
    registry.objects.path(a).unlink()
    report = verify(registry)
    assert any("missing" in p for p in report.problems)


def test_previous_schema_is_upgraded_on_open(tmp_path):
    root = tmp_path / "old"
    root.mkdir()
    connection = connect(root / "registry.duckdb", read_only=False)
    migrate(connection, up_to=1)
    assert schema_version(connection) == 1
    connection.close()
    # A version-1 registry made by the version-1 code: fill it through the store, then reopen.
    registry = Registry(root, connect(root / "registry.duckdb", read_only=False), writable=True)
    with registry.transaction():
        registry.db.execute("INSERT INTO registry_config VALUES ('base_model', ?)", [__import__("json").dumps(BASE)])
        registry.db.execute("INSERT INTO registry_config VALUES ('routing', ?)", [__import__("json").dumps(ROUTING)])
        registry._append_commit([], "tester", "init", "init", None)
    add_edit(registry, "a")
    registry.close()
    upgraded = Registry.open(root)
    assert schema_version(upgraded.db) == latest_version() >= 2
    indexes = {r[0] for r in upgraded.db.execute("SELECT index_name FROM duckdb_indexes()").fetchall()}
    assert "commit_changes_edit" in indexes
    assert verify(upgraded).ok


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
