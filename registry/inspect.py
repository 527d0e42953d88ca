"""Read-only views over the registry: show, audit, conflicts. Plain dicts, ready for JSON."""

from __future__ import annotations

from typing import Any

import numpy as np

from registry.store import Commit, Registry, RegistryError, iso


def _matches(registry: Registry, table: str, column: str, prefix: str) -> list[str]:
    rows = registry.db.execute(f"SELECT {column} FROM {table} WHERE starts_with({column}, ?) LIMIT 2", [prefix]).fetchall()
    return [r[0] for r in rows]


def describe_object(registry: Registry, ident: str) -> dict[str, Any]:
    """`show`: a ref/commit or an edit, by id or unique prefix."""
    text = ident.strip().lower().removeprefix("sha256:")
    is_ref = registry.db.execute("SELECT 1 FROM refs WHERE name = ?", [ident.split("~")[0]]).fetchone()
    if is_ref or len(text) < 4:
        return describe_commit(registry, registry.resolve(ident))
    commits = _matches(registry, "commits", "commit_id", text)
    edits = _matches(registry, "edits", "edit_id", text)
    if len(commits) + len(edits) > 1:
        raise RegistryError(f"ambiguous id {ident!r}: give more characters")
    if edits:
        return describe_edit(registry, edits[0])
    return describe_commit(registry, registry.resolve(ident))


def edit_summary(registry: Registry, edit_id: str) -> dict[str, Any]:
    """The short form of an edit used in listings: id, prompt, target."""
    row = registry.edit_row(edit_id)
    return {"edit": edit_id, "prompt": row["prompt"], "target": row["target"]}


def describe_commit(registry: Registry, commit: Commit) -> dict[str, Any]:
    changes = [dict(edit_summary(registry, edit_id), active=active) for edit_id, active in registry.changes(commit.commit_id)]
    refs = [r[0] for r in registry.db.execute("SELECT name FROM refs WHERE commit_id = ? ORDER BY name", [commit.commit_id]).fetchall()]
    return dict(commit.to_dict(), kind="commit", changes=changes, refs=refs)


def edit_neighbours(registry: Registry, edit_id: str, commit: Commit | None = None, k: int = 16) -> list[dict[str, Any]]:
    """Active edits (other than this one) with a key within the routing threshold of this edit's keys."""
    commit = commit or registry.head()
    threshold = float(registry.routing["threshold"])
    search, key_edit = registry.key_search(commit)
    keys = registry.edit_keys(edit_id)
    best: dict[str, float] = {}
    for key in keys:
        sims, ids = search.neighbours(key, k)
        for sim, key_id in zip(sims.tolist(), ids.tolist()):
            other = key_edit[int(key_id)]
            distance = max(0.0, 1.0 - sim)
            if other != edit_id and distance < threshold:
                best[other] = min(distance, best.get(other, distance))
    out = []
    for other, distance in sorted(best.items(), key=lambda item: item[1]):
        out.append(dict(edit_summary(registry, other), distance=round(distance, 6)))
    return out


def describe_edit(registry: Registry, edit_id: str) -> dict[str, Any]:
    row = registry.edit_row(edit_id)
    provenance = registry.provenance(edit_id)
    active = registry.is_active(edit_id)
    return {
        "kind": "edit",
        "edit": edit_id,
        "active": active,
        "prompt": row["prompt"],
        "target": row["target"],
        "tensors_sha256": row["tensors_sha256"],
        "keys_sha256": provenance.get("keys_sha256"),
        "provenance": provenance,
        "history": registry.edit_history(edit_id),
        "neighbours": edit_neighbours(registry, edit_id) if active else [],
    }


def audit(registry: Registry, since: str | None = None) -> list[dict[str, Any]]:
    """Every operation on main, oldest first: who, when, what, why."""
    from registry.store import parse_time

    sql = "SELECT commit_id FROM commits"
    params: list[Any] = []
    if since:
        sql += " WHERE time >= ?"
        params.append(parse_time(since))
    out = []
    for (commit_id,) in registry.db.execute(sql + " ORDER BY seq", params).fetchall():
        commit = registry.commit(commit_id)
        out.append(dict(commit.to_dict(), edits=[e for e, _ in registry.changes(commit_id)]))
    return out


def revoked_report(registry: Registry, since: str | None = None) -> list[dict[str, Any]]:
    """Governance view: every edit revoked at main, with who revoked it, why, and when it was live."""
    from registry.store import parse_time

    head = registry.head()
    rows = registry.db.execute(
        """SELECT edit_id FROM commit_changes WHERE seq <= ? GROUP BY edit_id
           HAVING NOT arg_max(active, seq) ORDER BY max(seq)""",
        [head.seq],
    ).fetchall()
    cutoff = parse_time(since) if since else None
    tombstoned = registry.tombstoned_edit_ids(head)
    report = []
    for (edit_id,) in rows:
        history = registry.edit_history(edit_id)
        revocation = history[-1]
        if cutoff is not None and parse_time(revocation["time"]) < cutoff:
            continue
        live, start = [], None
        for event in history:
            if event["active"] and start is None:
                start = event["time"]
            elif not event["active"] and start is not None:
                live.append({"from": start, "until": event["time"]})
                start = None
        row = registry.edit_row(edit_id)
        report.append({
            "edit": edit_id,
            "prompt": row["prompt"],
            "target": row["target"],
            "author": row["author"],
            "revoked_at": revocation["time"],
            "revoked_by": revocation["author"],
            "reason": revocation["reason"],
            "commit": revocation["commit"],
            "op": revocation["op"],
            "tombstone": edit_id in tombstoned,
            "live": live,
        })
    return report


def conflicts(registry: Registry, commit: Commit) -> list[dict[str, Any]]:
    """Pairs of active edits whose keys lie within the routing threshold of each other."""
    threshold = float(registry.routing["threshold"])
    search, key_edit = registry.key_search(commit)
    key_ids = np.array(sorted(key_edit), dtype=np.int64)
    if len(key_ids) < 2:
        return []
    keys = registry.key_matrix.rows(key_ids, registry.key_dim())
    sims, ids = search.index.search(np.ascontiguousarray(keys), min(8, len(key_ids)))
    pairs: dict[tuple[str, str], float] = {}
    for row, key_id in enumerate(key_ids.tolist()):
        mine = key_edit[key_id]
        for sim, other_id in zip(sims[row].tolist(), ids[row].tolist()):
            if other_id < 0:
                continue
            other = key_edit[int(other_id)]
            distance = max(0.0, 1.0 - sim)
            if other != mine and distance < threshold:
                pair = tuple(sorted((mine, other)))
                pairs[pair] = min(distance, pairs.get(pair, distance))
    out = []
    for (a, b), distance in sorted(pairs.items(), key=lambda item: item[1]):
        out.append({"distance": round(distance, 6), "a": edit_summary(registry, a), "b": edit_summary(registry, b)})
    return out


__all__ = ["describe_object", "describe_edit", "describe_commit", "audit", "revoked_report", "conflicts", "iso"]
