"""Lineage: where a rebased edit came from, read from its provenance and, when the origin
registry is still where the rebase found it, from the origin itself.

`sola rebase` writes each derived edit's `derived_from` (origin registry id and path, revision,
edit, base model) into its provenance, so the link is part of the edit's content (its id
hashes it) and needs no table. Following it opens the origin read-only: its registry id must
match (a different registry at that path is reported, not trusted), and an origin that was
itself rebased is followed further, up to `MAX_DEPTH` registries back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from registry.storage import registry_exists
from registry.store import Registry

MAX_DEPTH = 8


def derived_from(registry: Registry, edit_id: str) -> dict[str, Any] | None:
    """The lineage recorded with an edit (None for an edit made directly)."""
    return registry.provenance(edit_id).get("derived_from")


def follow(registry: Registry, edit_id: str, depth: int = MAX_DEPTH) -> dict[str, Any] | None:
    """An edit's lineage with the origin edit as the origin registry records it: its fact,
    author, reason, source and history there (`reachable` false when the origin cannot be read
    at its recorded path), and the origin's own lineage when it too was derived."""
    lineage = derived_from(registry, edit_id)
    if lineage is None:
        return None
    found = dict(lineage)
    path = Path(lineage.get("path") or "")
    if depth <= 0 or not registry_exists(path):
        return dict(found, reachable=False)
    try:
        origin = Registry.open(path, writable=False, wait_seconds=5.0)
    except Exception as error:  # noqa: BLE001 - a lineage link is informative; an unreadable origin is reported
        return dict(found, reachable=False, note=f"cannot open the origin: {str(error).splitlines()[0] if str(error) else type(error).__name__}")
    try:
        if origin.catalog.registry_id() != lineage.get("registry"):
            return dict(found, reachable=False, note=f"{path} now holds a different registry")
        row = origin.catalog.edit_row(lineage["edit"])
        if row is None:
            return dict(found, reachable=False, note="the origin registry has no such edit")
        provenance = origin.provenance(lineage["edit"])
        found.update(reachable=True, origin_edit={
            "prompt": row["prompt"], "target": row["target"], "author": provenance.get("author"),
            "reason": provenance.get("reason"), "source": provenance.get("source"), "created_at": provenance.get("created_at")})
        found["origin_history"] = [{k: h[k] for k in ("commit", "time", "author", "op", "reason", "state")}
                                   for h in origin.edit_history(lineage["edit"])]
        found["origin_lineage"] = follow(origin, lineage["edit"], depth - 1)
        return found
    finally:
        origin.close()


__all__ = ["derived_from", "follow", "MAX_DEPTH"]
