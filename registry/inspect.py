"""Read-only views over the registry: show, audit, revoked facts, conflicts. Plain dicts, ready for JSON."""

from __future__ import annotations

from typing import Any

from registry.graph import ancestors, first_parents
from registry.model import ACTIVE, Commit, RegistryError, iso, parse_time
from registry.lineage import derived_from, follow
from registry.revisions import hex_prefix, parse_revision
from registry.routing import nearest_active
from registry.store import Registry


def describe_object(registry: Registry, ident: str) -> dict[str, Any]:
    """`show`: a ref/commit or an edit, by id or unique prefix."""
    parsed = parse_revision(ident)
    prefix = hex_prefix(parsed.base)
    if registry.catalog.ref(parsed.base) is not None or prefix is None or parsed.steps or parsed.at:
        return describe_commit(registry, registry.resolve(ident))
    commits = registry.catalog.commits_with_prefix(prefix)
    edits = registry.catalog.edits_with_prefix(prefix)
    if len(commits) + len(edits) > 1:
        raise RegistryError(f"ambiguous id {ident!r}: give more characters")
    if edits:
        return describe_edit(registry, edits[0])
    return describe_commit(registry, registry.resolve(ident))


def edit_summaries(registry: Registry, edit_ids: list[str]) -> list[dict[str, Any]]:
    """`edit_summary` of many edits in one catalog read (diff of two revisions far apart)."""
    rows = registry.catalog.edit_rows(edit_ids)
    return [{"edit": e, "prompt": rows[e]["prompt"], "target": rows[e]["target"]} for e in edit_ids]


def edit_summary(registry: Registry, edit_id: str) -> dict[str, Any]:
    """The short form of an edit used in listings: id, prompt, target."""
    row = registry.edit_row(edit_id)
    return {"edit": edit_id, "prompt": row["prompt"], "target": row["target"]}


def describe_commit(registry: Registry, commit: Commit) -> dict[str, Any]:
    changes = [dict(edit_summary(registry, edit_id), active=state == ACTIVE, state=state or "absent")
               for edit_id, state in registry.changes(commit.commit_id)]
    approvals = [r.to_dict() for r in registry.reviews() if r.source_commit == commit.commit_id]
    return dict(commit.to_dict(), kind="commit", changes=changes, refs=registry.refs_at(commit.commit_id), reviews=approvals)


def edit_neighbours(registry: Registry, edit_id: str, commit: Commit | None = None, k: int = 16) -> list[dict[str, Any]]:
    """Active edits (other than this one) with a key within the routing threshold of this edit's keys."""
    commit = commit or registry.head()
    search, key_edit = registry.key_search(commit, tombstones=True)
    tombstones = registry.tombstoned_edit_ids(commit)
    best: dict[str, float] = {}
    for key in registry.edit_keys(edit_id):
        for other, distance in nearest_active(search, key_edit, tombstones | {edit_id}, key, registry.rule.threshold, k):
            best[other] = min(distance, best.get(other, distance))
    return [dict(edit_summary(registry, other), distance=round(distance, 6))
            for other, distance in sorted(best.items(), key=lambda item: item[1])]


def live_branches(registry: Registry, edit_id: str) -> list[str]:
    """Branches whose head holds the edit active."""
    return [b["name"] for b in registry.branches() if registry.edit_state(edit_id, registry.commit(b["commit"])) == ACTIVE]


def describe_edit(registry: Registry, edit_id: str, branch: str = "main") -> dict[str, Any]:
    row = registry.edit_row(edit_id)
    provenance = registry.provenance(edit_id)
    head = registry.head(branch)
    active = registry.is_active(edit_id, head)
    return {
        "kind": "edit",
        "edit": edit_id,
        "active": active,
        "prompt": row["prompt"],
        "target": row["target"],
        "subject": provenance.get("subject"),
        "subject_inferred": bool(provenance.get("subject_inferred")),  # found in the prompt, not given
        "tensors_sha256": row["tensors_sha256"],
        "keys_sha256": provenance.get("keys_sha256"),
        "provenance": provenance,
        "derived_from": provenance.get("derived_from"),
        "lineage": follow(registry, edit_id) if provenance.get("derived_from") else None,
        "history": registry.edit_history(edit_id),
        "branches": live_branches(registry, edit_id),
        "neighbours": edit_neighbours(registry, edit_id, head) if active else [],
    }


def audit(registry: Registry, since: str | None = None, revision: Commit | None = None) -> list[dict[str, Any]]:
    """Every operation, oldest first: who, when, what, why. Commits (all of them, or those
    reachable from `revision`), ref moves that are not a new commit (branch created or deleted,
    tag, fast-forward merge), reviews and protection changes, interleaved by time."""
    cutoff = parse_time(since) if since else None
    commits = registry.all_commits()
    reachable = ancestors(registry.catalog.parent_map(), revision.commit_id) if revision is not None else None
    if reachable is not None:
        commits = [c for c in commits if c.commit_id in reachable]
    by_id = {c.commit_id: c for c in registry.all_commits()}
    changes = registry.catalog.all_changes()
    entries = [(c.time, 0, c.seq, dict(c.to_dict(), kind="commit", edits=[e for e, _ in changes.get(c.commit_id, [])]))
               for c in commits if cutoff is None or c.time >= cutoff]
    for _, _, _, entry in entries:  # a rebased edit names its origin (registry.lineage)
        if entry["op"] == "rebase":
            entry["derived_from"] = {e: derived_from(registry, e) for e in entry["edits"]}
    names = {r[0] for r in registry.catalog.refs()} if revision is None else set(registry.refs_at(revision.commit_id))
    for entry in registry.catalog.reflog():
        made = by_id.get(entry.new_commit) if entry.new_commit else None
        if made is not None and entry.old_commit == made.parent_id and entry.reason == f"{made.op}: {made.message}":
            continue  # the move that recorded a new commit: listed with the commit
        if reachable is not None and (entry.new_commit or entry.old_commit) not in reachable:
            continue
        if cutoff is not None and entry.time < cutoff:
            continue
        op = "delete-branch" if entry.new_commit is None else "tag" if entry.kind == "tag" else \
            "fast-forward" if "(fast-forward)" in entry.reason else "branch" if entry.old_commit is None else "move"
        entries.append((entry.time, 1, entry.id, {"kind": "ref", "op": op, "ref": entry.ref, "time": iso(entry.time),
                                                  "author": entry.actor, "reason": entry.reason, "message": entry.reason,
                                                  "commit": entry.new_commit, "old": entry.old_commit, "edits": []}))
    for review in registry.reviews():
        if reachable is not None and review.source_commit not in reachable:
            continue
        if cutoff is None or review.time >= cutoff:
            entries.append((review.time, 2, review.id, {
                "kind": "review", "op": review.verdict, "time": iso(review.time), "author": review.author, "reason": review.reason,
                "commit": review.source_commit, "message": f"{review.verdict} {review.source} into {review.target}",
                "source": review.source, "target": review.target, "edits": []}))
    for protection in registry.catalog.protections():
        if reachable is not None and protection["branch"] not in names:
            continue
        if cutoff is None or protection["time"] >= cutoff:
            entries.append((protection["time"], 3, protection["id"], {
                "kind": "protection", "op": "protect", "time": iso(protection["time"]), "author": protection["actor"],
                "reason": protection["reason"], "commit": None, "edits": [],
                "message": f"protect {protection['branch']}: " + (f"{protection['reviews']} review(s)" if protection["reviews"] else "off")}))
    return [entry for *_, entry in sorted(entries, key=lambda item: item[:3])]


def revoked_report(registry: Registry, since: str | None = None, revision: Commit | None = None) -> list[dict[str, Any]]:
    """Governance view: every edit that was live on the line of `revision` (default main: its
    first-parent history, the commits that branch itself went through) and is not live at it,
    with the commit where it stopped being live there, who made it and why, and its live windows
    on that line. A revoke made on a merged branch shows as that merge, with `via` naming the
    commit on the merged side that made the change."""
    head = revision or registry.head()
    parents = registry.catalog.parent_map()
    line = first_parents(parents, head.commit_id)[::-1]
    all_changes = registry.catalog.all_changes()
    commits = registry.catalog.commits(line)
    state: dict[str, str | None] = {}
    windows: dict[str, list[list[Commit | None]]] = {}
    stopped: dict[str, Commit] = {}
    for commit_id in line:
        commit = commits[commit_id]
        for edit_id, new in all_changes.get(commit_id, []):
            old = state.get(edit_id)
            state[edit_id] = new
            if new == ACTIVE and old != ACTIVE:
                windows.setdefault(edit_id, []).append([commit, None])
            elif old == ACTIVE and new != ACTIVE:
                windows[edit_id][-1][1] = commit
                stopped[edit_id] = commit
    cutoff = parse_time(since) if since else None
    gone = [e for e, s in state.items() if s != ACTIVE and e in stopped]
    rows = registry.catalog.edit_rows(gone)
    side_changes = registry.catalog.changes_of_edits(gone)
    report = []
    for edit_id in gone:
        revocation = stopped[edit_id]
        if cutoff is not None and revocation.time < cutoff:
            continue
        via = None
        if len(revocation.parents) > 1:  # brought in by a merge: the change made on the merged side
            merged_in = ancestors(parents, revocation.parents[1]) - ancestors(parents, revocation.parents[0])
            decided = [c for c, e, s in side_changes if e == edit_id and c in merged_in and s == state[edit_id]]
            if decided:
                via = registry.commit(decided[-1]).to_dict()
        row = rows[edit_id]
        report.append({
            "edit": edit_id,
            "prompt": row["prompt"],
            "target": row["target"],
            "author": row["author"],
            "revoked_at": iso(revocation.time),
            "revoked_by": revocation.author,
            "reason": revocation.reason,
            "commit": revocation.commit_id,
            "op": revocation.op,
            "via": via,
            "tombstone": state[edit_id] == "tombstone",
            "live": [{"from": iso(start.time), "until": iso(end.time)} for start, end in windows[edit_id] if end is not None],
            "_seq": revocation.seq,
        })
    report.sort(key=lambda item: item.pop("_seq"))
    return report


def conflicts(registry: Registry, commit: Commit) -> list[dict[str, Any]]:
    """Pairs of active edits whose keys lie within the routing threshold of each other."""
    search, key_edit = registry.key_search(commit, tombstones=True)
    tombstones = registry.tombstoned_edit_ids(commit)
    pairs: dict[tuple[str, str], float] = {}
    for key_id, mine in key_edit.items():
        if mine in tombstones:
            continue
        for other, distance in nearest_active(search, key_edit, tombstones | {mine}, search.vector(key_id), registry.rule.threshold, 8):
            pair = tuple(sorted((mine, other)))
            pairs[pair] = min(distance, pairs.get(pair, distance))
    return [{"distance": round(distance, 6), "a": edit_summary(registry, a), "b": edit_summary(registry, b)}
            for (a, b), distance in sorted(pairs.items(), key=lambda item: item[1])]


__all__ = ["describe_object", "describe_edit", "describe_commit", "audit", "revoked_report", "conflicts", "iso"]
