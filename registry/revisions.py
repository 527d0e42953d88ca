"""Revision syntax: what `--rev`, `diff A B`, `export REV` and the server's `model` field accept.

    NAME              a branch or tag
    HEX               a commit id or a unique prefix of at least 4 hex digits (`sha256:` allowed)
    REV~N             N first parents back (N >= 1)
    REV^N             the N-th parent (^1 the first, ^2 the merged-in side of a merge)
    NAME@ISO_TIME     what branch NAME pointed to at that time (its ref log)

Suffixes chain left to right (`main~2^2`). A bare `~` or `^`, an empty revision and a time on
anything but a ref name are refused rather than guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from registry.model import RegistryError

_STEP = re.compile(r"([~^])(\d+)")
_FORBIDDEN_IN_NAMES = set("~^@:\\ \t\n\r") | {"\x00"}
MAX_NAME = 200


@dataclass(frozen=True)
class Revision:
    base: str
    steps: tuple[tuple[str, int], ...] = ()
    at: str | None = None


def parse_revision(text: str | None) -> Revision:
    if text is None:
        raise RegistryError("empty revision")
    raw = text.strip()
    if not raw:
        raise RegistryError("empty revision")
    at = None
    if "@" in raw:
        raw, _, at = raw.partition("@")
        if not at.strip():
            raise RegistryError(f"bad revision {text!r}: expected NAME@ISO_TIME")
    cut = min([i for i in (raw.find("~"), raw.find("^")) if i >= 0], default=len(raw))
    base, rest = raw[:cut], raw[cut:]
    if not base:
        raise RegistryError(f"bad revision {text!r}: no name or commit before {rest[:1]!r}")
    steps = []
    position = 0
    while position < len(rest):
        match = _STEP.match(rest, position)
        if match is None:
            raise RegistryError(f"bad revision {text!r}: expected NAME~N or NAME^N with a number")
        count = int(match.group(2))
        if match.group(1) == "~" and count < 1 or match.group(1) == "^" and count < 1:
            raise RegistryError(f"bad revision {text!r}: {match.group(0)} goes nowhere")
        steps.append((match.group(1), count))
        position = match.end()
    if at is not None and steps:
        raise RegistryError(f"bad revision {text!r}: a time applies to a branch name, not to {rest!r}")
    return Revision(base, tuple(steps), at)


def check_ref_name(name: str, what: str = "branch") -> str:
    """Refuse names that would read as a revision expression, a commit id or nothing."""
    if not isinstance(name, str) or not name or name.strip() != name or len(name) > MAX_NAME:
        raise RegistryError(f"invalid {what} name {name[:40] if isinstance(name, str) else name!r}")
    if set(name) & _FORBIDDEN_IN_NAMES or name.startswith("-") or name in (".", ".."):
        raise RegistryError(f"invalid {what} name {name!r}: it may not contain ~ ^ @ : or whitespace")
    if len(name) >= 4 and all(c in "0123456789abcdef" for c in name.lower()):
        raise RegistryError(f"invalid {what} name {name!r}: it would read as a commit id")
    if any(ord(c) < 32 for c in name):
        raise RegistryError(f"invalid {what} name {name!r}")
    return name


def hex_prefix(text: str) -> str | None:
    """The lower-case hex form of a commit or edit id prefix, or None when it cannot be one."""
    lowered = text.strip().lower().removeprefix("sha256:")
    if len(lowered) < 4 or any(c not in "0123456789abcdef" for c in lowered):
        return None
    return lowered


__all__ = ["Revision", "parse_revision", "check_ref_name", "hex_prefix"]
