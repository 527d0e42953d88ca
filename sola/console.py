"""The governance console: `sola serve --console` serves the registry's history as web pages.

Server-rendered HTML (Jinja2 with autoescaping: every prompt, target, reason and name is user
text and is escaped), a stylesheet and a few lines of JavaScript from `sola/console_assets/`,
no CDN and no build step. It lives in the same FastAPI app as the OpenAI API, behind the same
tokens: `Server.identify` maps a bearer header or the `sola_token` cookie (set by the login form,
HttpOnly, SameSite=Strict) to an identity whose role decides what it may do — viewers read,
reviewers and admins also approve or reject proposals. The only writes are review records
(`Registry.review`, with the reviewer's identity as author, visible in `sola audit`), sent as
POST forms with a CSRF token bound to the caller's credential.

Pages: timeline (`/console/`), commit, edit (with its PEFT adapter as a zip), compare two
revisions or dates, revoked facts (CSV/JSON export), proposals (branches bringing commits into a
protected branch, their merge plan, approvals, stale reviews, approve/reject), ask (the model at
any revision or date, with the edit that fired and the prompt's blame), health (verify, counts).

Every registry read is a short read transaction (`sola.snapshots.reading`), so a console never
keeps a writer waiting longer than one page takes. History is immutable, so the console keeps
what it has read of the commit graph in memory (`CommitIndex`) and reads only new commits: a
timeline page on a 100k-commit branch is a filter and a slice of an in-memory list, and
`REV~N` resolves without N catalog reads.
"""

from __future__ import annotations

import asyncio
import copy
import csv
import hashlib
import hmac
import io
import json
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from registry.model import ACTIVE, TOMBSTONE, Commit, RegistryError, iso, parse_time
from registry.revisions import parse_revision
from sola.snapshots import Snapshot, reading

if TYPE_CHECKING:
    from sola.server import Identity, Server

ASSETS = Path(__file__).parent / "console_assets"
COOKIE = "sola_token"
PAGE_SIZE = 50
LIST_SIZE = 100
MAX_FORM_BYTES = 64 * 1024
REVIEW_ROLES = ("reviewer", "admin")
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".png": "image/png",
                ".svg": "image/svg+xml"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class ConsoleError(Exception):
    """A page that cannot be shown: HTTP status and a message for the person reading it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


# --- the commit graph, kept in memory -----------------------------------------------------------
class CommitIndex:
    """Every commit the console has seen, closed under parents (a commit's parents are always
    here too) and kept in write order, and for a few heads the list of commits they reach,
    newest first: what `sola log --rev HEAD` lists.

    Filled once with `all_commits` (two queries), then extended by walking back from heads it
    does not know until it meets known commits: commits never change, so nothing is re-read.
    A parent is always written before its child (smaller `seq`), so the commits a head reaches
    are found in one sweep down the write order, marking parents of marked commits."""

    def __init__(self, heads_kept: int = 8) -> None:
        self._lock = threading.RLock()
        self.by_id: dict[str, Commit] = {}
        self._order: list[Commit] = []  # by seq
        self._position: dict[str, int] = {}
        self._parents: list[tuple[int, ...]] = []
        self._reach: OrderedDict[str, list[Commit]] = OrderedDict()
        self._reach_sets: OrderedDict[str, frozenset[str]] = OrderedDict()
        self._heads_kept = heads_kept
        self.ops: set[str] = set()
        self.load_seconds: float | None = None

    def ensure(self, registry: Any, commit_ids: Iterable[str]) -> None:
        """Make sure these commits (and so everything they reach) are indexed."""
        wanted = [c for c in dict.fromkeys(commit_ids) if c and c not in self.by_id]
        if not wanted:
            return
        with self._lock:
            fresh: list[Commit] = []
            if not self.by_id:
                started = time.perf_counter()
                fresh = registry.catalog.all_commits()
                self.load_seconds = time.perf_counter() - started
                known = {c.commit_id for c in fresh}
                wanted = [c for c in wanted if c not in known]
            else:
                known = set()
            while wanted:
                found = registry.catalog.commits(wanted)
                missing = [c for c in wanted if c not in found]
                if missing:
                    raise RegistryError(f"unknown commit {missing[0]}")
                fresh.extend(found.values())
                known.update(found)
                wanted = list(dict.fromkeys(p for c in found.values() for p in c.parents if p not in self.by_id and p not in known))
            self._add(fresh)

    def _add(self, commits: list[Commit]) -> None:
        commits = sorted((c for c in commits if c.commit_id not in self.by_id), key=lambda c: c.seq)
        if not commits:
            return
        for commit in commits:
            self.by_id[commit.commit_id] = commit
            self.ops.add(commit.op)
        if self._order and commits[0].seq < self._order[-1].seq:  # an older commit seen late: rebuild the order
            self._order = sorted(self.by_id.values(), key=lambda c: c.seq)
            self._position = {c.commit_id: i for i, c in enumerate(self._order)}
            self._parents = [tuple(self._position[p] for p in c.parents) for c in self._order]
            return
        for commit in commits:
            self._position[commit.commit_id] = len(self._order)
            self._order.append(commit)
        for commit in commits:
            self._parents.append(tuple(self._position[p] for p in commit.parents))

    def reachable(self, head: Commit) -> list[Commit]:
        """Commits reachable from `head` (itself included), newest first by write order."""
        with self._lock:
            cached = self._reach.get(head.commit_id)
            if cached is not None:
                self._reach.move_to_end(head.commit_id)
                return cached
            parent_list = self._reach.get(head.parents[0]) if len(head.parents) == 1 else None
            if parent_list is not None and (not parent_list or parent_list[0].seq < head.seq):
                ordered = [head, *parent_list]  # the common case: one new commit on a known head
            else:
                ordered = self._sweep(self._position[head.commit_id])
            self._reach[head.commit_id] = ordered
            while len(self._reach) > self._heads_kept:
                self._reach.popitem(last=False)
            return ordered

    def _sweep(self, top: int) -> list[Commit]:
        marked = bytearray(top + 1)
        marked[top] = 1
        parents, order = self._parents, self._order
        out = []
        for position in range(top, -1, -1):
            if marked[position]:
                out.append(order[position])
                for parent in parents[position]:
                    marked[parent] = 1
        return out

    def reachable_set(self, head: Commit) -> frozenset[str]:
        with self._lock:
            found = self._reach_sets.get(head.commit_id)
            if found is not None:
                self._reach_sets.move_to_end(head.commit_id)
                return found
            found = frozenset(c.commit_id for c in self.reachable(head))
            self._reach_sets[head.commit_id] = found
            while len(self._reach_sets) > self._heads_kept:
                self._reach_sets.popitem(last=False)
            return found

    def walk(self, commit: Commit, steps: tuple[tuple[str, int], ...], text: str) -> Commit:
        """`~N` and `^N` steps from a commit, in memory (the store reads one commit per step)."""
        for kind, count in steps:
            if kind == "^":
                if count > len(commit.parents):
                    raise RegistryError(f"revision {text!r}: commit {commit.commit_id[:12]} has {len(commit.parents)} parent(s)")
                commit = self.by_id[commit.parents[count - 1]]
                continue
            for _ in range(count):
                if commit.parent_id is None:
                    raise RegistryError(f"revision {text!r} goes back past the first commit")
                commit = self.by_id[commit.parent_id]
        return commit

    def resolve(self, registry: Any, text: str, refs: dict[str, tuple[str, str]] | None = None) -> Commit:
        """A revision as `Registry.resolve` reads it. A ref in `refs` (the server's last poll)
        whose commit is indexed, and every `~N`/`^N` step, need no catalog read."""
        parsed = parse_revision(text)
        if parsed.at is None and refs is not None and parsed.base in refs and refs[parsed.base][1] in self.by_id:
            return self.walk(self.by_id[refs[parsed.base][1]], parsed.steps, text)
        if parsed.at is None and parsed.base.lower().removeprefix("sha256:") in self.by_id and (refs is None or parsed.base not in refs):
            return self.walk(self.by_id[parsed.base.lower().removeprefix("sha256:")], parsed.steps, text)
        if parsed.at is not None or not parsed.steps:
            commit = registry.resolve(text)
            self.ensure(registry, [commit.commit_id])
            return self.by_id[commit.commit_id]
        commit = registry.resolve(parsed.base)
        self.ensure(registry, [commit.commit_id])
        return self.walk(self.by_id[commit.commit_id], parsed.steps, text)


class TreeCache:
    """Tree deltas (immutable, content-addressed) kept across requests, so an edit set read once
    is not read again: a TreeStore per read whose fetch looks here first."""

    def __init__(self, max_members: int = 4_000_000) -> None:
        self.max_members = max_members
        self._trees: OrderedDict[str, Any] = OrderedDict()
        self._members = 0
        self._lock = threading.Lock()

    def store(self, registry: Any) -> Any:
        from registry.trees import TreeStore

        def fetch(tree_id: str) -> Any:
            with self._lock:
                found = self._trees.get(tree_id)
                if found is not None:
                    self._trees.move_to_end(tree_id)
                    return found
            found = registry.catalog.tree(tree_id)
            if found is not None:
                with self._lock:
                    if tree_id not in self._trees:
                        self._trees[tree_id] = found
                        self._members += len(found.members)
                    while self._members > self.max_members and len(self._trees) > 1:
                        _, dropped = self._trees.popitem(last=False)
                        self._members -= len(dropped.members)
            return found

        return TreeStore(registry.config_digest(), fetch)


class _IndexedCatalog:
    """The catalog with its commit reads answered from the console's commit index (commits are
    immutable, so a cached one is the stored one): the registry's own views (revoked facts,
    merge plans) then run unchanged without re-reading 100k commits in chunks of ids."""

    def __init__(self, catalog: Any, index: CommitIndex) -> None:
        self._catalog = catalog
        self._index = index
        self._complete: bool | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._catalog, name)

    def complete(self) -> bool:
        if self._complete is None:
            self._complete = len(self._index.by_id) == self._catalog.count("commits")
        return self._complete

    def commit(self, commit_id: str) -> Commit | None:
        found = self._index.by_id.get(commit_id)
        return found if found is not None else self._catalog.commit(commit_id)

    def commits(self, commit_ids: Iterable[str]) -> dict[str, Commit]:
        ids = list(dict.fromkeys(commit_ids))
        known = self._index.by_id
        out = {c: known[c] for c in ids if c in known}
        missing = [c for c in ids if c not in known]
        if missing:
            out.update(self._catalog.commits(missing))
        return out

    def parent_map(self) -> dict[str, tuple[str, ...]]:
        if not self.complete():
            return self._catalog.parent_map()
        return {c.commit_id: c.parents for c in self._index.by_id.values()}

    def all_commits(self) -> list[Commit]:
        if not self.complete():
            return self._catalog.all_commits()
        return sorted(self._index.by_id.values(), key=lambda c: c.seq)


class _Lazy:
    """A registry read transaction opened on first use: a page that finds everything in the
    console's memory never opens the catalog at all."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._context: Any = None
        self._registry: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._registry is None:
            self._context = reading(self._root)
            self._registry = self._context.__enter__()
        return getattr(self._registry, name)

    @property
    def opened(self) -> bool:
        return self._registry is not None

    def get(self) -> Any:
        self.__getattr__("root")
        return self._registry

    def close(self) -> None:
        if self._context is not None:
            self._context.__exit__(None, None, None)
            self._context = self._registry = None


class _Lru:
    """A small thread-safe cache of computed views keyed by immutable inputs (commit ids)."""

    def __init__(self, capacity: int = 16) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, compute: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return value


# --- asking the model ---------------------------------------------------------------------------
class _RecordingBank:
    """A snapshot's bank that keeps the pooled query and the routing decision of the one
    sequence it routes, so Ask shows which key was nearest, at what distance and radius, and
    blame uses the very query the answer was routed by."""

    def __init__(self, bank: Any) -> None:
        self.bank = bank
        self.queries = None
        self.routing = None

    @property
    def size(self) -> int:
        return max(1, self.bank.size)  # the layer only pools a query for a bank with keys

    @property
    def revoked(self) -> frozenset[str]:
        return self.bank.revoked

    @property
    def answers(self) -> dict[str, tuple[str, str]]:
        return self.bank.answers

    def decide(self, queries: Any, threshold: float, radius_ratio: float) -> Any:
        from sola.layer import Routing

        self.queries = queries.copy()
        self.routing = self.bank.decide(queries, threshold, radius_ratio) if self.bank.size else Routing.unrouted(len(queries))
        return self.routing

    def lora(self, edit_id: str) -> Any:
        return self.bank.lora(edit_id)


# --- helpers ------------------------------------------------------------------------------------
def _short(value: Any, length: int = 12) -> str:
    return "" if value is None else str(value)[:length]


def _when(value: Any) -> str:
    """An ISO time as `YYYY-MM-DD HH:MM:SSZ` for tables (the full value goes in a title)."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        value = iso(value)
    text = str(value)
    return text[:19].replace("T", " ") + "Z" if len(text) >= 19 else text


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value == float("inf"):
            return "∞"
        return f"{value:.{digits}f}"
    return str(value)


def _time_bound(text: str | None, end: bool) -> datetime | None:
    """A filter bound: an ISO time, or a date (the start of that day, or with `end` its end)."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    moment = parse_time(text)
    if end and len(text) == 10:  # a bare date includes that whole day
        moment = moment + timedelta(days=1) - timedelta(microseconds=1)
    return moment


def _at_time(text: str | None) -> str | None:
    """A date or time from a form (datetime-local gives `YYYY-MM-DDTHH:MM`), as ISO UTC."""
    if text is None or not text.strip():
        return None
    return iso(parse_time(text.strip()))


def _revision(rev: str | None, at: str | None, default: str) -> str:
    rev = (rev or "").strip() or default
    when = _at_time(at)
    if when is None:
        return rev
    parsed = parse_revision(rev)
    if parsed.steps or parsed.at:
        raise RegistryError(f"a date applies to a branch or tag name, not to {rev!r}")
    return f"{rev}@{when}"


def _csv_cell(value: Any) -> str:
    """A CSV cell that a spreadsheet will not run as a formula (=, +, -, @ lead a formula)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _form(body: bytes) -> dict[str, str]:
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise ConsoleError(400, "the form is not UTF-8") from None
    return {k: v[-1] for k, v in parsed.items()}


def _pages(total: int, page: int, size: int) -> dict[str, int]:
    last = max(1, -(-total // size))
    page = min(max(1, page), last)
    return {"page": page, "last": last, "total": total, "first_row": (page - 1) * size + (1 if total else 0),
            "last_row": min(total, page * size), "size": size}


@dataclass
class VerifyState:
    state: str = "never"  # never | running | done | failed
    started: str | None = None
    finished: str | None = None
    seconds: float | None = None
    report: dict[str, Any] | None = None
    error: str | None = None
    by: str | None = None


# --- the console --------------------------------------------------------------------------------
class Console:
    def __init__(self, server: "Server") -> None:
        self.server = server
        self.root = server.config.root
        self.secret = secrets.token_bytes(32)
        self.index = CommitIndex()
        self.trees = TreeCache()
        self.filtered = _Lru(32)
        self.diffs = _Lru(8)
        self.revoked_reports = _Lru(4)
        self.verify = VerifyState()
        self._verify_lock = threading.Lock()
        self.templates = Environment(loader=FileSystemLoader(str(ASSETS / "templates")), autoescape=True,
                                     undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.templates.filters.update(short=_short, when=_when, pretty=_pretty, number=_number)
        self.templates.globals.update(urlencode=urlencode)

    # --- identity, CSRF ------------------------------------------------------------------------
    @staticmethod
    def credential(request: Request) -> str:
        header = request.headers.get("authorization", "")
        return header[7:] if header.startswith("Bearer ") else request.cookies.get(COOKIE, "")

    def csrf_token(self, request: Request) -> str:
        """A token bound to this caller's credential (the anonymous admin's when auth is off):
        a form from another site cannot know it, and it changes with the login."""
        subject = self.credential(request) if self.server.config.tokens else "anonymous"
        return hmac.new(self.secret, b"sola-console-csrf\0" + subject.encode(), hashlib.sha256).hexdigest()

    def check_post(self, request: Request, form: dict[str, str], roles: tuple[str, ...] = REVIEW_ROLES) -> "Identity":
        identity = request.state.identity
        origin = request.headers.get("origin")
        if origin not in (None, "null"):
            host = request.headers.get("host", "")
            if origin.split("://", 1)[-1] != host:
                raise ConsoleError(403, "cross-origin form refused")
        if not hmac.compare_digest(form.get("csrf", ""), self.csrf_token(request)):
            raise ConsoleError(403, "missing or wrong CSRF token (reload the page and try again)")
        if identity is None or identity.role not in roles:
            role = identity.role if identity else "nobody"
            raise ConsoleError(403, f"{identity.name if identity else 'you'} ({role}) may not do this: it needs the role "
                                    + " or ".join(roles))
        return identity

    # --- rendering -----------------------------------------------------------------------------
    def page(self, request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        identity = getattr(request.state, "identity", None)
        context.setdefault("title", template.removesuffix(".html").capitalize())
        context.setdefault("notice", None)
        html = self.templates.get_template(template).render(
            identity=identity, csrf=self.csrf_token(request), auth=bool(self.server.config.tokens),
            follow=self.server.config.follow, path=request.url.path, can_review=bool(identity and identity.role in REVIEW_ROLES),
            **context)
        return HTMLResponse(html, status_code=status)

    def error_page(self, request: Request, error: ConsoleError) -> HTMLResponse:
        return self.page(request, "error.html", status=error.status, title=f"Error {error.status}", message=error.message)

    def login_page(self, request: Request, status: int, message: str | None = None, next_path: str = "/console/") -> HTMLResponse:
        html = self.templates.get_template("login.html").render(
            identity=None, csrf="", auth=bool(self.server.config.tokens), follow=self.server.config.follow,
            path=request.url.path, can_review=False, title="Sign in", message=message, next_path=next_path, notice=None)
        return HTMLResponse(html, status_code=status)

    # --- registry reads ------------------------------------------------------------------------
    def read(self, work: Callable[[Any], Any]) -> Any:
        """Run `work` with a registry whose read transaction opens only if `work` needs it."""
        registry = _Lazy(self.root)
        try:
            return work(registry)
        finally:
            registry.close()

    def ref_table(self, registry: Any, fresh: bool = False) -> list[tuple[str, str, str]]:
        """(name, kind, commit) of every ref: the server's last poll (at most a poll interval
        old), or with `fresh` (reviews, proposals) read now."""
        refs = self.server.watcher.refs
        if fresh or not refs:
            return [tuple(r) for r in registry.catalog.refs()]
        return sorted(((name, kind, commit) for name, (kind, commit) in refs.items()), key=lambda r: (r[1], r[0]))

    def refs(self, registry: Any, fresh: bool = False) -> dict[str, list[dict[str, str]]]:
        branches, tags = [], []
        for name, kind, commit in self.ref_table(registry, fresh):
            (branches if kind == "branch" else tags).append({"name": name, "commit": commit})
        return {"branches": branches, "tags": tags}

    def resolve(self, registry: Any, text: str, fresh: bool = False) -> Commit:
        try:
            return self.index.resolve(registry, text, None if fresh else self.server.watcher.refs)
        except RegistryError as error:
            raise ConsoleError(404, str(error)) from None

    def states(self, registry: Any, commit: Commit, edit_ids: list[str]) -> dict[str, Any]:
        return self.trees.store(registry).states(commit.tree_id, edit_ids)

    def indexed(self, registry: Any) -> Any:
        """The registry with commit reads from the index and edit sets from the tree cache."""
        real = registry.get() if isinstance(registry, _Lazy) else registry
        self.index.ensure(real, [c for _, _, c in real.catalog.refs()])
        fast = copy.copy(real)
        fast.catalog = _IndexedCatalog(real.catalog, self.index)
        fast._trees = self.trees.store(real)
        return fast

    def facts(self, registry: Any, edit_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        return registry.catalog.edit_rows(edit_ids)

    # --- timeline ------------------------------------------------------------------------------
    def timeline(self, registry: Any, rev: str, filters: dict[str, str], page: int) -> dict[str, Any]:
        head = self.resolve(registry, rev)
        commits = self.index.reachable(head)
        author = filters["author"].strip().lower()
        op = filters["op"].strip()
        text = filters["q"].strip().lower()
        since, until = _time_bound(filters["since"], False), _time_bound(filters["until"], True)
        if author or op or text or since or until:
            def keep(c: Commit) -> bool:
                return ((not author or author in c.author.lower()) and (not op or c.op == op)
                        and (since is None or c.time >= since) and (until is None or c.time <= until)
                        and (not text or text in c.message.lower() or text in (c.reason or "").lower() or c.commit_id.startswith(text)))

            key = (head.commit_id, author, op, text, since, until)
            commits = self.filtered.get(key, lambda: [c for c in commits if keep(c)])
        paging = _pages(len(commits), page, PAGE_SIZE)
        rows = commits[(paging["page"] - 1) * PAGE_SIZE: paging["page"] * PAGE_SIZE]
        at: dict[str, list[dict[str, str]]] = {}
        for name, kind, commit in self.ref_table(registry):
            at.setdefault(commit, []).append({"name": name, "kind": kind})
        return {"head": head, "rows": rows, "paging": paging, "labels": at, "ops": sorted(self.index.ops)}

    # --- commit --------------------------------------------------------------------------------
    def commit_view(self, registry: Any, ident: str, page: int) -> dict[str, Any]:
        commit = self.resolve(registry, ident)
        changes = registry.changes(commit.commit_id)
        paging = _pages(len(changes), page, LIST_SIZE)
        shown = changes[(paging["page"] - 1) * LIST_SIZE: paging["page"] * LIST_SIZE]
        facts = self.facts(registry, [e for e, _ in shown])
        reviews = [r for r in registry.reviews() if r.source_commit == commit.commit_id]
        table = self.ref_table(registry)
        branches = [(name, c) for name, kind, c in table if kind == "branch"]
        on = []
        if len(branches) <= 16:
            self.index.ensure(registry, [c for _, c in branches])
            on = [name for name, c in branches if commit.commit_id in self.index.reachable_set(self.index.by_id[c])]
        parents = [self.index.by_id[p] for p in commit.parents]
        return {"commit": commit, "changes": [(e, s, facts.get(e, {})) for e, s in shown], "paging": paging, "reviews": reviews,
                "refs": sorted(name for name, _, c in table if c == commit.commit_id), "on_branches": on, "parents": parents}

    # --- edit ----------------------------------------------------------------------------------
    def edit_view(self, registry: Any, ident: str, branch: str) -> dict[str, Any]:
        try:
            edit_id = registry.resolve_edit(ident)
        except RegistryError as error:
            raise ConsoleError(404, str(error)) from None
        row = registry.edit_row(edit_id)
        provenance = registry.provenance(edit_id)
        head = self.resolve(registry, branch)
        changes = registry.catalog.changes_of_edits([edit_id])
        self.index.ensure(registry, [c for c, _, _ in changes])
        reach = self.index.reachable_set(head)
        history = []
        for commit_id, _, state in changes:
            commit = self.index.by_id[commit_id]
            history.append({"commit": commit, "state": state or "absent", "on_branch": commit_id in reach})
        windows, start = [], None
        for entry in history:
            if not entry["on_branch"]:
                continue
            if entry["state"] == ACTIVE and start is None:
                start = entry["commit"]
            elif entry["state"] != ACTIVE and start is not None:
                windows.append({"from": start, "until": entry["commit"], "state": entry["state"]})
                start = None
        if start is not None:
            windows.append({"from": start, "until": None, "state": None})
        state = self.states(registry, head, [edit_id])[edit_id]
        live = []
        for name, kind, commit_id in self.ref_table(registry):
            if kind == "branch":
                self.index.ensure(registry, [commit_id])
                if self.states(registry, self.index.by_id[commit_id], [edit_id])[edit_id] == ACTIVE:
                    live.append(name)
        return {"edit": edit_id, "row": row, "provenance": provenance, "head": head, "branch": branch, "edit_state": state or "absent",
                "history": history, "windows": windows, "live": live,
                "keys": registry.catalog.edit_key_rows(edit_id), "threshold": registry.rule.threshold,
                "_keys": registry.edit_keys(edit_id, provenance)}

    def neighbours(self, edit_id: str, keys: Any, head: Commit) -> list[dict[str, Any]]:
        """Active edits at `head` with a key within the routing threshold of this edit's keys,
        found in the head's snapshot bank (built once, shared with serving)."""
        from registry.routing import nearest_active

        snapshot = self.snapshot(head)
        bank = snapshot.bank
        threshold = self.server.routed.config.threshold
        best: dict[str, float] = {}
        for key in keys:
            for other, distance in nearest_active(bank.search, bank.key_edit, set(bank.revoked) | {edit_id}, key, threshold, 16):
                best[other] = min(distance, best.get(other, distance))
        if not best:
            return []
        facts = self.read(lambda registry: self.facts(registry, best))
        return [{"edit": e, "distance": d, "prompt": facts[e]["prompt"], "target": facts[e]["target"]}
                for e, d in sorted(best.items(), key=lambda item: item[1])]

    def snapshot(self, commit: Commit) -> Snapshot:
        cached = self.server.cache.cached(commit.commit_id)
        if cached is not None:
            return cached
        with reading(self.root) as registry:
            return self.server.cache.snapshot(registry, commit)

    # --- compare -------------------------------------------------------------------------------
    def compare(self, registry: Any, a: str, b: str) -> dict[str, Any]:
        old, new = self.resolve(registry, a), self.resolve(registry, b)
        def diff() -> dict[str, list[str]]:  # Registry.diff, on the console's tree cache
            store = self.trees.store(registry)
            a = {e for e, s in store.members(old.tree_id).items() if s == ACTIVE}
            b = {e for e, s in store.members(new.tree_id).items() if s == ACTIVE}
            return {"added": sorted(b - a), "removed": sorted(a - b)}

        found = self.diffs.get((old.tree_id, new.tree_id), diff)
        return {"old": old, "new": new, "added": found["added"], "removed": found["removed"]}

    # --- revoked -------------------------------------------------------------------------------
    def revoked(self, registry: Any, rev: str, filters: dict[str, str]) -> tuple[Commit, list[dict[str, Any]]]:
        from registry.inspect import revoked_report

        head = self.resolve(registry, rev)
        report = self.revoked_reports.get(head.commit_id, lambda: revoked_report(self.indexed(registry), None, head))
        since, until = _time_bound(filters["since"], False), _time_bound(filters["until"], True)
        by = filters["by"].strip().lower()
        text = filters["q"].strip().lower()
        out = []
        for row in report:
            moment = parse_time(row["revoked_at"])
            if since is not None and moment < since or until is not None and moment > until:
                continue
            if by and by not in (row["revoked_by"] or "").lower():
                continue
            if text and not any(text in (row[f] or "").lower() for f in ("prompt", "target", "reason", "author", "edit")):
                continue
            out.append(row)
        return head, out

    # --- proposals -----------------------------------------------------------------------------
    def proposals(self, registry: Any) -> list[dict[str, Any]]:
        """Every (source branch, protected target) where the source brings commits the target
        lacks, with its approvals that count now, rejections, and reviews of older heads."""
        branches = registry.branches()
        self.index.ensure(registry, [b["commit"] for b in branches])
        heads = {b["name"]: self.index.by_id[b["commit"]] for b in branches}
        reviews = registry.reviews()
        out = []
        for target in (b for b in branches if b["protected"]):
            target_reach = self.index.reachable_set(heads[target["name"]])
            for source in branches:
                if source["name"] == target["name"]:
                    continue
                source_head = heads[source["name"]]
                new = [c for c in self.index.reachable(source_head) if c.commit_id not in target_reach]
                if not new:
                    continue
                out.append(self._proposal(source["name"], source_head, target["name"], target["reviews"], new, reviews))
        return out

    @staticmethod
    def _proposal(source: str, head: Commit, target: str, required: int, new: list[Commit], reviews: list[Any]) -> dict[str, Any]:
        authors = sorted({c.author for c in new})
        mine = [r for r in reviews if r.source == source and r.target == target]
        latest: dict[str, Any] = {}
        for review in mine:
            if review.source_commit == head.commit_id:
                latest[review.author] = review
        approvals = [r for r in latest.values() if r.verdict == "approve" and r.author not in authors]
        rejections = [r for r in latest.values() if r.verdict == "reject"]
        stale = [r for r in mine if r.source_commit != head.commit_id]
        return {"source": source, "target": target, "head": head, "required": required, "commits": new, "authors": authors,
                "approvals": approvals, "rejections": rejections, "stale": stale, "reviews": mine,
                "ready": len(approvals) >= required}

    def proposal(self, registry: Any, source: str, target: str) -> dict[str, Any]:
        from registry.editsets import plan_merge

        found = [p for p in self.proposals(registry) if p["source"] == source and p["target"] == target]
        if not found:
            raise ConsoleError(404, f"no proposal of {source!r} into {target!r} (it is merged, or {target!r} is not protected)")
        proposal = found[0]
        try:
            plan = plan_merge(self.indexed(registry), source, target).report(None)
        except RegistryError as error:
            plan = {"error": str(error), "added": [], "removed": [], "conflicts": [], "warnings": [], "fast_forward": False}
        shown = plan["added"][:LIST_SIZE] + plan["removed"][:LIST_SIZE]
        conflict_edits = [e for c in plan.get("conflicts", []) for e in c.get("edits", [])]
        proposal.update(plan=plan, facts=self.facts(registry, shown + conflict_edits))
        return proposal

    def review(self, source: str, target: str, author: str, verdict: str, reason: str | None, commit: str | None) -> dict[str, Any]:
        """Record the review with `sola review` in a child process. DuckDB lets one process hold a
        file either read-only or read-write, and this one keeps opening it read-only (the ref
        poller, every page): a writer of its own would collide with them, whereas another
        process's write is what every reader here already waits out (docs/deploy.md)."""
        from registry.checkpoint import witness_path

        command = [sys.executable, "-c", "from sola.cli import entry; entry()", "--registry", str(self.root)]
        witness = witness_path()
        if witness is not None:
            command += ["--witness", str(witness)]
        command += ["review", verdict, f"--into={target}", f"--author={author}", "--wait=30", "--json"]
        if reason:
            command.append(f"--reason={reason}")
        if commit:
            command.append(f"--commit={commit}")
        command += ["--", source]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RegistryError("the review did not finish within 120 s; check `sola review list`") from None
        if done.returncode != 0:
            message = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit status {done.returncode}"
            raise RegistryError(message.removeprefix("error: "))
        return json.loads(done.stdout)

    # --- ask -----------------------------------------------------------------------------------
    async def ask(self, prompt: str, revision: str, max_tokens: int) -> dict[str, Any]:
        from registry.blame import blame
        from sola.server import ApiError

        head = await asyncio.to_thread(self.read, lambda registry: self.resolve(registry, revision))
        snapshot = await asyncio.to_thread(self.snapshot, head)
        recording = _RecordingBank(snapshot.bank)
        # a commit with a tree id of its own: the batcher never puts this job with another
        private = Snapshot(replace(snapshot.commit, tree_id=f"{snapshot.commit.tree_id}:console-{secrets.token_hex(8)}"), recording)
        try:
            job = self.server.prompt_job(private, prompt, max_tokens, 0.0, None)
        except ApiError as error:
            raise ConsoleError(400, error.message) from None
        if not self.server.slots.acquire(blocking=False):
            raise ConsoleError(429, "the server is busy; try again shortly")
        try:
            done = await asyncio.wrap_future(self.server.generator.submit(job))
        finally:
            self.server.slots.release()
        routing = recording.routing
        entries: list[dict[str, Any]] = []
        if recording.queries is not None:
            query = recording.queries[0]
            entries = await asyncio.to_thread(self.read, lambda registry: blame(self.indexed(registry), query, head))
        nearest = routing.nearest[0] if routing is not None else None
        distance = routing.distances[0] if routing is not None else float("inf")
        radius = routing.radii[0] if routing is not None else None
        ids = [e for e in (done.edit, nearest) if e]
        facts = await asyncio.to_thread(self.read, lambda registry: self.facts(registry, ids)) if ids else {}
        held = nearest is not None and done.edit is None and nearest in snapshot.bank.revoked and distance < (radius or 0)
        return {"text": done.text, "edit": done.edit, "distance": done.distance, "nearest": nearest, "nearest_distance": distance,
                "radius": radius, "tombstone": nearest if held else None, "facts": facts, "commit": head, "blame": entries,
                "tokens": done.tokens}

    # --- health --------------------------------------------------------------------------------
    def start_verify(self, by: str) -> bool:
        with self._verify_lock:
            if self.verify.state == "running":
                return False
            self.verify = VerifyState("running", started=iso(datetime.now(timezone.utc)), by=by)
        threading.Thread(target=self._run_verify, name="sola-console-verify", daemon=True).start()
        return True

    def _run_verify(self) -> None:
        from registry.verify import verify

        started = time.perf_counter()
        try:
            with reading(self.root) as registry:
                report = verify(registry).to_dict()
            state = replace(self.verify, state="done", report=report)
        except Exception as error:  # noqa: BLE001 - shown on the page
            state = replace(self.verify, state="failed", error=f"{type(error).__name__}: {error}")
        self.verify = replace(state, finished=iso(datetime.now(timezone.utc)), seconds=round(time.perf_counter() - started, 2))


# --- routes -------------------------------------------------------------------------------------
def mount_console(app: FastAPI, server: "Server") -> Console:
    """Add the console's routes under /console/ and its outer middleware (login, static files,
    HTML for 401s, security headers) to the app."""
    console = Console(server)
    router = APIRouter(prefix="/console")

    async def run(request: Request, work: Callable[[], Any]) -> Response:
        try:
            result = work()
            if asyncio.iscoroutine(result):
                result = await result
            return result
        except ConsoleError as error:
            return console.error_page(request, error)
        except RegistryError as error:
            return console.error_page(request, ConsoleError(404 if "unknown" in str(error) else 400, str(error)))
        except Exception as error:  # noqa: BLE001 - a page, not a traceback
            traceback.print_exc()
            return console.error_page(request, ConsoleError(500, f"internal error ({type(error).__name__})"))

    async def read(work: Callable[[Any], Any]) -> Any:
        return await asyncio.to_thread(console.read, work)

    @router.get("/", response_class=HTMLResponse)
    async def timeline(request: Request, rev: str = "", author: str = "", op: str = "", since: str = "", until: str = "",
                       q: str = "", page: int = 1) -> Response:
        filters = {"author": author, "op": op, "since": since, "until": until, "q": q}

        async def work() -> Response:
            revision = rev.strip() or server.config.follow
            view, refs = await read(lambda registry: (console.timeline(registry, revision, filters, page), console.refs(registry)))
            query = {k: v for k, v in {"rev": rev, **filters}.items() if v}
            return console.page(request, "timeline.html", title="Timeline", rev=revision, filters=filters, refs=refs, query=query, **view)

        return await run(request, work)

    @router.get("/commits/{ident}", response_class=HTMLResponse)
    async def commit(request: Request, ident: str, page: int = 1) -> Response:
        async def work() -> Response:
            view = await read(lambda registry: console.commit_view(registry, ident, page))
            return console.page(request, "commit.html", title=f"Commit {view['commit'].commit_id[:12]}", **view)

        return await run(request, work)

    @router.get("/edits/{ident}", response_class=HTMLResponse)
    async def edit(request: Request, ident: str, branch: str = "") -> Response:
        async def work() -> Response:
            view = await read(lambda registry: console.edit_view(registry, ident, branch.strip() or server.config.follow))
            view["neighbours"] = await asyncio.to_thread(console.neighbours, view["edit"], view.pop("_keys"), view["head"])
            refs = await read(console.refs)
            return console.page(request, "edit.html", title=f"Edit {view['edit'][:12]}", refs=refs, **view)

        return await run(request, work)

    @router.get("/edits/{ident}/adapter.zip")
    async def adapter(request: Request, ident: str) -> Response:
        from registry.export import export_peft

        def build(registry: Any) -> tuple[str, bytes]:
            edit_id = registry.resolve_edit(ident)
            with tempfile.TemporaryDirectory(prefix="sola-console-") as scratch:
                target = Path(scratch) / "adapter"
                export_peft(registry, edit_id, target)
                buffer = io.BytesIO()
                with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                    for path in sorted(target.iterdir()):
                        archive.write(path, f"sola-edit-{edit_id[:12]}/{path.name}")
            return edit_id, buffer.getvalue()

        async def work() -> Response:
            edit_id, data = await read(build)
            return Response(data, media_type="application/zip",
                            headers={"Content-Disposition": f'attachment; filename="sola-edit-{edit_id[:12]}-peft.zip"'})

        return await run(request, work)

    @router.get("/compare", response_class=HTMLResponse)
    async def compare(request: Request, a: str = "", b: str = "", a_at: str = "", b_at: str = "", page: int = 1,
                      format: str = "html") -> Response:
        async def work() -> Response:
            refs = await read(console.refs)
            if not (a or a_at) and not (b or b_at):
                return console.page(request, "compare.html", title="Compare", refs=refs, a=a, b=b, a_at=a_at, b_at=b_at, result=None)
            follow = server.config.follow
            left = _revision(a, a_at, follow if a_at.strip() else follow + "~1")
            right = _revision(b, b_at, follow)
            result = await read(lambda registry: console.compare(registry, left, right))
            if format == "json":
                return JSONResponse({"a": result["old"].commit_id, "b": result["new"].commit_id, "added": result["added"],
                                     "removed": result["removed"]})
            paging = _pages(max(len(result["added"]), len(result["removed"])), page, LIST_SIZE)
            start, end = (paging["page"] - 1) * LIST_SIZE, paging["page"] * LIST_SIZE
            shown = {"added": result["added"][start:end], "removed": result["removed"][start:end]}
            facts = await read(lambda registry: console.facts(registry, shown["added"] + shown["removed"]))
            query = {k: v for k, v in {"a": a, "b": b, "a_at": a_at, "b_at": b_at}.items() if v}
            return console.page(request, "compare.html", title="Compare", refs=refs, a=a, b=b, a_at=a_at, b_at=b_at, result=result,
                                shown=shown, facts=facts, paging=paging, query=query, left=left, right=right)

        return await run(request, work)

    @router.get("/revoked", response_class=HTMLResponse)
    async def revoked(request: Request, rev: str = "", since: str = "", until: str = "", by: str = "", q: str = "", page: int = 1,
                      format: str = "html") -> Response:
        filters = {"since": since, "until": until, "by": by, "q": q}

        async def work() -> Response:
            revision = rev.strip() or server.config.follow
            head, rows = await read(lambda registry: console.revoked(registry, revision, filters))
            if format == "json":
                return JSONResponse(rows, headers={"Content-Disposition": 'attachment; filename="sola-revoked.json"'})
            if format == "csv":
                buffer = io.StringIO()
                writer = csv.writer(buffer)
                writer.writerow(["edit", "prompt", "target", "author", "revoked_at", "revoked_by", "reason", "commit", "op", "tombstone", "live"])
                for row in rows:
                    live = "; ".join(f"{w['from']}..{w['until']}" for w in row["live"])
                    writer.writerow([_csv_cell(row[k]) for k in ("edit", "prompt", "target", "author", "revoked_at", "revoked_by",
                                                                  "reason", "commit", "op", "tombstone")] + [live])
                return Response(buffer.getvalue(), media_type="text/csv; charset=utf-8",
                                headers={"Content-Disposition": 'attachment; filename="sola-revoked.csv"'})
            refs = await read(console.refs)
            paging = _pages(len(rows), page, LIST_SIZE)
            shown = rows[(paging["page"] - 1) * LIST_SIZE: paging["page"] * LIST_SIZE]
            query = {k: v for k, v in {"rev": rev, **filters}.items() if v}
            return console.page(request, "revoked.html", title="Revoked facts", rows=shown, paging=paging, head=head, rev=revision,
                                filters=filters, refs=refs, query=query)

        return await run(request, work)

    @router.get("/proposals", response_class=HTMLResponse)
    async def proposals(request: Request) -> Response:
        async def work() -> Response:
            found, protected = await read(lambda registry: (console.proposals(registry), [b for b in registry.branches() if b["protected"]]))
            return console.page(request, "proposals.html", title="Proposals", proposals=found, protected=protected)

        return await run(request, work)

    @router.get("/proposals/{source}", response_class=HTMLResponse)
    async def proposal(request: Request, source: str, into: str = "", done: str = "") -> Response:
        async def work() -> Response:
            target = into.strip() or server.config.follow
            view = await read(lambda registry: console.proposal(registry, source, target))
            notice = {"approve": "Your approval is recorded.", "reject": "Your rejection is recorded."}.get(done)
            return console.page(request, "proposal.html", title=f"Proposal {source} → {target}", p=view, notice=notice)

        return await run(request, work)

    @router.post("/proposals/{source}/review", response_class=HTMLResponse)
    async def review(request: Request, source: str) -> Response:
        async def work() -> Response:
            body = await request.body()
            if len(body) > MAX_FORM_BYTES:
                raise ConsoleError(413, "form too large")
            form = _form(body)
            identity = console.check_post(request, form)
            verdict, target = form.get("verdict", ""), form.get("into", "").strip() or server.config.follow
            if verdict not in ("approve", "reject"):
                raise ConsoleError(400, "a review approves or rejects")
            reason = form.get("reason", "").strip() or None
            try:
                await asyncio.to_thread(console.review, source, target, identity.name, verdict, reason, form.get("commit") or None)
            except RegistryError as error:
                raise ConsoleError(409, f"not recorded: {error}") from None
            return RedirectResponse(f"/console/proposals/{source}?{urlencode({'into': target, 'done': verdict})}", status_code=303)

        return await run(request, work)

    @router.get("/ask", response_class=HTMLResponse)
    async def ask(request: Request, prompt: str = "", rev: str = "", at: str = "", max_tokens: int = 16) -> Response:
        async def work() -> Response:
            refs = await read(console.refs)
            result = None
            if prompt:
                if not 1 <= max_tokens <= min(64, server.config.max_tokens_limit):
                    raise ConsoleError(400, f"max tokens must be from 1 to {min(64, server.config.max_tokens_limit)}")
                result = await console.ask(prompt, _revision(rev, at, server.config.follow), max_tokens)
            return console.page(request, "ask.html", title="Ask", refs=refs, prompt=prompt, rev=rev, at=at, max_tokens=max_tokens,
                                result=result)

        return await run(request, work)

    @router.get("/health", response_class=HTMLResponse)
    async def health(request: Request) -> Response:
        async def work() -> Response:
            if console.verify.state == "never":
                console.start_verify("console (first view of Health)")

            def gather(registry: Any) -> dict[str, Any]:
                head = registry.head(server.config.follow)
                return {"counts": registry.counts(), "branches": registry.branches(), "tags": registry.tags(), "head": head,
                        "schema": registry.catalog.schema_version(), "base_model": registry.base_model, "routing": registry.routing}

            view = await read(gather)
            return console.page(request, "health.html", title="Health", verify=console.verify, watcher_error=server.watcher.error,
                                cache={"hits": server.cache.hits, "misses": server.cache.misses}, index_commits=len(console.index.by_id),
                                index_seconds=console.index.load_seconds, **view)

        return await run(request, work)

    @router.post("/health/verify", response_class=HTMLResponse)
    async def rerun_verify(request: Request) -> Response:
        async def work() -> Response:
            form = _form(await request.body())
            identity = console.check_post(request, form)
            console.start_verify(identity.name)
            return RedirectResponse("/console/health", status_code=303)

        return await run(request, work)

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        async def work() -> Response:
            console.check_post(request, _form(await request.body()), roles=("viewer", "reviewer", "admin"))
            response = RedirectResponse("/console/login", status_code=303)
            response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="strict")
            return response

        return await run(request, work)

    @router.get("/{rest:path}", response_class=HTMLResponse)
    async def not_found(request: Request, rest: str) -> Response:
        return console.error_page(request, ConsoleError(404, f"no console page {request.url.path!r}"))

    app.include_router(router)

    @app.get("/console", include_in_schema=False)
    async def console_root() -> Response:
        return RedirectResponse("/console/", status_code=307)

    async def login(request: Request) -> Response:
        """The login form (GET) and its POST, which sets the session cookie. Served before the
        token check, since whoever logs in has no cookie yet."""
        def safe(target: str) -> str:
            return target if target.startswith("/console/") and "\\" not in target else "/console/"

        if request.method != "POST":
            return console.login_page(request, 200, next_path=safe(request.query_params.get("next", "/console/")))
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            return console.login_page(request, 413, "form too large")
        try:
            form = _form(body)
        except ConsoleError as error:
            return console.login_page(request, error.status, error.message)
        next_path = safe(form.get("next", "/console/"))
        given = form.get("token", "")
        identity = None
        for token, who in server.config.tokens.items():
            if given and hmac.compare_digest(given.encode(), token.encode()):
                identity = who
        if identity is None:
            return console.login_page(request, 401, "That token is not valid." if server.config.tokens else
                                      "Authentication is off on this server: everyone is an anonymous admin.", next_path)
        response = RedirectResponse(next_path, status_code=303)
        secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
        response.set_cookie(COOKIE, given, httponly=True, samesite="strict", secure=secure, path="/console", max_age=12 * 3600)
        return response

    def static(name: str) -> Response:
        path = (ASSETS / "static" / name).resolve()
        if path.parent != (ASSETS / "static").resolve() or not path.is_file() or path.suffix not in STATIC_TYPES:
            return Response("not found", status_code=404, media_type="text/plain")
        return Response(path.read_bytes(), media_type=STATIC_TYPES[path.suffix], headers={"Cache-Control": "max-age=300"})

    @app.middleware("http")
    async def console_gate(request: Request, call_next: Callable[[Request], Any]) -> Response:
        path = request.url.path
        if not (path == "/console" or path.startswith("/console/")):
            return await call_next(request)
        if path == "/console/login":
            response = await login(request)
        elif path.startswith("/console/static/"):
            response = static(path.removeprefix("/console/static/"))
        else:
            response = await call_next(request)
            if response.status_code == 401:
                wanted = path + (f"?{request.url.query}" if request.url.query else "")
                response = console.login_page(request, 401, "Sign in with your token to see the console." if not
                                              Console.credential(request) else "That token is not valid.", wanted)
        for name, value in SECURITY_HEADERS.items():
            if name == "Cache-Control" and path.startswith("/console/static/"):
                continue
            response.headers.setdefault(name, value)
        return response

    @app.on_event("startup")
    async def warm_index() -> None:
        def warm() -> None:
            try:
                with reading(console.root) as registry:
                    console.index.ensure(registry, [c for _, _, c in registry.catalog.refs()])
                    console.trees.store(registry).chain(registry.head(server.config.follow).tree_id)
            except Exception:  # noqa: BLE001 - the first page fills the index instead
                pass

        threading.Thread(target=warm, name="sola-console-index", daemon=True).start()

    return console


__all__ = ["mount_console", "Console", "CommitIndex"]
