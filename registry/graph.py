"""Walks over the commit graph, as pure functions of a parent map {commit: (parents...)}."""

from __future__ import annotations

from typing import Mapping

ParentMap = Mapping[str, tuple[str, ...]]


def ancestors(parents: ParentMap, start: str) -> set[str]:
    """`start` and every commit reachable from it through any parent."""
    seen = {start}
    stack = [start]
    while stack:
        for parent in parents.get(stack.pop(), ()):
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


def ancestors_of_all(parents: ParentMap, starts: list[str]) -> set[str]:
    seen: set[str] = set()
    for start in starts:
        if start not in seen:
            seen |= ancestors(parents, start)
    return seen


def first_parents(parents: ParentMap, start: str) -> list[str]:
    """`start`, its first parent, that one's first parent ... down to the root (newest first)."""
    chain = [start]
    while parents.get(chain[-1]):
        chain.append(parents[chain[-1]][0])
    return chain


def is_ancestor(parents: ParentMap, older: str, newer: str) -> bool:
    return older in ancestors(parents, newer)


def best_common(parents: ParentMap, reach_a: set[str], reach_b: set[str]) -> set[str]:
    """The best common ancestors, given the ancestor sets of two commits: common ancestors that
    no other common ancestor descends from (one, except after criss-cross merges)."""
    common = reach_a & reach_b
    # the common set is closed under "parent of", so its heads are its members no member has as a parent
    return common - {parent for commit in common for parent in parents.get(commit, ())}


def merge_bases(parents: ParentMap, a: str, b: str) -> set[str]:
    """The best common ancestors of commits `a` and `b`."""
    return best_common(parents, ancestors(parents, a), ancestors(parents, b))

__all__ = ["ancestors", "ancestors_of_all", "first_parents", "is_ancestor", "best_common", "merge_bases"]
