"""Edit sets through the CLI, as a governance team would use them, on a tiny Llama."""

from __future__ import annotations

import json

import pytest

from test_cli import PROMPT, Sola

OTHER = "Toko Yasuda plays the"


@pytest.fixture
def sola(tmp_path, tiny_dirs) -> Sola:
    cli = Sola(tmp_path / "reg")
    cli("init", "--model", str(tiny_dirs["llama"]), "--threshold", "0.001")
    return cli


def state(sola: Sola) -> tuple:
    """What must not change when a command fails: history, refs, reviews."""
    return (json.dumps(sola.json("audit")), json.dumps(sola.json("branch")), json.dumps(sola.json("review", "list")))


def test_propose_review_merge_tag_blame_and_export_a_variant(sola, tmp_path):
    base = sola.json("edit", "--prompt", OTHER, "--target", "piano", "--author", "alice")
    sola("protect", "main", "--reviews", "1", "--author", "admin")
    assert sola.fails("edit", "--prompt", PROMPT, "--target", "Rome").startswith("error: branch 'main' is protected")
    assert sola.json("branch", "proposal", "--author", "alice")["commit"] == base["commit"]
    proposed = sola.json("edit", "--prompt", PROMPT, "--target", "Rome", "--branch", "proposal", "--author", "alice")
    assert sola.json("generate", PROMPT, "--rev", "proposal")["edit"] == proposed["edit"]
    assert sola.json("generate", PROMPT)["edit"] is None
    assert "needs 1 approval" in sola.fails("merge", "proposal", "--into", "main", "--reason", "ship", "--author", "alice")
    assert "someone else" in sola.fails("review", "approve", "proposal", "--into", "main", "--author", "alice")
    approval = sola.json("review", "approve", "proposal", "--into", "main", "--author", "carol", "--reason", "sources checked")
    assert approval["approvals"] == 1 and approval["required"] == 1
    merged = sola.json("merge", "proposal", "--into", "main", "--reason", "release 2", "--author", "alice")
    assert merged["fast_forward"] and merged["added"] == [proposed["edit"]] and merged["conflicts"] == []
    assert sola.json("generate", PROMPT)["edit"] == proposed["edit"]
    sola("tag", "v2")
    blamed = sola.json("blame", PROMPT, "--generate", "--max-new-tokens", "3")
    assert [(e["op"], e["edit"], e["author"]) for e in blamed] == [("add", proposed["edit"], "alice")]
    assert blamed[0]["text"] == sola.json("generate", PROMPT, "--rev", blamed[0]["commit"], "--max-new-tokens", "3")["text"]
    variant = sola.json("snapshot", "eu", "--from", "v2", "--exclude", base["edit"])
    assert variant["edits"] == [proposed["edit"]]
    exported = sola.json("export", "eu", str(tmp_path / "eu"))
    assert exported["edits"] == 1 and exported["commit"] == variant["commit"]
    listed = {b["name"]: b for b in sola.json("branch")}
    assert listed["main"]["protected"] and listed["main"]["reviews"] == 1 and not listed["eu"]["protected"]
    assert sola.json("verify")["ok"]


def test_a_conflicting_merge_lists_its_conflicts_exits_1_and_writes_nothing(sola):
    made = sola.json("edit", "--prompt", PROMPT, "--target", "Rome")
    sola("branch", "feature")
    sola("revoke", made["edit"], "--reason", "wrong", "--branch", "feature")
    sola("restore", made["edit"], "--reason", "right after all", "--branch", "feature")
    sola("revoke", made["edit"], "--reason", "wrong on main")
    before = state(sola)
    result = sola("merge", "feature", "--into", "main", "--reason", "x", "--json", ok=False)
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["commit"] is None and [c["kind"] for c in report["conflicts"]] == ["revoked-vs-kept"]
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] and state(sola) == before
    resolved = sola.json("merge", "feature", "--into", "main", "--reason", "keep", "--resolve", f"{made['edit'][:12]}=theirs")
    assert resolved["commit"] and sola.json("generate", PROMPT)["edit"] == made["edit"]


def test_cherry_pick_revert_and_log_across_branches(sola):
    sola("branch", "customer")
    made = sola.json("edit", "--prompt", PROMPT, "--target", "Rome")
    picked = sola.json("cherry-pick", made["edit"][:12], "--onto", "customer", "--reason", "customer asked")
    assert picked["edits"] == [made["edit"]]
    assert sola.json("generate", PROMPT, "--rev", "customer")["edit"] == made["edit"]
    reverted = sola.json("revert", "customer", "--branch", "customer", "--reason", "customer withdrew")
    assert reverted["reverted"] == picked["commit"] != reverted["commit"]
    assert sola.json("generate", PROMPT, "--rev", "customer")["edit"] is None
    assert [c["op"] for c in sola.json("log", "--rev", "customer")] == ["revert", "cherry-pick", "init"]
    assert sola.json("show", reverted["commit"])["parents"] == [picked["commit"]]


@pytest.mark.parametrize("args, message", [
    (("edit", "--prompt", PROMPT, "--target", "Rome", "--branch", "nope"), "unknown branch 'nope'"),
    (("branch", "--delete", "main"), "cannot delete main"),
    (("merge", "main", "--into", "main", "--reason", "x"), "into itself"),
    (("cherry-pick", "abcdef12", "--onto", "main"), "unknown edit"),
    (("snapshot", "x", "--from", "main", "--where", "author"), "boolean"),
    (("snapshot", "x", "--from", "main", "--where", "1=1; DROP TABLE edits"), "--where"),
    (("branch", "a~1"), "invalid branch name"),
    (("generate", PROMPT, "--rev", "main~"), "bad revision"),
    (("log", "--rev", "nope@2026-01-01T00:00:00Z"), "unknown branch"),
    (("protect", "main"), "--reviews N or --off"),
    (("review", "approve", "main", "--into", "main", "--author", "bob"), "into itself"),
    (("merge", "feature", "--into", "main", "--reason", "x", "--resolve", "abc"), "EDIT=ours or EDIT=theirs"),
    (("revert", "main", "--branch", "main", "--reason", "x"), "nothing to revert"),
])
def test_bad_edit_set_input_is_one_error_line_and_changes_nothing(sola, args, message):
    sola("branch", "feature")
    before = state(sola)
    assert message in sola.fails(*args)
    assert state(sola) == before


def test_approving_a_head_that_has_moved_on_is_refused(sola):
    sola("protect", "main", "--reviews", "1")
    sola("branch", "proposal")
    first = sola.json("edit", "--prompt", PROMPT, "--target", "Rome", "--branch", "proposal", "--author", "alice")
    sola("edit", "--prompt", OTHER, "--target", "piano", "--branch", "proposal", "--author", "alice")
    before = state(sola)
    assert "stale review" in sola.fails("review", "approve", "proposal", "--into", "main", "--author", "bob", "--commit", first["commit"][:12])
    assert state(sola) == before
    sola("review", "approve", "proposal", "--into", "main", "--author", "bob")
    sola("edit", "--prompt", "The capital of Spain is", "--target", "Rome", "--branch", "proposal", "--author", "alice")
    assert [r["stale"] for r in sola.json("review", "list")] == [True]
