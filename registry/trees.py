"""Trees as skip-deltas: reading any edit set is a lookup of at most log2(n) deltas, never a replay.

A tree's content is its base tree's content overlaid by its own member rows (`TreeDelta`). A new
tree derives from its parent tree plus a commit's changes; its base is the derivation ancestor
at `skip_base_level(level)`, and its rows are the changes composed with the deltas between the
parent and that base, minus those that agree with the base. `TreeStore` does this against any
source of stored trees (the catalog, or nothing at all when a migration replays history in
memory) and keeps the trees of an unfinished write pending until the caller stores them.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

from registry.model import ABSENT, RegistryError, State, TreeDelta, TreeSummary, skip_base_level

TreeFetch = Callable[[str], "TreeDelta | None"]


class TreeStore:
    def __init__(self, config_digest: str, fetch: TreeFetch) -> None:
        self.config_digest = config_digest
        self._fetch = fetch
        self._known: dict[str, TreeDelta] = {}
        self._pending: list[TreeDelta] = []

    # --- reading ----------------------------------------------------------------------------------
    def find(self, tree_id: str) -> TreeDelta | None:
        tree = self._known.get(tree_id)
        if tree is None:
            tree = self._fetch(tree_id)
            if tree is not None:
                self._known[tree_id] = tree
        return tree

    def get(self, tree_id: str) -> TreeDelta:
        tree = self.find(tree_id)
        if tree is None:
            raise RegistryError(f"tree {tree_id[:12]} is missing (run `sola verify`)")
        return tree

    def chain(self, tree_id: str) -> list[TreeDelta]:
        """The tree and its bases down to the empty tree."""
        found = [self.get(tree_id)]
        while found[-1].base_id is not None:
            if len(found) > 80:
                raise RegistryError(f"tree {tree_id[:12]}: base chain does not end (run `sola verify`)")
            found.append(self.get(found[-1].base_id))
        return found

    def states(self, tree_id: str, edit_ids: Iterable[str]) -> dict[str, State]:
        """Each edit's state in the tree (None: not a member)."""
        chain = self.chain(tree_id)
        out: dict[str, State] = {}
        for edit_id in edit_ids:
            state: State = ABSENT
            for tree in chain:
                if edit_id in tree.members:
                    state = tree.members[edit_id]
                    break
            out[edit_id] = state
        return out

    def members(self, tree_id: str) -> dict[str, str]:
        """The whole edit set: edit id -> 'active' | 'tombstone'."""
        content: dict[str, str] = {}
        for tree in reversed(self.chain(tree_id)):
            for edit_id, state in tree.members.items():
                if state is ABSENT:
                    content.pop(edit_id, None)
                else:
                    content[edit_id] = state
        return content

    # --- writing ----------------------------------------------------------------------------------
    def empty(self) -> TreeSummary:
        """The empty tree (level 0, the base of every chain), created pending if it is new."""
        summary = TreeSummary.empty(self.config_digest)
        if self.find(summary.tree_id) is None:
            self._add(TreeDelta(summary.tree_id, None, 0, summary, {}))
        return summary

    def derive(self, parent_tree: str, changes: Mapping[str, State]) -> TreeSummary:
        """The tree of `parent_tree` with `changes` applied (stored pending when it is new)."""
        parent = self.get(parent_tree)
        before = self.states(parent_tree, changes)
        transitions = [(e, before[e], s) for e, s in changes.items() if before[e] != s]
        summary = parent.summary.changed(self.config_digest, transitions)
        if self.find(summary.tree_id) is not None:
            return summary
        level = parent.level + 1
        composed: dict[str, State] = dict(changes)
        base = parent
        while base.level > skip_base_level(level):
            for edit_id, state in base.members.items():
                composed.setdefault(edit_id, state)
            base = self.get(base.base_id)  # type: ignore[arg-type]
        in_base = self.states(base.tree_id, composed)
        delta = {e: s for e, s in composed.items() if in_base[e] != s}
        self._add(TreeDelta(summary.tree_id, base.tree_id, level, summary, delta))
        return summary

    def take_pending(self) -> list[TreeDelta]:
        """The new trees of this write, to be stored in its transaction."""
        pending, self._pending = self._pending, []
        return pending

    def discard_pending(self) -> None:
        """Forget trees of a write that did not commit."""
        for tree in self._pending:
            self._known.pop(tree.tree_id, None)
        self._pending = []

    def _add(self, tree: TreeDelta) -> None:
        self._known[tree.tree_id] = tree
        self._pending.append(tree)


__all__ = ["TreeStore"]
