"""Shared registries through the CLI: a real PostgreSQL catalog and S3 objects (tests/servers.py),
used from two registry directories as two hosts would, and copied to and from local storage."""

from __future__ import annotations

import json

import pytest

from registry.storage import STORAGE_FILE
from registry.store import Registry
from registry.verify import verify
from registry_helpers import add_edit, new_registry, replace_stored
from test_cli import PROMPT, Sola


@pytest.fixture
def shared(postgres_server, s3_server):
    """(catalog URL, objects URL) of a fresh schema and a fresh bucket."""
    return postgres_server.url(), s3_server.url()


def test_two_directories_share_one_registry_on_postgres_and_s3(tmp_path, tiny_dirs, shared):
    catalog, objects = shared
    first, second = Sola(tmp_path / "host-a"), Sola(tmp_path / "host-b")
    made = first.json("init", "--model", str(tiny_dirs["llama"]), "--threshold", "0.001", "--catalog", catalog, "--objects", objects)
    assert sorted(p.name for p in (tmp_path / "host-a").iterdir()) == [STORAGE_FILE]  # no registry.duckdb, no objects/
    assert json.loads((tmp_path / "host-a" / STORAGE_FILE).read_text()) == {"format": "sola.storage/1", "catalog": catalog, "objects": objects}
    joined = second.json("init", "--join", "--catalog", catalog, "--objects", objects)
    assert joined["commit"] == made["commit"]

    edit = first.json("edit", "--prompt", PROMPT, "--target", "Madrid", "--reason", "demo", "--steps", "100")
    answered = second.json("generate", PROMPT, "--max-new-tokens", "4")  # reads the LoRA from S3 into host-b's cache
    assert answered["edit"] == edit["edit"] and answered["text"].startswith(" Madrid")
    second.json("revoke", edit["edit"][:10], "--reason", "wrong")
    log = first.json("log")
    assert [c["op"] for c in log][:2] == ["revoke", "add"]
    assert first.json("generate", PROMPT, "--max-new-tokens", "4")["edit"] is None
    for host in (first, second):
        assert host.json("verify")["ok"]


def test_init_refuses_bad_shared_storage_before_anything_is_written(tmp_path, postgres_server, s3_server, tiny_dirs):
    cli = Sola(tmp_path / "r")
    good_catalog, good_objects = postgres_server.url(), s3_server.url()
    cases = [
        (["--catalog", f"postgresql://postgres:secret@127.0.0.1:{postgres_server.port}/sola_test"], "must not hold a password"),
        (["--catalog", "mysql://x@127.0.0.1/db"], "expected postgresql://"),
        (["--catalog", good_catalog.replace("?schema=", "?schema=Bad-Name")], "lower-case SQL name"),
        (["--catalog", f"postgresql://postgres@127.0.0.1:{postgres_server.port + 1 if postgres_server.port < 65535 else 1}/sola_test"],
         "cannot reach the catalog"),
        (["--catalog", good_catalog, "--objects", f"s3://no-such-bucket-here/p?endpoint_url={s3_server.endpoint}"], "cannot reach the object store"),
        (["--objects", "ftp://host/x"], "expected s3://"),
        (["--join", "--catalog", good_catalog], "no registry in the catalog"),
        (["--join", "--objects", good_objects], "--join needs --catalog"),
    ]
    for args, message in cases:
        line = cli.fails("init", "--model", str(tiny_dirs["llama"]), *args) if "--join" not in args else cli.fails("init", *args)
        assert message in line, (args, line)
        assert not (tmp_path / "r" / STORAGE_FILE).exists() and not (tmp_path / "r" / "registry.duckdb").exists()


def test_a_second_registry_in_the_same_schema_is_refused(tmp_path, tiny_dirs, shared):
    catalog, objects = shared
    Sola(tmp_path / "a").json("init", "--model", str(tiny_dirs["llama"]), "--catalog", catalog, "--objects", objects)
    line = Sola(tmp_path / "b").fails("init", "--model", str(tiny_dirs["llama"]), "--catalog", catalog)
    assert "already holds a registry" in line and "--join" in line
    assert not (tmp_path / "b" / STORAGE_FILE).exists()


@pytest.mark.parametrize("layout", ["postgres", "duckdb+s3"])
def test_either_backend_alone_is_shared_and_verified(tmp_path, postgres_server, s3_server, layout):
    from registry.storage import Storage

    storage = Storage(postgres_server.url(), None) if layout == "postgres" else Storage(None, s3_server.url())
    registry = new_registry(tmp_path / "r", storage)
    a = add_edit(registry, "a", seed=1)
    add_edit(registry, "b", seed=2)
    registry.set_active(a, False, "tester", "wrong")
    registry.close()
    with Registry.open(tmp_path / "r") as reopened:
        assert reopened.edit_row(a)["prompt"] == "a" and len(reopened.active_edit_ids(reopened.head())) == 1
        assert verify(reopened).ok, verify(reopened).problems
    on_disk = {p.name for p in (tmp_path / "r").iterdir()}
    assert ("registry.duckdb" in on_disk) == (layout == "duckdb+s3") and ("objects" in on_disk) == (layout == "postgres")


def test_migrate_storage_to_shared_and_back_keeps_every_id(tmp_path, shared):
    catalog, objects = shared
    local = new_registry(tmp_path / "local", revoke_mode="tombstone")
    a = add_edit(local, "a", seed=1)
    add_edit(local, "b", seed=2)
    local.set_active(a, False, "tester", "wrong")
    local.tag("v1", local.head(), "tester")
    local.create_branch("side", local.head(), "tester")
    add_edit(local, "c", seed=3, branch="side")
    before = (sorted(c.commit_id for c in local.all_commits()), local.catalog.refs(), local.catalog.reflog_head())
    local.close()

    up = Sola(tmp_path / "local").json("migrate-storage", "--to", str(tmp_path / "shared"), "--to-catalog", catalog, "--to-objects", objects)
    assert up["ids_unchanged"] and up["verify"]["ok"] and up["objects_copied"] == 6 and up["commits"] == len(before[0])
    down = Sola(tmp_path / "shared").json("migrate-storage", "--to", str(tmp_path / "back"))
    assert down["ids_unchanged"] and down["verify"]["ok"]
    for root in ("shared", "back"):
        with Registry.open(tmp_path / root) as copy:
            assert (sorted(c.commit_id for c in copy.all_commits()), copy.catalog.refs(), copy.catalog.reflog_head()) == before
            assert copy.tombstoned_edit_ids(copy.head()) == {a}
    with Registry.open(tmp_path / "local") as source:  # the source is never changed
        assert (sorted(c.commit_id for c in source.all_commits()), source.catalog.refs(), source.catalog.reflog_head()) == before


def test_migrate_storage_refuses_a_damaged_source_object_and_leaves_no_registry(tmp_path, shared):
    catalog, objects = shared
    local = new_registry(tmp_path / "local")
    a = add_edit(local, "a", seed=1)
    replace_stored(local, local.edit_row(a)["tensors_sha256"], b"not the tensors")
    local.close()
    line = Sola(tmp_path / "local").fails("migrate-storage", "--to", str(tmp_path / "copy"), "--to-catalog", catalog, "--to-objects", objects)
    assert "corrupted" in line
    assert not (tmp_path / "copy" / STORAGE_FILE).exists()
    line = Sola(tmp_path / "copy").fails("log")
    assert "no registry" in line
    line = Sola(tmp_path / "local").fails("migrate-storage", "--to", str(tmp_path / "local-copy"))  # a local target
    assert "corrupted" in line
    assert not list((tmp_path / "local-copy").glob("registry.duckdb*"))


def test_verify_on_a_shared_store_sees_a_tampered_s3_object_behind_the_local_cache(tmp_path, shared):
    from registry.storage import Storage

    registry = new_registry(tmp_path / "r", Storage(*shared))
    a = add_edit(registry, "a", seed=1)
    registry.edit_lora(a)  # now cached under cache/objects/
    replace_stored(registry, registry.edit_row(a)["tensors_sha256"], b"tampered")
    problems = verify(registry).problems
    assert any("corrupted" in p for p in problems), problems


def test_both_catalogs_have_the_same_tables_and_columns_at_the_same_version(tmp_path, postgres_server):
    from registry.catalog.sql import TABLES
    from registry.db import latest_version, migration_files
    from registry.storage import Storage

    duckdb_versions = {v for v, _, _ in migration_files()}
    postgres_versions = {v for v, _, _ in migration_files("migrations.postgres")}
    first = min(postgres_versions)
    assert latest_version() == latest_version("migrations.postgres")
    assert {v for v in duckdb_versions if v > first} == {v for v in postgres_versions if v > first}  # later versions come in pairs
    local, shared = new_registry(tmp_path / "a"), new_registry(tmp_path / "b", Storage(postgres_server.url(), None))
    for table in TABLES:
        assert local.catalog.scan(table)[0] == [c for c in shared.catalog.scan(table)[0] if c != "rowid"], table
    assert local.catalog.schema_version() == shared.catalog.schema_version() == latest_version()


def test_a_server_on_one_host_follows_commits_made_from_another(tmp_path, tiny_dirs, shared):
    """`sola serve` on a joined directory: an edit and a revoke made through another directory
    reach its answers without a restart (its ref watcher polls the Postgres ref log)."""
    import time

    from test_serve import Served

    catalog, objects = shared
    writer = Sola(tmp_path / "writer")
    writer.json("init", "--model", str(tiny_dirs["llama"]), "--threshold", "0.001", "--catalog", catalog, "--objects", objects)
    Sola(tmp_path / "replica").json("init", "--join", "--catalog", catalog, "--objects", objects)
    server = Served(tmp_path / "replica")
    try:
        client = server.client()

        def served_edit_once(expected_commit: str) -> list:
            deadline = time.monotonic() + 10
            while True:
                answer = client.completions.create(model="main", prompt=PROMPT, max_tokens=3)
                if answer.model_extra["sola"]["commit"] == expected_commit or time.monotonic() > deadline:
                    return [answer.model_extra["sola"]["commit"], answer.model_extra["sola"]["edits"]]
                time.sleep(0.1)

        made = writer.json("edit", "--prompt", PROMPT, "--target", "Madrid", "--steps", "100")
        assert served_edit_once(made["commit"]) == [made["commit"], [made["edit"]]]
        revoked = writer.json("revoke", made["edit"], "--reason", "withdrawn")
        assert served_edit_once(revoked["commit"]) == [revoked["commit"], [None]]
    finally:
        server.stop()


def test_readers_never_wait_for_a_postgres_writer_and_a_second_writer_gets_the_lock_error(tmp_path, postgres_server):
    import subprocess
    import sys
    from pathlib import Path

    from registry.storage import Storage

    registry = new_registry(tmp_path / "r", Storage(postgres_server.url(), None))
    add_edit(registry, "a", seed=1)
    registry.close()
    with Registry.open(tmp_path / "r", writable=True):  # this process now holds the writer lock
        # a DuckDB file held by a writer makes a reader retry, then fail; here it just reads
        log = subprocess.run([str(Path(sys.executable).parent / "sola"), "--registry", str(tmp_path / "r"), "log", "--json"],
                             capture_output=True, text=True)
        assert log.returncode == 0 and [c["op"] for c in json.loads(log.stdout)] == ["add", "init"], log.stderr
        line = Sola(tmp_path / "r").fails("tag", "v1", "--wait", "0.5")
        assert line == "error: registry is locked by another sola writer"
    Sola(tmp_path / "r").json("tag", "v1")  # the lock went with the session
