"""History that cannot be quietly rewritten: the ref log chain, mirror columns, checkpoints, witnesses.

Each tampering test does, through raw SQL, what someone with write access to `registry.duckdb`
could do behind sola's back, as consistently as they could, and checks that `verify` (or
`verify --checkpoint` / a witness, where the registry alone cannot tell) names what was done.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from previous_release import PreviousRelease, raw_sql
from registry import checkpoint as checkpoints
from registry.catalog.duckdb import backfill_reflog_chain
from registry.store import Registry
from registry.verify import verify
from registry_helpers import BASE, ROUTING, add_edit, new_registry
from sola.cli import main


@pytest.fixture
def registry(tmp_path) -> Registry:
    opened = new_registry(tmp_path / "r")
    yield opened
    opened.close()


def problems(registry: Registry, *taken: dict, **options) -> list[str]:
    return verify(registry, [(f"checkpoint {i}", c) for i, c in enumerate(taken)], **options).problems


def only(found: list[str], *words: str) -> str:
    """The problem that names all of `words` (there must be one)."""
    matching = [p for p in found if all(w in p for w in words)]
    assert matching, found
    return matching[0]


def erase_newest_commit(registry: Registry, branch: str = "main", keep_entry: bool = False) -> str:
    """Remove the newest commit of `branch`, the edits it added and every row and object that
    mentions them, and move the branch back to its parent: a careful rewrite of the past."""
    head = registry.head(branch)
    added = [e for e, state in registry.changes(head.commit_id) if state == "active" and len(registry.edit_history(e)) == 1]
    for edit_id in added:
        row = registry.edit_row(edit_id)
        raw_sql(registry, "DELETE FROM key_vectors WHERE key_id IN (SELECT key_id FROM edit_keys WHERE edit_id = ?)", [edit_id])
        for table in ("edit_keys", "tree_members", "commit_changes", "edits"):
            raw_sql(registry, f"DELETE FROM {table} WHERE edit_id = ?", [edit_id])
        for digest in (edit_id, row["tensors_sha256"]):
            registry.objects.path(digest).unlink()
    if not raw_sql(registry, "SELECT count(*) FROM commits WHERE tree_id = ? AND commit_id <> ?", [head.tree_id, head.commit_id])[0][0]:
        raw_sql(registry, "DELETE FROM tree_members WHERE tree_id = ?", [head.tree_id])
        raw_sql(registry, "DELETE FROM trees WHERE tree_id = ?", [head.tree_id])
    for table in ("commit_changes", "commit_parents", "commits"):
        raw_sql(registry, f"DELETE FROM {table} WHERE commit_id = ?", [head.commit_id])
    raw_sql(registry, "UPDATE refs SET commit_id = ? WHERE name = ?", [head.parent_id, branch])
    if not keep_entry:
        raw_sql(registry, "DELETE FROM reflog WHERE new_commit = ?", [head.commit_id])
    shutil.rmtree(registry.root / "cache", ignore_errors=True)  # "delete it to rebuild"
    return head.commit_id


# --- the ref log chain ------------------------------------------------------------------------------
def test_a_fresh_registry_chains_every_ref_move(registry):
    add_edit(registry, "a", seed=1)
    registry.tag("v1", registry.head(), "tester")
    registry.create_branch("feature", registry.head(), "tester")
    add_edit(registry, "b", seed=2, branch="feature")
    registry.delete_branch("feature", "tester", force=True)
    entries = registry.catalog.reflog()
    assert [e.kind for e in entries] == ["branch", "branch", "tag", "branch", "branch", "branch"]
    assert entries[0].prev_hash is None
    assert all(e.prev_hash == before.entry_hash for before, e in zip(entries, entries[1:]))
    assert registry.catalog.reflog_head() == (len(entries), entries[-1].entry_hash)
    assert registry.catalog.registry_id() == registry.catalog.first_commit_id()
    report = verify(registry)
    assert report.ok, report.problems
    assert report.checked["reflog"] == len(entries)


def test_removing_the_newest_commit_and_moving_main_back(registry):
    add_edit(registry, "a", seed=1)
    add_edit(registry, "b", seed=2)
    before = checkpoints.take(registry.catalog)
    erase_newest_commit(registry)
    # The registry alone is consistent again: only a checkpoint taken before can show it.
    assert verify(registry).ok
    assert "history was truncated" in only(problems(registry, before), "checkpoint 0", "covers 3 ref log entries", "only 2")


def test_removing_the_newest_commit_but_keeping_its_ref_log_entry(registry):
    add_edit(registry, "a", seed=1)
    erased = erase_newest_commit(registry, keep_entry=True)
    only(problems(registry), "ref log entry 1", f"points at missing commit {erased[:12]}")


def test_removing_a_commit_whose_ref_log_entry_is_not_the_newest_breaks_the_chain(registry):
    add_edit(registry, "a", seed=1)
    add_edit(registry, "b", seed=2)
    registry.tag("v1", registry.resolve("main~1"), "tester")  # a later entry, on another ref
    erase_newest_commit(registry)
    found = only(problems(registry), "ref log entry 3 (v1", "does not follow ref log entry 1", "ids jump from 1 to 3")
    assert "removed" in found


def test_erasing_an_edit_and_every_row_that_mentions_it(registry):
    add_edit(registry, "a", seed=1)
    registry.create_branch("feature", registry.head(), "tester")
    secret = add_edit(registry, "erased", seed=2)  # on main
    add_edit(registry, "c", seed=3, branch="feature")  # a later write elsewhere
    erase_newest_commit(registry)
    assert not raw_sql(registry, "SELECT count(*) FROM edits WHERE edit_id = ?", [secret])[0][0]
    assert not any(secret in str(row) for table in ("edit_keys", "commit_changes", "tree_members") for row in registry.catalog.scan(table)[1])
    # its add commit's ref log entry (id 3) is gone: the entry after it no longer follows entry 2
    only(problems(registry), "ref log entry 4 (feature", "does not follow ref log entry 2", "ids jump from 2 to 4")


@pytest.mark.parametrize("column, change", [("time", "time = time - INTERVAL 1 DAY"), ("actor", "actor = 'mallory'"),
                                            ("reason", "reason = 'routine'"), ("new_commit", "new_commit = old_commit")])
def test_changing_a_ref_log_entry(registry, column, change):
    add_edit(registry, "a", seed=1)
    add_edit(registry, "b", seed=2)
    raw_sql(registry, f"UPDATE reflog SET {change} WHERE id = 1")
    only(problems(registry), "ref log entry 1 (main", "content does not hash to its entry hash")


def test_a_rewritten_and_rehashed_ref_log_is_caught_by_a_checkpoint(registry):
    """The chain has no secret: a writer can change an entry's time and recompute every hash
    after it, and the registry alone looks right. The checkpoint taken before does not."""
    add_edit(registry, "a", seed=1)
    add_edit(registry, "b", seed=2)
    before = checkpoints.take(registry.catalog)
    raw_sql(registry, "UPDATE reflog SET time = time - INTERVAL 30 DAY, actor = 'mallory' WHERE id = 1")
    backfill_reflog_chain(registry.catalog.db)
    assert verify(registry).ok
    found = only(problems(registry, before), "checkpoint 0", "ref log entry number 3 (id 2) does not hash to the checkpoint's head")
    assert "changed or removed" in found


def test_inserting_a_ref_log_entry_is_caught(registry):
    add_edit(registry, "a", seed=1)
    head = registry.head().commit_id
    raw_sql(registry, "INSERT INTO reflog (id, ref, old_commit, new_commit, actor, time, reason) VALUES (7, 'main', ?, ?, 'mallory', now(), 'x')",
            [head, head])
    only(problems(registry), "ref log entry 7", "not chained")


@pytest.mark.parametrize("how", ["ref row", "ref row and its entry", "kind", "moved"])
def test_deleting_or_changing_a_tag(registry, how):
    add_edit(registry, "a", seed=1)
    registry.tag("v1", registry.head(), "tester")
    add_edit(registry, "b", seed=2)  # a later entry
    v1 = registry.catalog.reflog("v1")[0]
    if how == "ref row":
        raw_sql(registry, "DELETE FROM refs WHERE name = 'v1'")
        only(problems(registry), "tag v1: deleted", f"ref log entry {v1.id} created it")
    elif how == "ref row and its entry":
        raw_sql(registry, "DELETE FROM refs WHERE name = 'v1'")
        raw_sql(registry, "DELETE FROM reflog WHERE ref = 'v1'")
        only(problems(registry), f"ref log entry {v1.id + 1} (main", f"does not follow ref log entry {v1.id - 1}", "removed")
    elif how == "kind":  # turned into a branch, which could then be moved
        raw_sql(registry, "UPDATE refs SET kind = 'branch' WHERE name = 'v1'")
        only(problems(registry), "ref v1: is a branch but its ref log made it a tag")
    else:
        raw_sql(registry, "UPDATE refs SET commit_id = ? WHERE name = 'v1'", [registry.head().commit_id])
        only(problems(registry), "ref v1", "ref log does not end at the ref's commit")


def test_deleting_the_newest_tag_and_its_entry_is_caught_by_a_checkpoint(registry):
    add_edit(registry, "a", seed=1)
    registry.tag("v1", registry.head(), "tester")
    before = checkpoints.take(registry.catalog)
    raw_sql(registry, "DELETE FROM refs WHERE name = 'v1'")
    raw_sql(registry, "DELETE FROM reflog WHERE ref = 'v1'")
    only(problems(registry, before), "checkpoint 0", "truncated")


def test_moving_a_tag_through_sola_after_turning_it_into_a_branch(registry):
    add_edit(registry, "a", seed=1)
    registry.tag("v1", registry.head(), "tester")
    add_edit(registry, "b", seed=2)
    raw_sql(registry, "UPDATE refs SET kind = 'branch' WHERE name = 'v1'")
    registry.fast_forward("v1", registry.head("v1"), registry.head(), "mallory", "move the tag")
    found = problems(registry)
    only(found, "tag v1: moved or deleted after creation")
    assert verify(registry).checked["reflog"] == 5 and not any("does not hash" in p for p in found)


# --- mirror columns ------------------------------------------------------------------------------------
def test_changing_an_edit_rows_created_at(registry):
    edit = add_edit(registry, "a", seed=1)
    raw_sql(registry, "UPDATE edits SET created_at = created_at - INTERVAL 1 YEAR WHERE edit_id = ?", [edit])
    only(problems(registry), f"edit {edit[:12]}", "'created_at' differs from its provenance object")


@pytest.mark.parametrize("column", ["author", "reason", "source", "subject", "prompt", "target"])
def test_every_provenance_mirror_column_is_checked(registry, column):
    edit = add_edit(registry, "a", seed=1)
    raw_sql(registry, f"UPDATE edits SET {column} = 'forged' WHERE edit_id = ?", [edit])
    only(problems(registry), f"edit {edit[:12]}", f"'{column}' differs from its provenance object")


@pytest.mark.parametrize("statement, words", [
    ("UPDATE commits SET parent_id = NULL WHERE op = 'add'", ("'parent_id' differs from its first parent",)),
    ("UPDATE commit_changes SET active = NOT active", ("change row field 'active' differs",)),
    ("UPDATE commit_changes SET seq = seq + 100", ("change row field 'seq' differs",)),
    ("UPDATE commits SET time = time - INTERVAL 1 DAY WHERE op = 'add'", ("content does not hash to its id",)),
])
def test_commit_columns_are_covered(registry, statement, words):
    add_edit(registry, "a", seed=1)
    raw_sql(registry, statement)
    only(problems(registry), *words)


# --- checkpoints ------------------------------------------------------------------------------------
def test_a_checkpoint_holds_while_history_grows_and_names_what_it_covers(registry):
    first = checkpoints.take(registry.catalog)
    assert first["length"] == 1 and first["registry"] == registry.catalog.first_commit_id()
    assert json.loads(checkpoints.dumps(first)) == first and checkpoints.dumps(first) == checkpoints.dumps(json.loads(checkpoints.dumps(first)))
    add_edit(registry, "a", seed=1)
    registry.tag("v1", registry.head(), "tester")
    second = checkpoints.take(registry.catalog)
    assert second["length"] == 3
    report = verify(registry, [("first", first), ("second", second)])
    assert report.ok and report.checked["checkpoints"] == 2, report.problems


@pytest.mark.parametrize("broken, words", [
    ({"format": "other"}, ("not a sola checkpoint",)),
    ({"length": -1}, ("not a count",)),
    ({"length": True}, ("not a count",)),
    ({"time": "yesterday"}, ("not an ISO 8601 time",)),
    ({"head": "00" * 32}, ("does not hash to the checkpoint's head",)),
])
def test_a_malformed_or_wrong_checkpoint_fails(registry, broken, words):
    taken = dict(checkpoints.take(registry.catalog), **broken)
    only(problems(registry, taken), "checkpoint 0", *words)


def test_a_checkpoint_of_another_registry_fails(registry, tmp_path):
    other = new_registry(tmp_path / "other")
    theirs = checkpoints.take(other.catalog)
    other.close()
    only(problems(registry, theirs), "checkpoint 0", "is of another registry")


def test_signed_checkpoints(registry, tmp_path):
    add_edit(registry, "a", seed=1)
    made = checkpoints.new_key(tmp_path / "key.pem")
    assert (tmp_path / "key.pem").stat().st_mode & 0o077 == 0
    public = checkpoints.load_public_key(Path(made["public_key"]))
    signed = checkpoints.sign(checkpoints.take(registry.catalog), tmp_path / "key.pem")
    assert signed["signature"]["public_key"] == public.hex() == made["public_key_hex"]
    assert verify(registry, [("signed", signed)], public).ok
    assert verify(registry, [("signed", signed)]).ok  # checked against the key it names
    value = signed["signature"]["value"]  # its first byte flipped (a fixed "00" is the real one 1 time in 256)
    forged_value = dict(signed, signature=dict(signed["signature"], value=f"{int(value[:2], 16) ^ 0xFF:02x}" + value[2:]))
    only(problems(registry, forged_value), "signature that does not match its content")
    forged_length = dict(signed, length=1)  # an older, shorter claim under the same signature
    only(problems(registry, forged_length), "signature that does not match its content")
    other = checkpoints.load_public_key(Path(checkpoints.new_key(tmp_path / "other.pem")["public_key"]))
    only(problems(registry, signed, public_key=other), "signed by another key")
    only(problems(registry, checkpoints.take(registry.catalog), public_key=public), "is not signed")
    with pytest.raises(checkpoints.RegistryError, match="already exists"):
        checkpoints.new_key(tmp_path / "key.pem")


# --- the witness file ---------------------------------------------------------------------------------
def test_every_write_appends_its_checkpoint_to_the_witness(tmp_path, monkeypatch):
    witness = tmp_path / "elsewhere" / "witness.log"
    witness.parent.mkdir()
    monkeypatch.setenv("SOLA_WITNESS", str(witness))
    registry = new_registry(tmp_path / "r")
    add_edit(registry, "a", seed=1)
    registry.tag("v1", registry.head(), "tester")
    registry.protect("main", 1, "lead")  # a write that moves no ref: its checkpoint repeats the head
    lines = [json.loads(line) for line in witness.read_text().splitlines()]
    assert [c["length"] for c in lines] == [1, 2, 3, 3]
    assert lines[-1]["head"] == registry.catalog.reflog_head()[1]
    report = verify(registry, witness=witness)
    assert report.ok and report.checked["witness_checkpoints"] == 4, report.problems
    erase_newest_commit_and_tag(registry)
    only(verify(registry, witness=witness).problems, f"witness {witness} line 3", "truncated")
    registry.close()


def erase_newest_commit_and_tag(registry: Registry) -> None:
    raw_sql(registry, "DELETE FROM refs WHERE name = 'v1'")
    raw_sql(registry, "DELETE FROM reflog WHERE ref = 'v1'")
    erase_newest_commit(registry)


def test_an_unwritable_witness_refuses_the_write_before_anything_is_recorded(registry, tmp_path, monkeypatch):
    log_before = [c.commit_id for c in registry.log()]
    monkeypatch.setenv("SOLA_WITNESS", str(tmp_path / "no" / "such" / "dir" / "witness.log"))
    with pytest.raises(checkpoints.RegistryError, match="cannot open the witness file"):
        registry.tag("v1", registry.head(), "tester")
    assert [c.commit_id for c in registry.log()] == log_before and registry.catalog.ref("v1") is None


def test_a_damaged_witness_line_and_other_registries_lines(registry, tmp_path):
    other = new_registry(tmp_path / "other")
    witness = tmp_path / "witness.log"
    witness.write_text(checkpoints.dumps(checkpoints.take(other.catalog)) + "\n"
                       + checkpoints.dumps(checkpoints.take(registry.catalog)) + "\n{\"format\": \"sola.chec\n")
    other.close()
    report = verify(registry, witness=witness)
    only(report.problems, "line 3", "not JSON")
    assert any("1 checkpoint(s) of other registries skipped" in n for n in report.notes)
    witness.write_text(witness.read_text().splitlines()[0] + "\n")
    only(verify(registry, witness=witness).problems, "holds no checkpoint of this registry")


# --- the migration ---------------------------------------------------------------------------------------
def test_migration_chains_a_previous_release_ref_log(tmp_path):
    old = PreviousRelease(tmp_path / "old", 3, BASE, dict(ROUTING, revoke_mode="tombstone"))
    a = old.add("a", seed=1)
    old.add("b", seed=2)
    old.tag("v1")
    old.revoke(a)
    old.close()
    registry = Registry.open(tmp_path / "old", writable=True)
    entries = registry.catalog.reflog()
    assert len(entries) == 5 and all(e.entry_hash for e in entries)
    assert {e.ref: e.kind for e in entries} == {"main": "branch", "v1": "tag"}
    report = verify(registry)
    assert report.ok, report.problems
    before = checkpoints.take(registry.catalog)
    add_edit(registry, "c", seed=3)
    assert verify(registry, [("before", before)]).ok
    raw_sql(registry, "UPDATE reflog SET actor = 'mallory' WHERE ref = 'v1'")
    only(problems(registry), "ref log entry 1003 (v1", "content does not hash")
    registry.close()


# --- the command line ---------------------------------------------------------------------------------------
class Cli:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int = 0, env: dict | None = None):
        result = self.runner.invoke(main, ["--registry", str(self.root), *args], catch_exceptions=False, env=env)
        assert result.exit_code == code, (result.stdout, result.stderr)
        return result

    def error(self, *args: str, env: dict | None = None) -> str:
        result = self(*args, code=1, env=env)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        return lines[0]


@pytest.fixture
def cli(tmp_path) -> Cli:
    registry = new_registry(tmp_path / "reg")
    add_edit(registry, "a", seed=1)
    registry.close()
    return Cli(tmp_path / "reg")


def test_cli_checkpoint_sign_and_verify(cli, tmp_path):
    made = json.loads(cli("checkpoint", "--new-key", str(tmp_path / "key.pem"), "--json").stdout)
    assert Path(made["private_key"]).is_file() and Path(made["public_key"]).is_file()
    statement = cli("checkpoint", "--sign", str(tmp_path / "key.pem")).stdout
    assert statement.count("\n") == 1 and json.loads(statement)["length"] == 2
    (tmp_path / "cp.json").write_text(statement)
    ok = cli("verify", "--checkpoint", str(tmp_path / "cp.json"), "--public-key", made["public_key"], "--json")
    assert json.loads(ok.stdout)["checked"]["checkpoints"] == 1
    tampered = json.loads(statement)
    tampered["signature"]["value"] = tampered["signature"]["value"][::-1]
    (tmp_path / "bad.json").write_text(json.dumps(tampered, indent=2))
    assert "signature that does not match" in cli.error("verify", "--checkpoint", str(tmp_path / "bad.json"))
    unsigned = tmp_path / "plain.json"
    unsigned.write_text(cli("checkpoint", "--json").stdout)
    assert "is not signed" in cli.error("verify", "--checkpoint", str(unsigned), "--public-key", made["public_key"])
    assert "already exists" in cli.error("checkpoint", "--new-key", str(tmp_path / "key.pem"))
    assert "not an unencrypted PEM private key" in cli.error("checkpoint", "--sign", made["public_key"])
    assert "no checkpoint file" in cli.error("verify", "--checkpoint", str(tmp_path / "missing.json"))


def test_cli_truncation_fails_verify_checkpoint(cli, tmp_path):
    (tmp_path / "cp.json").write_text(cli("checkpoint").stdout)
    cli("verify", "--checkpoint", str(tmp_path / "cp.json"))
    with Registry.open(cli.root, writable=True) as registry:
        erase_newest_commit(registry)
    cli("verify")  # on its own the truncated registry is consistent
    assert "truncated" in cli.error("verify", "--checkpoint", str(tmp_path / "cp.json"))


def test_cli_checkpoint_of_another_registry_fails(cli, tmp_path):
    other = new_registry(tmp_path / "other")
    (tmp_path / "theirs.json").write_text(checkpoints.dumps(checkpoints.take(other.catalog)))
    other.close()
    assert "is of another registry" in cli.error("verify", "--checkpoint", str(tmp_path / "theirs.json"))


def test_cli_witness_option_and_environment(cli, tmp_path):
    witness = tmp_path / "witness.log"
    cli("--witness", str(witness), "tag", "v1")
    cli("tag", "v2", env={"SOLA_WITNESS": str(witness)})
    cli("tag", "v3")  # not witnessed: the next witnessed write's checkpoint covers it
    assert [json.loads(line)["length"] for line in witness.read_text().splitlines()] == [3, 4]
    assert json.loads(cli("verify", "--witness", str(witness), "--json").stdout)["checked"]["witness_checkpoints"] == 2
    assert "witness_checkpoints" in json.loads(cli("--witness", str(witness), "verify", "--json").stdout)["checked"]
    with Registry.open(cli.root, writable=True) as registry:
        raw_sql(registry, "DELETE FROM refs WHERE name IN ('v2', 'v3')")
        raw_sql(registry, "DELETE FROM reflog WHERE ref IN ('v2', 'v3')")
    cli("verify")
    assert "truncated" in cli.error("verify", env={"SOLA_WITNESS": str(witness)})
    missing = cli.error("--witness", str(tmp_path / "nowhere" / "w.log"), "tag", "v4")
    assert "cannot open the witness file" in missing and "nothing was written" in missing
    with Registry.open(cli.root) as registry:
        assert registry.catalog.ref("v4") is None
