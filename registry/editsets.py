"""Edit sets: cherry-pick, revert, merge and snapshot, as commits over trees.

Each operation reads trees, decides the new edit set with the one routing rule for collisions
(registry/routing.py), refuses before writing anything when it cannot proceed, and writes one
commit (a merge: one commit with two parents, or a fast-forward ref move) in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from registry.graph import ancestors, best_common, is_ancestor
from registry.model import ABSENT, ACTIVE, TOMBSTONE, Commit, RegistryError, State, utcnow
from registry.revisions import check_ref_name
from registry.routing import collisions, decide, nearest_active, same_answer
from registry.store import Registry


class MergeConflict(RegistryError):
    """A merge that cannot be made without a decision; nothing was written."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


def _keys(registry: Registry, edit_ids: Iterable[str]) -> dict[str, Any]:
    """Routing keys of many edits: a few are read and checked against their provenance one by
    one; many come from the registry's key matrix (the cache routing itself uses, which `sola
    verify` checks against the objects), in one pass."""
    wanted = list(dict.fromkeys(edit_ids))
    if len(wanted) <= 16:
        return {e: registry.edit_keys(e) for e in wanted}
    key_ids, owners, matrix = registry.all_keys()
    rows: dict[str, list[int]] = {e: [] for e in wanted}
    for key_id, owner in zip(key_ids.tolist(), owners):
        if owner in rows:
            rows[owner].append(key_id)
    return {e: matrix[r] for e, r in rows.items()}


def _facts(registry: Registry, edit_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
    rows = registry.catalog.edit_rows(edit_ids)
    return {e: (r["prompt"], r["target"]) for e, r in rows.items()}


def _check_against_head(registry: Registry, head: Commit, edit_ids: list[str], what: str, leaving: set[str] = frozenset()) -> None:
    """Refuse edits that contradict (within the duplicate bound, another answer) or duplicate an
    active edit of `head` (other than those `leaving` the set), or each other: the collision rule
    of `sola edit`."""
    rule = registry.rule
    search, key_edit = registry.key_search(head, tombstones=True)
    tombstones = registry.tombstoned_edit_ids(head) | set(leaving)
    keys = _keys(registry, edit_ids)
    facts = _facts(registry, edit_ids)
    for edit_id, rows in keys.items():
        for key in rows:
            for other, distance in nearest_active(search, key_edit, tombstones | {edit_id}, key, rule.duplicate_distance, 4):
                prompt, target = registry.edit_row(other)["prompt"], registry.edit_row(other)["target"]
                verdict = "duplicates" if same_answer(prompt, target, *facts[edit_id]) else "contradicts"
                raise RegistryError(f"{what}: edit {edit_id[:12]} {verdict} active edit {other[:12]} ({prompt!r} -> {target!r}) "
                                    f"at distance {distance:.4f}; pass --force to keep both")
    for pair in collisions(keys, keys, lambda e: facts[e], rule.duplicate_distance):
        if pair.a < pair.b:
            raise RegistryError(f"{what}: edits {pair.a[:12]} and {pair.b[:12]} " + ("contradict" if pair.contradicts else "duplicate")
                                + f" each other (distance {pair.distance:.4f}); pass --force to keep both")


def cherry_pick(registry: Registry, edits: list[str], onto: str, author: str, reason: str | None = None,
                force: bool = False) -> Commit:
    """Add existing edits (same ids, same artifacts, no retraining) to branch `onto` in one commit."""
    if not edits:
        raise RegistryError("name at least one edit to cherry-pick")
    edit_ids = list(dict.fromkeys(registry.resolve_edit(e) for e in edits))
    head = registry.check_direct_write(onto)
    states = registry.trees.states(head.tree_id, edit_ids)
    already = [e for e in edit_ids if states[e] == ACTIVE]
    if already:
        raise RegistryError(f"edit {already[0][:12]} is already active on {onto}")
    if not force:
        _check_against_head(registry, head, edit_ids, "cherry-pick refused")
    facts = _facts(registry, edit_ids)
    message = f"cherry-pick {len(edit_ids)} edit(s) onto {onto}: " + "; ".join(f"{p} -> {t}" for p, t in (facts[e] for e in edit_ids[:3]))
    with registry.transaction():
        return registry.commit_on(onto, {e: ACTIVE for e in edit_ids}, author, "cherry-pick", message, reason, head=head)


def revert(registry: Registry, revision: str, branch: str, author: str, reason: str) -> Commit:
    """A new commit on `branch` that undoes the changes `revision` made to its first parent's tree."""
    if not isinstance(reason, str) or not reason.strip():
        raise RegistryError("a reason is required")
    target = registry.resolve(revision)
    if target.parent_id is None:
        raise RegistryError("the first commit has nothing to revert")
    head = registry.check_direct_write(branch)
    if not is_ancestor(registry.catalog.parent_map(), target.commit_id, head.commit_id):
        raise RegistryError(f"commit {target.commit_id[:12]} is not in the history of {branch}; "
                            f"cherry-pick or revoke the edits instead")
    changes = registry.changes(target.commit_id)
    if not changes:
        raise RegistryError(f"commit {target.commit_id[:12]} changed no edit: nothing to revert")
    before = registry.trees.states(registry.commit(target.parent_id).tree_id, [e for e, _ in changes])
    now = registry.trees.states(head.tree_id, [e for e, _ in changes])
    undo: dict[str, State] = {}
    for edit_id, state in changes:
        if now[edit_id] != state:
            raise RegistryError(f"cannot revert {target.commit_id[:12]} on {branch}: edit {edit_id[:12]} is now "
                                f"{now[edit_id] or 'absent'}, not {state or 'absent'} as that commit left it")
        undo[edit_id] = before[edit_id]
    with registry.transaction():
        return registry.commit_on(branch, undo, author, "revert", f"revert {target.commit_id[:12]}: {target.message}", reason, head=head)


@dataclass
class MergePlan:
    source: str
    target: str
    source_head: Commit
    target_head: Commit
    base: str | None
    merged: dict[str, str] = field(default_factory=dict)
    ours: dict[str, str] = field(default_factory=dict)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    fast_forward: bool = False
    up_to_date: bool = False

    def report(self, commit: str | None) -> dict[str, Any]:
        added = sorted(e for e, s in self.merged.items() if s == ACTIVE and self.ours.get(e) != ACTIVE)
        removed = sorted(e for e, s in self.ours.items() if s == ACTIVE and self.merged.get(e) != ACTIVE)
        return {"commit": commit, "source": self.source, "target": self.target, "source_commit": self.source_head.commit_id,
                "target_commit": self.target_head.commit_id, "base": self.base, "fast_forward": self.fast_forward,
                "up_to_date": self.up_to_date, "added": added, "removed": removed, "conflicts": self.conflicts,
                "warnings": self.warnings, "duplicates": self.duplicates}


def _state_conflict(edit_id: str, base: State, ours: State, theirs: State) -> dict[str, Any]:
    if ACTIVE in (ours, theirs):
        kind = "revoked-vs-kept"  # one side revoked (or dropped) the edit, the other kept or restored it
    else:
        kind = "removed-differently"  # a tombstone on one side, dropped entirely on the other
    return {"kind": kind, "edits": [edit_id], "base": base or "absent", "ours": ours or "absent", "theirs": theirs or "absent"}


def _touched_on_both_sides(registry: Registry, ours_only: set[str], theirs_only: set[str], edit_ids: list[str]) -> set[str]:
    """Edits that commits on both sides since the merge base changed (so each side decided
    about them: a revoke on one and a restore on the other conflict even when one side ends
    where it started)."""
    if not edit_ids:
        return set()
    sides: dict[str, set[str]] = {}
    for commit_id, edit_id, _ in registry.catalog.changes_of_edits(edit_ids):
        if commit_id in ours_only:
            sides.setdefault(edit_id, set()).add("ours")
        if commit_id in theirs_only:
            sides.setdefault(edit_id, set()).add("theirs")
    return {e for e, found in sides.items() if len(found) == 2}


def plan_merge(registry: Registry, source: str, target: str, resolutions: dict[str, str] | None = None) -> MergePlan:
    """The three-way merge of `source` into branch `target` from their merge base, decided but not written."""
    resolutions = dict(resolutions or {})
    for edit_id, side in resolutions.items():
        if side not in ("ours", "theirs"):
            raise RegistryError(f"--resolve {edit_id[:12]}={side}: expected ours or theirs")
    target_head = registry.branch_head(target)
    source_head = registry.resolve(source)
    if source == target:
        raise RegistryError("cannot merge a branch into itself")
    parents = registry.catalog.parent_map()
    plan = MergePlan(source, target, source_head, target_head, None)
    ours = registry.members(target_head)
    plan.ours = ours
    reach_source, reach_target = ancestors(parents, source_head.commit_id), ancestors(parents, target_head.commit_id)
    if source_head.commit_id in reach_target:
        plan.up_to_date, plan.merged, plan.base = True, dict(ours), source_head.commit_id
        return plan
    theirs = registry.members(source_head)
    if target_head.commit_id in reach_source:
        plan.fast_forward, plan.merged, plan.base = True, dict(theirs), target_head.commit_id
        return plan
    bases = best_common(parents, reach_source, reach_target)
    order = {c.commit_id: c.seq for c in registry.catalog.commits(bases).values()}
    plan.base = max(bases, key=lambda c: order.get(c, -1)) if bases else None
    base = registry.members(registry.commit(plan.base)) if plan.base else {}
    differing = [e for e in set(ours) | set(theirs) if ours.get(e) != theirs.get(e)]
    shared = ancestors(parents, plan.base) if plan.base else set()
    decided_on_both = _touched_on_both_sides(registry, reach_target - shared, reach_source - shared, differing)
    merged: dict[str, str] = {}
    used: set[str] = set()
    for edit_id in sorted(set(base) | set(ours) | set(theirs)):
        b, o, t = base.get(edit_id), ours.get(edit_id), theirs.get(edit_id)
        if o == t:
            state = o
        elif t == b and edit_id not in decided_on_both:
            state = o
        elif o == b and edit_id not in decided_on_both:
            state = t
        elif edit_id in resolutions:
            state = o if resolutions[edit_id] == "ours" else t
            used.add(edit_id)
        else:
            plan.conflicts.append(_state_conflict(edit_id, b, o, t))
            continue
        if state is not ABSENT:
            merged[edit_id] = state
    ours_new = [e for e, s in ours.items() if s == ACTIVE and base.get(e) != ACTIVE]
    theirs_new = [e for e, s in theirs.items() if s == ACTIVE and base.get(e) != ACTIVE and e not in ours_new]
    if ours_new and theirs_new:
        rule = registry.rule
        both = _keys(registry, ours_new + theirs_new)
        keys_ours = {e: both[e] for e in ours_new}
        keys_theirs = {e: both[e] for e in theirs_new}
        facts = _facts(registry, ours_new + theirs_new)
        for pair in collisions(keys_ours, keys_theirs, lambda e: facts[e], rule.threshold):
            if pair.distance < rule.duplicate_distance and not pair.contradicts:
                # the same fact added on both sides: two keys at one point would shrink each
                # other's radius to nothing, so the merge keeps ours and drops the duplicate
                merged.pop(pair.b, None)
                plan.duplicates.append({"kind": "duplicate-adds", "kept": pair.a, "dropped": pair.b, "distance": round(pair.distance, 6)})
                continue
            if pair.distance < rule.duplicate_distance and pair.contradicts:
                side = resolutions.get(pair.a) or resolutions.get(pair.b)
                if side is None:
                    plan.conflicts.append({"kind": "contradicting-adds", "edits": [pair.a, pair.b], "distance": round(pair.distance, 6),
                                           "ours": {"edit": pair.a, "prompt": facts[pair.a][0], "target": facts[pair.a][1]},
                                           "theirs": {"edit": pair.b, "prompt": facts[pair.b][0], "target": facts[pair.b][1]}})
                    continue
                used.update(e for e in (pair.a, pair.b) if e in resolutions)
                loser = pair.b if side == "ours" else pair.a
                merged.pop(loser, None)
            else:
                plan.warnings.append({"kind": "neighbours", "edits": [pair.a, pair.b], "distance": round(pair.distance, 6),
                                      "message": "a new pair of edits within the routing radius of each other"})
    unused = set(resolutions) - used
    if unused:
        raise RegistryError(f"--resolve {sorted(unused)[0][:12]}: that edit is not in conflict")
    plan.merged = merged
    return plan


def merge(registry: Registry, source: str, target: str, author: str, reason: str, resolutions: dict[str, str] | None = None) -> dict[str, Any]:
    """Merge `source` into branch `target`. Conflicts raise `MergeConflict` (nothing written);
    a protected target needs its approvals of the source head; a fast-forward moves the ref."""
    if not isinstance(reason, str) or not reason.strip():
        raise RegistryError("a reason is required")
    resolved = {registry.resolve_edit(e): side for e, side in (resolutions or {}).items()}
    plan = plan_merge(registry, source, target, resolved)
    if plan.up_to_date:
        return plan.report(None)
    if plan.conflicts:
        raise MergeConflict(f"merge of {source} into {target} has {len(plan.conflicts)} conflict(s); nothing was written "
                            f"(settle them with --resolve EDIT=ours|theirs)", plan.report(None))
    required = registry.protection(target)
    if required:
        if registry.catalog.ref(source) is None or registry.catalog.ref(source)[0] != "branch":
            raise RegistryError(f"{target} is protected: only a reviewed branch can be merged into it")
        rejections = registry.rejections(source, target)
        if rejections:
            raise RegistryError(f"{target} is protected: {', '.join(sorted(r.author for r in rejections))} rejected {source} at "
                                f"{plan.source_head.commit_id[:12]}; a new head or their approval is needed")
        approvals = registry.approvals(source, target)
        if len(approvals) < required:
            raise RegistryError(f"{target} is protected: merging {source} needs {required} approval(s) of its head "
                                f"{plan.source_head.commit_id[:12]} by non-authors, it has {len(approvals)} "
                                f"(`sola review approve {source} --into {target} --author A`)")
    if plan.fast_forward:
        registry.fast_forward(target, plan.target_head, plan.source_head, author,
                              f"merge {source} (fast-forward): {reason}")
        return plan.report(plan.source_head.commit_id)
    changes: dict[str, State] = {e: s for e, s in plan.merged.items() if plan.ours.get(e) != s}
    changes.update({e: ABSENT for e in plan.ours if e not in plan.merged})
    with registry.transaction():
        commit = registry.commit_on(target, changes, author, "merge", f"merge {source} into {target}", reason,
                                    extra_parents=[plan.source_head.commit_id], head=plan.target_head)
    return plan.report(commit.commit_id)


def snapshot(registry: Registry, name: str, from_revision: str, author: str, include: list[str] = (), exclude: list[str] = (),
             where: str | None = None, force: bool = False) -> dict[str, Any]:
    """Create branch `name` whose head holds exactly the chosen edit set: the active edits of
    `from_revision` that match `where` (a boolean SQL expression over `edits`), minus `exclude`,
    plus `include` (existing edits from anywhere). Tombstones of the revision stay tombstones."""
    from registry.where import select_where

    check_ref_name(name)
    if registry.catalog.ref(name) is not None:
        raise RegistryError(f"{name!r} already exists")
    base = registry.resolve(from_revision)
    members = registry.members(base)
    active = {e for e, s in members.items() if s == ACTIVE}
    chosen = set(active)
    if where is not None:
        chosen &= select_where(list(registry.catalog.edit_rows(active).values()), where)
    excluded = [registry.resolve_edit(e) for e in exclude]
    for edit_id in excluded:
        if edit_id not in active:
            raise RegistryError(f"--exclude {edit_id[:12]}: not an active edit at {from_revision}")
        chosen.discard(edit_id)
    included = [registry.resolve_edit(e) for e in include]
    for edit_id in included:
        if edit_id in chosen:
            raise RegistryError(f"--include {edit_id[:12]}: already in the chosen set")
    if included and not force:
        _check_against_head(registry, base, included, "snapshot refused", leaving=active - chosen)
    changes: dict[str, State] = {e: ABSENT for e in active - chosen}
    changes.update({e: ACTIVE for e in included})
    with registry.transaction():
        registry.catalog.move_ref(name, "branch", base.commit_id, None, author, f"snapshot {name} from {from_revision}", utcnow())
        description = f"snapshot {name} from {from_revision}: {len(chosen) + len(included)} of {len(active)} edit(s)" + \
            (f" where {where}" if where else "")
        commit = registry.commit_on(name, changes, author, "snapshot", description, None, head=base)
    edits = sorted(chosen | set(included))
    return {"branch": name, "commit": commit.commit_id, "from": base.commit_id, "edits": edits,
            "excluded": sorted(active - chosen), "included": included,
            "tombstones": sorted(e for e, s in members.items() if s == TOMBSTONE),
            "answered_by_others": takeovers(registry, commit, sorted(active - chosen))}


def takeovers(registry: Registry, commit: Commit, edit_ids: list[str]) -> list[dict[str, Any]]:
    """Inputs (prompt and rephrases) of edits that left the set which another edit of `commit`
    now answers, by the routing rule on their stored keys (like revoke's report)."""
    if not edit_ids:
        return []
    search, key_edit = registry.key_search(commit, tombstones=True)
    tombstones = registry.tombstoned_edit_ids(commit)
    found = []
    for edit_id in edit_ids:
        keys = registry.edit_keys(edit_id)
        prompts = registry.provenance(edit_id).get("key_prompts") or [registry.edit_row(edit_id)["prompt"]] * len(keys)
        routing = decide(search, key_edit, tombstones, keys, registry.rule)
        for text, other, distance, radius in zip(prompts, routing.edits, routing.distances, routing.radii):
            if other is not None and other != edit_id:
                row = registry.edit_row(other)
                found.append({"left": edit_id, "input": text, "edit": other, "prompt": row["prompt"], "target": row["target"],
                              "distance": round(distance, 6), "radius": round(radius, 6)})
    return found


def neighbours_at(registry: Registry, commit: Commit, edit_ids: list[str]) -> list[dict[str, Any]]:
    """Active edits of `commit` within the routing threshold of these edits' keys (a warning)."""
    search, key_edit = registry.key_search(commit, tombstones=True)
    tombstones = registry.tombstoned_edit_ids(commit)
    found = []
    for edit_id in edit_ids:
        best: dict[str, float] = {}
        for key in registry.edit_keys(edit_id):
            for other, distance in nearest_active(search, key_edit, tombstones | set(edit_ids), key, registry.rule.threshold, 8):
                best[other] = min(distance, best.get(other, distance))
        found += [{"edit": edit_id, "neighbour": other, "distance": round(d, 6)} for other, d in sorted(best.items(), key=lambda i: i[1])]
    return found


__all__ = ["cherry_pick", "revert", "merge", "plan_merge", "snapshot", "takeovers", "neighbours_at", "MergeConflict"]
