"""Edit sets on the store: branches, revisions, cherry-pick, revert, merge, snapshot, review, blame,
the migration of a previous release's registry, and verify on the new tables (no model needed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from previous_release import PreviousRelease, raw_sql
from registry.blame import blame
from registry.editsets import MergeConflict, cherry_pick, merge, plan_merge, revert, snapshot
from registry.inspect import audit, describe_commit, describe_edit, revoked_report
from registry.store import Registry, RegistryError
from registry.verify import verify
from registry_helpers import BASE, ROUTING, add_edit, new_registry, unit_key


def near(key: np.ndarray, distance: float, seed: int = 99) -> np.ndarray:
    """A unit vector at cosine distance `distance` from unit vector `key`."""
    key = key.reshape(-1)
    other = np.random.default_rng(seed).normal(size=key.shape).astype(np.float32)
    other -= other @ key * key
    other /= np.linalg.norm(other)
    cos = 1.0 - distance
    return (cos * key + np.sqrt(1 - cos * cos) * other).astype(np.float32).reshape(1, -1)


@pytest.fixture
def registry(tmp_path, storage) -> Registry:
    """A fresh registry, once local and once on Postgres + S3 (conftest `storage`)."""
    return new_registry(tmp_path / "r", storage)


def branch_from_main(registry: Registry, name: str) -> None:
    registry.create_branch(name, registry.head(), "tester")


# --- branches and revisions -------------------------------------------------------------------
def test_an_edit_on_a_branch_leaves_main_unchanged_and_is_listed_with_its_head(registry):
    a = add_edit(registry, "a", seed=1)
    branch_from_main(registry, "feature")
    b = add_edit(registry, "b", seed=2, branch="feature")
    assert registry.active_edit_ids(registry.head()) == [a]
    assert sorted(registry.active_edit_ids(registry.head("feature"))) == sorted([a, b])
    listed = {x["name"]: x for x in registry.branches()}
    assert listed["feature"]["commit"] == registry.head("feature").commit_id and not listed["feature"]["protected"]
    assert [c.op for c in registry.log(revision=registry.head("feature"))] == ["add", "add", "init"]


def test_deleting_main_a_protected_branch_or_unmerged_work_is_refused_unless_forced(registry):
    branch_from_main(registry, "feature")
    add_edit(registry, "b", seed=2, branch="feature")
    with pytest.raises(RegistryError, match="cannot delete main"):
        registry.delete_branch("main", "tester")
    with pytest.raises(RegistryError, match="no other branch or tag reaches"):
        registry.delete_branch("feature", "tester")
    registry.protect("feature", 1, "tester")
    with pytest.raises(RegistryError, match="protected"):
        registry.delete_branch("feature", "tester", force=True)
    registry.protect("feature", 0, "tester")
    head = registry.delete_branch("feature", "tester", force=True)
    assert "feature" not in {b["name"] for b in registry.branches()}
    assert registry.commit(head.commit_id).op == "add"  # the commits stay
    assert registry.catalog.reflog("feature")[-1].new_commit is None
    assert verify(registry).ok, verify(registry).problems


def test_tilde_follows_first_parents_and_caret_two_is_the_merged_side(registry):
    add_edit(registry, "a", seed=1)
    branch_from_main(registry, "feature")
    b = add_edit(registry, "b", seed=2, branch="feature")
    add_edit(registry, "c", seed=3)
    merged = merge(registry, "feature", "main", "tester", "ship")
    head = registry.head()
    assert head.commit_id == merged["commit"] and len(head.parents) == 2
    assert registry.resolve("main^2").commit_id == registry.head("feature").commit_id
    assert registry.resolve("main~1").message == "add c"
    assert registry.resolve("main^1").commit_id == registry.resolve("main~1").commit_id
    assert registry.resolve("main^2~1").commit_id == registry.resolve("main~2").commit_id
    assert b in registry.active_edit_ids(head)
    for bad in ("main~", "main^", "main~0", "main^3", "", "main~x"):
        with pytest.raises(RegistryError):
            registry.resolve(bad)


def test_a_time_on_a_branch_resolves_from_that_branchs_ref_log(registry):
    add_edit(registry, "a", seed=1)
    branch_from_main(registry, "feature")
    first = registry.head("feature")
    time.sleep(0.01)
    time.sleep(0.01)
    add_edit(registry, "b", seed=2, branch="feature")
    then = registry.catalog.reflog("feature")[0].time
    assert registry.resolve(f"feature@{then.isoformat()}").commit_id == first.commit_id
    assert registry.resolve("feature", at=registry.catalog.reflog("feature")[-1].time.isoformat()).commit_id == registry.head("feature").commit_id
    with pytest.raises(RegistryError, match="did not exist"):
        registry.resolve("feature@2000-01-01T00:00:00Z")


def test_branch_names_that_read_as_revisions_are_refused(registry):
    for name in ("a~1", "x^2", "b@t", "abcd1234", " lead", "", "main"):
        with pytest.raises(RegistryError):
            registry.create_branch(name, registry.head(), "tester")


# --- cherry-pick and revert -----------------------------------------------------------------------
def test_cherry_pick_adds_the_same_edit_without_writing_any_object(registry):
    add_edit(registry, "a", seed=1)
    registry.create_branch("customer", registry.resolve("main~1"), "tester")
    b = add_edit(registry, "b", seed=2)
    objects = sorted(registry.objects)
    commit = cherry_pick(registry, [b[:10]], "customer", "tester", "customer needs it")
    assert commit.op == "cherry-pick" and registry.changes(commit.commit_id) == [(b, "active")]
    assert registry.active_edit_ids(registry.head("customer")) == [b]
    assert sorted(registry.objects) == objects
    with pytest.raises(RegistryError, match="already active"):
        cherry_pick(registry, [b], "customer", "tester")
    with pytest.raises(RegistryError, match="unknown edit"):
        cherry_pick(registry, ["ffff0000"], "customer", "tester")


def test_cherry_pick_refuses_an_edit_contradicting_the_branch_unless_forced(registry):
    key = unit_key(5)
    a = add_edit(registry, "capital", "Paris", seed=1, key=key)
    registry.create_branch("eu", registry.resolve("main~1"), "tester")
    add_edit(registry, "capital?", "Rome", seed=2, key=key, branch="eu")
    head = registry.head("eu")
    with pytest.raises(RegistryError, match="contradicts active edit"):
        cherry_pick(registry, [a], "eu", "tester")
    assert registry.head("eu") == head
    cherry_pick(registry, [a], "eu", "tester", force=True)
    assert a in registry.active_edit_ids(registry.head("eu"))


def test_revert_restores_the_edit_set_before_a_commit_and_refuses_once_it_moved_on(registry):
    a = add_edit(registry, "a", seed=1)
    revoke = registry.set_active(a, False, "tester", "wrong")
    back = revert(registry, revoke.commit_id[:12], "main", "tester", "it was right")
    assert back.op == "revert" and registry.is_active(a)
    with pytest.raises(RegistryError, match="is now active"):
        revert(registry, revoke.commit_id, "main", "tester", "again")
    with pytest.raises(RegistryError, match="nothing to revert"):
        revert(registry, registry.resolve("main~3").commit_id, "main", "tester", "init")


# --- merge ----------------------------------------------------------------------------------------
def test_a_three_way_merge_takes_each_sides_changes_and_records_both_parents(registry):
    a = add_edit(registry, "a", seed=1)
    b = add_edit(registry, "b", seed=2)
    branch_from_main(registry, "feature")
    c = add_edit(registry, "c", seed=3, branch="feature")
    registry.set_active(a, False, "tester", "revoked on feature", branch="feature")
    d = add_edit(registry, "d", seed=4)
    report = merge(registry, "feature", "main", "lead", "release")
    head = registry.head()
    assert report["commit"] == head.commit_id and head.op == "merge" and head.parents == (
        registry.resolve("main~1").commit_id, registry.head("feature").commit_id)
    assert sorted(registry.active_edit_ids(head)) == sorted([b, c, d])
    assert report["added"] == [c] and report["removed"] == [a] and report["conflicts"] == []
    assert verify(registry).ok, verify(registry).problems


def test_a_merge_into_a_branch_that_has_not_moved_is_a_fast_forward(registry):
    branch_from_main(registry, "feature")
    b = add_edit(registry, "b", seed=2, branch="feature")
    commits = registry.counts()["commits"]
    report = merge(registry, "feature", "main", "lead", "release")
    assert report["fast_forward"] and report["commit"] == registry.head("feature").commit_id
    assert registry.head().commit_id == report["commit"] and registry.counts()["commits"] == commits
    assert "fast-forward" in registry.catalog.reflog("main")[-1].reason and registry.active_edit_ids(registry.head()) == [b]
    assert merge(registry, "feature", "main", "lead", "again")["up_to_date"]


def test_revoked_on_one_side_and_restored_on_the_other_is_a_conflict_and_writes_nothing(registry):
    a = add_edit(registry, "a", seed=1)
    branch_from_main(registry, "feature")
    registry.set_active(a, False, "tester", "harmful")
    registry.set_active(a, False, "tester", "try", branch="feature")
    registry.set_active(a, True, "tester", "keep it", branch="feature")
    head, commits = registry.head(), registry.counts()["commits"]
    with pytest.raises(MergeConflict) as raised:
        merge(registry, "feature", "main", "lead", "release")
    assert raised.value.report["conflicts"] == [{"kind": "revoked-vs-kept", "edits": [a], "base": "active", "ours": "absent",
                                                 "theirs": "active"}]
    assert registry.head() == head and registry.counts()["commits"] == commits
    merge(registry, "feature", "main", "lead", "keep it", {a: "theirs"})
    assert registry.is_active(a)


def test_contradicting_adds_conflict_and_a_resolution_keeps_one_side(registry):
    key = unit_key(7)
    bystander = add_edit(registry, "bystander", seed=9)
    branch_from_main(registry, "feature")
    ours = add_edit(registry, "capital", "Paris", seed=1, key=key)
    theirs = add_edit(registry, "capital", "Rome", seed=2, key=key, branch="feature")
    with pytest.raises(MergeConflict) as raised:
        merge(registry, "feature", "main", "lead", "release")
    [conflict] = raised.value.report["conflicts"]
    assert conflict["kind"] == "contradicting-adds" and conflict["edits"] == [ours, theirs]
    with pytest.raises(RegistryError, match="not in conflict"):
        merge(registry, "feature", "main", "lead", "x", {ours: "ours", bystander: "ours"})
    report = merge(registry, "feature", "main", "lead", "Rome it is", {theirs: "theirs"})
    assert sorted(registry.active_edit_ids(registry.head())) == sorted([bystander, theirs]) and report["removed"] == [ours]


def test_new_neighbours_within_the_radius_are_a_warning_not_a_conflict(registry):
    key = unit_key(8)
    branch_from_main(registry, "feature")
    a = add_edit(registry, "p", "x", seed=1, key=key)
    b = add_edit(registry, "q", "y", seed=2, key=near(key, 0.05), branch="feature")
    report = merge(registry, "feature", "main", "lead", "both")
    assert report["conflicts"] == [] and [w["kind"] for w in report["warnings"]] == ["neighbours"]
    assert sorted(report["warnings"][0]["edits"]) == sorted([a, b])


def test_merging_a_branch_into_itself_or_into_a_tag_is_refused(registry):
    add_edit(registry, "a", seed=1)
    registry.tag("v1", registry.head(), "tester")
    with pytest.raises(RegistryError, match="into itself"):
        merge(registry, "main", "main", "lead", "x")
    with pytest.raises(RegistryError, match="tag"):
        merge(registry, "main", "v1", "lead", "x")


# --- snapshots ------------------------------------------------------------------------------------
def test_snapshot_holds_exactly_the_chosen_edit_set(registry):
    a = add_edit(registry, "a", seed=1, author="alice")
    b = add_edit(registry, "b", seed=2, author="bob")
    c = add_edit(registry, "c", seed=3, author="alice")
    registry.create_branch("old", registry.resolve("main~3"), "tester")
    d = add_edit(registry, "d", seed=4, branch="old")
    made = snapshot(registry, "eu", "main", "tester", include=[d], exclude=[c], where="author = 'alice'")
    assert sorted(made["edits"]) == sorted([a, d])
    assert sorted(registry.active_edit_ids(registry.head("eu"))) == sorted([a, d])
    assert registry.head("eu").parent_id == registry.head().commit_id
    assert b in registry.active_edit_ids(registry.head())  # main is untouched
    assert verify(registry).ok


@pytest.mark.parametrize("where", ["author", "1", "(SELECT count(*) FROM edits) > 0", "prompt IN (SELECT prompt FROM read_csv('/etc/passwd'))",
                                   "true; DROP TABLE edits", "nosuch = 1"])
def test_snapshot_where_must_be_a_read_only_boolean_over_edits(registry, where):
    add_edit(registry, "a", seed=1)
    before = registry.counts()
    with pytest.raises(RegistryError, match="--where"):
        snapshot(registry, "x", "main", "tester", where=where)
    assert registry.counts() == before and "x" not in {b["name"] for b in registry.branches()}


# --- protection and review ----------------------------------------------------------------------
def test_a_protected_branch_changes_only_by_a_merge_with_approvals_from_non_authors(registry):
    a = add_edit(registry, "a", seed=1)
    registry.protect("main", 1, "admin", "release branch")
    with pytest.raises(RegistryError, match="protected"):
        add_edit(registry, "b", seed=2)
    with pytest.raises(RegistryError, match="protected"):
        registry.set_active(a, False, "tester", "x")
    branch_from_main(registry, "proposal")
    b = add_edit(registry, "b", seed=2, branch="proposal", author="alice")
    with pytest.raises(RegistryError, match="needs 1 approval"):
        merge(registry, "proposal", "main", "alice", "ship")
    with pytest.raises(RegistryError, match="someone else"):
        registry.review("proposal", "main", "alice", "approve")
    approval = registry.review("proposal", "main", "carol", "approve", "checked the sources")
    add_edit(registry, "c", seed=3, branch="proposal", author="alice")  # the proposal moves: the approval is stale
    with pytest.raises(RegistryError, match="has 0"):
        merge(registry, "proposal", "main", "alice", "ship")
    with pytest.raises(RegistryError, match="stale review"):
        registry.review("proposal", "main", "carol", "approve", commit=approval.source_commit)
    registry.review("proposal", "main", "carol", "approve")
    report = merge(registry, "proposal", "main", "alice", "ship")
    assert b in registry.active_edit_ids(registry.head()) and report["commit"]
    reviews = [e for e in audit(registry) if e["kind"] == "review"]
    assert [(e["author"], e["op"], e["commit"]) for e in reviews] == [
        ("carol", "approve", approval.source_commit), ("carol", "approve", registry.head("proposal").commit_id)]
    assert describe_commit(registry, registry.head("proposal"))["reviews"][0]["author"] == "carol"


# --- blame ----------------------------------------------------------------------------------------
def test_blame_lists_every_commit_where_the_answering_edit_changed(tmp_path):
    routing = dict(ROUTING, revoke_mode="tombstone", radius_ratio=0.0)
    registry = Registry.create(tmp_path / "r", BASE, routing, "tester")
    key = unit_key(3)
    add_edit(registry, "unrelated", seed=9)
    a = add_edit(registry, "capital", "Paris", seed=1, key=key, author="alice")
    b = add_edit(registry, "capital!", "Rome", seed=2, key=near(key, 0.01), author="bob", supersede=[a])
    registry.set_active(b, False, "carol", "disputed")
    add_edit(registry, "other", seed=5)
    entries = blame(registry, near(key, 0.005, seed=4)[0], registry.head())
    assert [(e["op"], e["author"], e["edit"], e["tombstone"]) for e in entries] == [
        ("add", "alice", a, None), ("supersede", "bob", b, None), ("revoke", "carol", None, b)]
    assert blame(registry, unit_key(77)[0], registry.head()) == []


# --- integrity ------------------------------------------------------------------------------------
def test_verify_names_a_tampered_tree_row_and_a_parent_that_points_nowhere(registry):
    a = add_edit(registry, "a", seed=1)
    add_edit(registry, "b", seed=2)
    assert verify(registry).ok
    raw_sql(registry, "UPDATE tree_members SET state = 'tombstone' WHERE edit_id = ?", [a])
    assert any("tree" in p and "does not hash to its id" in p for p in verify(registry).problems)
    raw_sql(registry, "UPDATE tree_members SET state = 'active' WHERE edit_id = ?", [a])
    assert verify(registry).ok
    raw_sql(registry, "UPDATE commit_parents SET parent_id = ? WHERE commit_id = ?", ["ee" * 32, registry.head().commit_id])
    assert any("parent" in p and "does not exist" in p for p in verify(registry).problems)


def test_a_registry_of_the_previous_release_keeps_every_id_and_gains_branches(tmp_path):
    old = PreviousRelease(tmp_path / "old", 3, BASE, dict(ROUTING, revoke_mode="tombstone", radius_ratio=0.5))
    a, b = old.add("a", seed=1), old.add("b", seed=2)
    old.revoke(a)
    old.tag("v1")
    tag_target = old.commits[-1]
    old.restore(a)
    old.revoke(b)
    commits = list(old.commits)
    old.close()
    registry = Registry.open(tmp_path / "old", writable=True)
    report = verify(registry)
    assert report.ok, report.problems
    assert [c.commit_id for c in reversed(registry.log())] == commits
    assert registry.resolve("v1").commit_id == tag_target and registry.active_edit_ids(registry.resolve("v1")) == [b]
    assert registry.tombstoned_edit_ids(registry.head()) == {b} and registry.active_edit_ids(registry.head()) == [a]
    assert registry.resolve("main~2").commit_id == commits[-3]
    assert [r["edit"] for r in revoked_report(registry)] == [b]
    branch_from_main(registry, "feature")
    registry.set_active(b, True, "tester", "back", branch="feature")
    merge(registry, "feature", "main", "lead", "restore b")
    assert verify(registry).ok and registry.active_edit_ids(registry.head()) == sorted([a, b])


WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[3])
    from registry.store import Registry
    from registry_helpers import add_edit
    branch, writer = sys.argv[2], sys.argv[4]
    for i in range(10):
        with Registry.open(sys.argv[1], writable=True, wait_seconds=120) as registry:
            add_edit(registry, f"{branch} {writer} {i}", seed=hash((branch, writer, i)) % 100000, branch=branch)
""")


def test_four_writers_on_two_branches_lose_no_commit(tmp_path, storage):
    """4 processes x 10 commits, two per branch: every commit lands, once, on its branch; the
    ref log holds one entry per commit, chained; verify passes (local file lock, or Postgres)."""
    registry = new_registry(tmp_path / "r", storage)
    branch_from_main(registry, "left")
    branch_from_main(registry, "right")
    registry.close()
    tests = str(Path(__file__).parent)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "r"), name, tests, str(n)], stderr=subprocess.PIPE, text=True)
               for name in ("left", "right") for n in range(2)]
    for writer in writers:
        assert writer.wait(timeout=300) == 0, writer.stderr.read()
    with Registry.open(tmp_path / "r") as reopened:
        for name in ("left", "right"):
            prompts = sorted(reopened.edit_row(e)["prompt"] for e in reopened.active_edit_ids(reopened.head(name)))
            assert prompts == sorted(f"{name} {n} {i}" for n in range(2) for i in range(10))
            moves = [e for e in reopened.catalog.reflog(name) if e.reason.startswith("add")]
            assert len(moves) == 20 and all(m.old_commit == p.new_commit for p, m in zip(moves, moves[1:]))
        assert verify(reopened).ok, verify(reopened).problems


CRASHING = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, sys.argv[3])
    import registry.catalog.sql as catalog
    from registry.editsets import cherry_pick, merge
    from registry.store import Registry
    original = catalog.SQLCatalog.insert_commits
    def die(self, *args, **kwargs):
        original(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    catalog.SQLCatalog.insert_commits = die
    registry = Registry.open(sys.argv[1], writable=True)
    if sys.argv[2] == "merge":
        merge(registry, "feature", "main", "lead", "crash")
    else:
        picked = set(registry.active_edit_ids(registry.head("feature"))) - set(registry.active_edit_ids(registry.head()))
        cherry_pick(registry, sorted(picked), "main", "lead")
""")


@pytest.mark.parametrize("operation", ["merge", "cherry-pick"])
def test_sigkill_inside_a_merge_or_cherry_pick_leaves_a_consistent_registry(tmp_path, storage, operation):
    registry = new_registry(tmp_path / "r", storage)
    add_edit(registry, "a", seed=1)
    branch_from_main(registry, "feature")
    add_edit(registry, "b", seed=2, branch="feature")
    add_edit(registry, "c", seed=3)
    head = registry.head().commit_id
    registry.close()
    killed = subprocess.run([sys.executable, "-c", CRASHING, str(tmp_path / "r"), operation, str(Path(__file__).parent)],
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    with Registry.open(tmp_path / "r", writable=True) as reopened:
        assert verify(reopened).ok, verify(reopened).problems
        assert reopened.head().commit_id == head
        done = merge(reopened, "feature", "main", "lead", "again")
        assert done["commit"] and verify(reopened).ok


def test_plan_merge_decides_without_writing(registry):
    add_edit(registry, "a", seed=1)
    branch_from_main(registry, "feature")
    add_edit(registry, "b", seed=2, branch="feature")
    add_edit(registry, "c", seed=3)
    before = registry.counts()
    plan = plan_merge(registry, "feature", "main")
    assert not plan.fast_forward and plan.conflicts == [] and registry.counts() == before


def test_show_of_an_edit_names_the_branches_where_it_is_live(registry):
    a = add_edit(registry, "a", seed=1)
    branch_from_main(registry, "feature")
    registry.set_active(a, False, "tester", "not here", branch="feature")
    shown = describe_edit(registry, a)
    assert shown["branches"] == ["main"] and [h["op"] for h in shown["history"]] == ["add", "revoke"]


# --- review findings: each of these was a wrong or missing answer --------------------------------
def test_a_current_rejection_blocks_a_merge_until_the_reviewer_approves(registry):
    add_edit(registry, "a", seed=1)
    registry.protect("main", 1, "admin")
    branch_from_main(registry, "proposal")
    add_edit(registry, "b", seed=2, branch="proposal", author="alice")
    registry.review("proposal", "main", "carol", "approve")
    registry.review("proposal", "main", "dave", "reject", "no source")
    with pytest.raises(RegistryError, match="dave rejected"):
        merge(registry, "proposal", "main", "alice", "ship")
    registry.review("proposal", "main", "dave", "approve", "source added")
    assert merge(registry, "proposal", "main", "alice", "ship")["commit"]


def test_the_same_fact_added_on_both_sides_is_kept_once_and_still_answers(registry):
    key = unit_key(11)
    branch_from_main(registry, "b")
    ours = add_edit(registry, "capital", "Rome", seed=1, key=key, author="alice")
    theirs = add_edit(registry, "capital", "Rome", seed=2, key=key, branch="b", author="bob")
    report = merge(registry, "b", "main", "lead", "both had it")
    assert report["duplicates"] == [{"kind": "duplicate-adds", "kept": ours, "dropped": theirs, "distance": 0.0}]
    head = registry.head()
    assert registry.active_edit_ids(head) == [ours]
    search, key_edit = registry.key_search(head, tombstones=True)
    from registry.routing import decide

    assert decide(search, key_edit, set(), key, registry.rule).edits == [ours]


def test_revoked_facts_report_the_live_window_of_the_branch_line_and_the_merged_revoke(registry):
    a = add_edit(registry, "a", seed=1)
    branch_from_main(registry, "fix")
    revoke = registry.set_active(a, False, "bob", "wrong", branch="fix")
    time.sleep(0.01)
    add_edit(registry, "c", seed=3)
    merged = merge(registry, "fix", "main", "carol", "take the fix")
    [entry] = revoked_report(registry)
    assert entry["commit"] == merged["commit"] and entry["revoked_by"] == "carol" and entry["op"] == "merge"
    assert entry["via"]["commit"] == revoke.commit_id and entry["via"]["author"] == "bob"
    assert entry["live"][0]["until"] == registry.commit(merged["commit"]).to_dict()["time"]


def test_audit_lists_ref_moves_that_make_no_commit_and_filters_reviews_by_revision(registry):
    branch_from_main(registry, "feature")
    add_edit(registry, "b", seed=2, branch="feature", author="alice")
    registry.review("feature", "main", "carol", "approve")
    merge(registry, "feature", "main", "lead", "ship")  # a fast-forward: no new commit
    registry.tag("v1", registry.head(), "lead")
    ops = [(e["kind"], e["op"]) for e in audit(registry)]
    assert ("ref", "branch") in ops and ("ref", "fast-forward") in ops and ("ref", "tag") in ops and ("review", "approve") in ops
    init_only = audit(registry, revision=registry.resolve("main~1"))
    assert [e["kind"] for e in init_only if e["kind"] == "review"] == []


def test_a_snapshot_warns_when_a_left_out_edit_s_input_is_answered_by_another(registry):
    key = unit_key(12)
    a = add_edit(registry, "capital", "Paris", seed=1, key=key)
    b = add_edit(registry, "capital?", "Lyon", seed=2, key=near(key, 0.03))
    made = snapshot(registry, "eu", "main", "tester", exclude=[a])
    assert [(t["left"], t["edit"]) for t in made["answered_by_others"]] == [(a, b)]


def test_revert_of_a_commit_outside_the_branch_is_refused(registry):
    add_edit(registry, "a", seed=1)
    branch_from_main(registry, "other")
    add_edit(registry, "b", seed=2, branch="other")
    with pytest.raises(RegistryError, match="not in the history of main"):
        revert(registry, "other", "main", "tester", "x")


def test_a_deleted_branch_can_still_be_read_at_a_time_it_existed(registry):
    branch_from_main(registry, "gone")
    b = add_edit(registry, "b", seed=2, branch="gone")
    moment = registry.catalog.reflog("gone")[-1].time.isoformat()
    time.sleep(0.01)
    registry.delete_branch("gone", "tester", force=True)
    assert registry.active_edit_ids(registry.resolve(f"gone@{moment}")) == [b]
