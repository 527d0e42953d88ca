"""The registry: edits as immutable artifacts, a graph of hash-chained commits over trees, refs.

Every commit points at a tree, the edit set its snapshot routes by (registry/model.py), and
names its parents. A branch is a ref that moves to a commit's child; a tag never moves; every ref
move is a ref log entry. Nothing is deleted: revoke and restore are commits, a deleted branch
leaves its commits and its ref log. All SQL is in the catalog (registry/catalog/).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from registry.catalog import Catalog, RefMoved
from registry.catalog.duckdb import DuckDBCatalog, backfill_edit_sets, backfill_key_vectors, backfill_reflog_chain, registry_settings
from registry.catalog.postgres import PostgresCatalog, PostgresLocation
from registry.checkpoint import open_witness
from registry.db import Backfill, RegistryLocked
from registry.graph import ancestors, ancestors_of_all
from registry.model import (
    ABSENT,
    ACTIVE,
    MAIN,
    TOMBSTONE,
    Changes,
    Commit,
    RegistryError,
    Review,
    State,
    iso,
    new_commit,
    parse_time,
    utcnow,
)
from registry.objects import CorruptObject, ObjectStore, canonical_json, sha256_hex
from registry.revisions import check_ref_name, hex_prefix, parse_revision
from registry.storage import DATABASE, Storage, open_objects, read_storage, registry_exists, write_storage
from registry.trees import TreeStore

if TYPE_CHECKING:  # numpy, safetensors and FAISS are imported where used: `sola log` needs none of them
    import numpy as np

    from registry.keyindex import FaissKeySearch, KeyMatrix
    from registry.routing import RoutingRule

KEY_VECTORS_VERSION = 3  # the migration that added `key_vectors`
EDIT_SETS_VERSION = 4  # the migration that made history a graph over trees
REFLOG_CHAIN_VERSION = 5  # the migration that chained the ref log


def key_vector_blobs(tensors: dict[str, np.ndarray]) -> list[bytes]:
    """Each key row as `key_vectors` stores it: little-endian float32 bytes, so the stored key
    is exactly the trained one and its digest is reproducible anywhere."""
    import numpy as np

    keys = np.ascontiguousarray(tensors["keys"], dtype="<f4")
    return [row.tobytes() for row in keys]


def keys_digest(key_blobs: list[bytes]) -> str:
    """`keys_sha256` of an edit: sha256 of its key rows' bytes in ordinal order. The keys live
    once, in `key_vectors`; this digest in the provenance document (whose hash is the edit id)
    is what makes them part of the content-addressed artifact."""
    return sha256_hex(b"".join(key_blobs))


def load_tensors(data: bytes) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    return load(data)


def backfills(objects: ObjectStore) -> dict[int, Backfill]:
    """Migration steps that need data from outside SQL, for `registry.db.migrate`."""
    return {
        KEY_VECTORS_VERSION: lambda connection: backfill_key_vectors(connection, objects.get),
        EDIT_SETS_VERSION: lambda connection: backfill_edit_sets(connection, *registry_settings(connection)),
        REFLOG_CHAIN_VERSION: backfill_reflog_chain,
    }


class Registry:
    """One registry: its catalog and objects (local files or shared backends, registry/storage.py)
    and the derived `cache/` in its directory."""

    def __init__(self, root: Path, catalog: Catalog, writable: bool, objects: ObjectStore | None = None) -> None:
        self.root = root
        self.catalog = catalog
        self.writable = writable
        self.objects = objects if objects is not None else ObjectStore(root / "objects")
        self._configs: dict[str, Any] = {}
        self._trees: TreeStore | None = None
        self._key_owners: tuple[list[int], list[str]] = ([], [])

    # --- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, base_model: dict[str, Any], routing: dict[str, Any], author: str,
               training: dict[str, Any] | None = None, storage: Storage = Storage()) -> "Registry":
        """`training` is the registry's default for fitting new edits; unlike `routing` it is not
        part of any snapshot's identity (each edit records the training it actually got).
        `storage` names shared backends; both are checked before anything is written, and the
        directory's `storage.json` is written last, once the catalog holds the init commit."""
        root = Path(root)
        if registry_exists(root):
            raise RegistryError(f"a registry already exists at {root}")
        storage.check()
        objects = open_objects(root, storage)
        objects.check_reachable()
        if storage.catalog is None:
            root.mkdir(parents=True, exist_ok=True)
            catalog: Catalog = DuckDBCatalog.create(root / DATABASE, backfills(objects))
        else:
            catalog = PostgresCatalog.create(PostgresLocation.parse(storage.catalog))
            root.mkdir(parents=True, exist_ok=True)
        registry = cls(root, catalog, writable=True, objects=objects)
        with registry.transaction():
            registry.catalog.put_config("base_model", canonical_json(base_model).decode())
            registry.catalog.put_config("routing", canonical_json(routing).decode())
            if training:
                registry.catalog.put_config("training", canonical_json(training).decode())
            empty = registry.trees.empty()
            commit = new_commit([], empty, [], author, "init", f"init registry on {base_model.get('name')}", None, 0)
            registry.catalog.insert_trees(registry.trees.take_pending())
            registry.catalog.insert_commits([(commit, [])])
            registry.catalog.move_ref(MAIN, "branch", commit.commit_id, None, author, f"init: {commit.message}", commit.time)
        if storage.shared:
            write_storage(root, storage)
        return registry

    @classmethod
    def join(cls, root: Path, storage: Storage) -> "Registry":
        """A new directory (and cache) for a shared registry that already exists: checks that
        the catalog holds a registry and the objects are reachable, then writes `storage.json`."""
        root = Path(root)
        if registry_exists(root):
            raise RegistryError(f"a registry already exists at {root}")
        if storage.catalog is None:
            raise RegistryError("--join needs --catalog postgresql://... (a registry.duckdb is not shared between directories)")
        storage.check()
        objects = open_objects(root, storage)
        objects.check_reachable()
        catalog = PostgresCatalog.open(PostgresLocation.parse(storage.catalog), writable=False, wait_seconds=0.0)
        registry = cls(root, catalog, writable=False, objects=objects)
        registry.head()  # it has a main branch: a registry, not an empty schema
        root.mkdir(parents=True, exist_ok=True)
        write_storage(root, storage)
        return registry

    @classmethod
    def open(cls, root: Path, writable: bool = False, wait_seconds: float = 0.0) -> "Registry":
        root = Path(root)
        if not registry_exists(root):
            raise RegistryError(f"no registry at {root} (run `sola init` first)")
        storage = read_storage(root)
        objects = open_objects(root, storage)
        if storage.catalog is not None:
            catalog: Catalog = PostgresCatalog.open(PostgresLocation.parse(storage.catalog), writable, wait_seconds)
            return cls(root, catalog, writable, objects)
        import duckdb

        try:
            catalog = DuckDBCatalog.open(root / DATABASE, writable, wait_seconds, lambda: backfills(objects))
        except (duckdb.Error, UnicodeError) as error:  # not a catalog sola can read: never a traceback
            first = (str(error).splitlines() or [type(error).__name__])[0][:160]
            raise RegistryError(f"{root / DATABASE} is damaged or not a sola catalog ({first}); "
                                f"restore it from a backup (`sola verify` checks a restored copy)") from None
        return cls(root, catalog, writable, objects)

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One catalog transaction; trees derived inside it are forgotten if it rolls back."""
        if not self.writable:
            raise RegistryError("registry opened read-only")
        witness = open_witness()  # the configured witness file, if any (registry/checkpoint.py)
        try:
            with self.catalog.transaction():
                yield
        except BaseException:
            self.trees.discard_pending()
            witness.close()
            raise
        witness.append(self.catalog)  # the checkpoint of the committed ref log

    # --- configuration -----------------------------------------------------------------------
    def config(self, name: str, missing: dict[str, Any] | None = None) -> dict[str, Any]:
        """A `registry_config` row; `missing` is returned for a row that is optional and absent."""
        if name not in self._configs:
            value = self.catalog.config(name)
            if value is None:
                if missing is not None:
                    return missing
                raise RegistryError(f"registry has no {name} configuration")
            self._configs[name] = json.loads(value)
        return self._configs[name]

    @property
    def base_model(self) -> dict[str, Any]:
        return self.config("base_model")

    @property
    def routing(self) -> dict[str, Any]:
        return self.config("routing")

    @property
    def rule(self) -> "RoutingRule":
        from registry.routing import RoutingRule  # numpy: imported only by commands that route

        return RoutingRule.from_record(self.routing)

    @property
    def training(self) -> dict[str, Any]:
        """Default training settings for new edits, set at init; empty when init set none."""
        return self.config("training", missing={})

    @property
    def tombstones(self) -> bool:
        """Whether a revoke leaves the edit's keys routing to the base model (`revoke_mode`
        "tombstone"); registries made before the option deleted them."""
        return self.routing.get("revoke_mode", "delete") == "tombstone"

    @property
    def revoked_state(self) -> State:
        """What a revoke turns an edit into: a tombstone, or (revoke_mode "delete") nothing."""
        return TOMBSTONE if self.tombstones else ABSENT

    def config_digest(self) -> str:
        return sha256_hex(canonical_json({"base_model": self.base_model["sha256"], "routing": self.routing}))

    @property
    def trees(self) -> TreeStore:
        if self._trees is None:
            self._trees = TreeStore(self.config_digest(), self.catalog.tree)
        return self._trees

    # --- refs ----------------------------------------------------------------------------------
    def head(self, ref: str = MAIN) -> Commit:
        found = self.catalog.ref(ref)
        if found is None:
            raise RegistryError(f"unknown branch or tag {ref!r}")
        return self.commit(found[1])

    def branch_head(self, branch: str) -> Commit:
        found = self.catalog.ref(branch)
        if found is None or found[0] != "branch":
            raise RegistryError(f"unknown branch {branch!r}" + (" (it is a tag; tags never move)" if found else ""))
        return self.commit(found[1])

    def branches(self) -> list[dict[str, Any]]:
        out = []
        for name, kind, commit_id in self.catalog.refs():
            if kind == "branch":
                reviews = self.catalog.protection(name)
                out.append({"name": name, "commit": commit_id, "protected": reviews > 0, "reviews": reviews})
        return out

    def tags(self) -> list[dict[str, str]]:
        return [{"tag": n, "commit": c} for n, kind, c in self.catalog.refs() if kind == "tag"]

    def refs_at(self, commit_id: str) -> list[str]:
        return sorted(n for n, _, c in self.catalog.refs() if c == commit_id)

    def tag(self, name: str, commit: Commit, actor: str) -> None:
        check_ref_name(name, "tag")
        if self.catalog.ref(name) is not None:
            raise RegistryError(f"{name!r} already exists (tags are immutable)")
        with self.transaction():
            self.catalog.move_ref(name, "tag", commit.commit_id, None, actor, f"tag {name}", utcnow())

    def create_branch(self, name: str, commit: Commit, actor: str) -> None:
        check_ref_name(name)
        if self.catalog.ref(name) is not None:
            raise RegistryError(f"{name!r} already exists")
        with self.transaction():
            self.catalog.move_ref(name, "branch", commit.commit_id, None, actor, f"branch {name} at {commit.commit_id[:12]}", utcnow())

    def delete_branch(self, name: str, actor: str, force: bool = False) -> Commit:
        """Remove a branch ref (its commits and ref log stay). Refused for main and protected
        branches, and, unless `force`, for a branch whose commits no other ref reaches."""
        head = self.branch_head(name)
        if name == MAIN:
            raise RegistryError("cannot delete main")
        if self.catalog.protection(name):
            raise RegistryError(f"branch {name!r} is protected (run `sola protect {name} --off` first)")
        if not force:
            parents = self.catalog.parent_map()
            others = [c for n, _, c in self.catalog.refs() if n != name]
            only_here = ancestors(parents, head.commit_id) - ancestors_of_all(parents, others)
            if only_here:
                raise RegistryError(f"branch {name!r} holds {len(only_here)} commit(s) no other branch or tag reaches "
                                    f"(merge or tag them first, or pass --force)")
        with self.transaction():
            self.catalog.move_ref(name, "branch", None, head.commit_id, actor, f"delete branch {name}", utcnow())
        return head

    def protection(self, branch: str) -> int:
        """Approvals a merge into `branch` needs (0: not protected)."""
        return self.catalog.protection(branch)

    def protect(self, branch: str, reviews: int, actor: str, reason: str | None = None) -> None:
        self.branch_head(branch)
        if not isinstance(reviews, int) or isinstance(reviews, bool) or not 0 <= reviews <= 100:
            raise RegistryError("--reviews must be an integer from 1 to 100 (or --off)")
        if reviews == self.catalog.protection(branch):
            raise RegistryError(f"branch {branch!r} already " + (f"needs {reviews} review(s)" if reviews else "is unprotected"))
        with self.transaction():
            self.catalog.set_protection(branch, reviews, actor, utcnow(), reason)

    def check_direct_write(self, branch: str) -> Commit:
        """The head of a branch a command may write to directly (not a tag, not protected)."""
        head = self.branch_head(branch)
        reviews = self.catalog.protection(branch)
        if reviews:
            raise RegistryError(f"branch {branch!r} is protected: it changes only by `sola merge` with {reviews} approval(s)")
        return head

    # --- commits -------------------------------------------------------------------------------
    def commit(self, commit_id: str) -> Commit:
        found = self.catalog.commit(commit_id)
        if found is None:
            raise RegistryError(f"unknown commit {commit_id}")
        return found

    def all_commits(self) -> list[Commit]:
        return self.catalog.all_commits()

    def changes(self, commit_id: str) -> Changes:
        return self.catalog.changes(commit_id)

    def commit_on(self, branch: str, changes: dict[str, State], author: str, op: str, message: str, reason: str | None,
                  extra_parents: Iterable[str] = (), head: Commit | None = None) -> Commit:
        """Write one commit on `branch` (the caller holds the transaction): the branch head's tree
        with `changes` applied, parents = [head, *extra_parents], and the ref moved by
        compare-and-swap from `head` (default: the head read now)."""
        head = head or self.branch_head(branch)
        before = self.trees.states(head.tree_id, changes)
        transitions = [(e, s) for e, s in changes.items() if before[e] != s]
        tree = self.trees.derive(head.tree_id, dict(transitions))
        commit = new_commit([head.commit_id, *extra_parents], tree, transitions, author, op, message, reason, self.catalog.next_seq())
        self.catalog.insert_trees(self.trees.take_pending())
        self.catalog.insert_commits([(commit, transitions)])
        try:
            self.catalog.move_ref(branch, "branch", commit.commit_id, head.commit_id, author, f"{op}: {message}", commit.time)
        except RefMoved as error:
            raise RegistryError(f"branch {branch!r} moved while this commit was prepared ({error}); nothing was written") from None
        return commit

    def fast_forward(self, branch: str, head: Commit, to: Commit, actor: str, reason: str) -> None:
        with self.transaction():
            self.catalog.move_ref(branch, "branch", to.commit_id, head.commit_id, actor, reason, utcnow())

    # --- revisions -----------------------------------------------------------------------------
    def resolve(self, revision: str | None = None, at: str | None = None) -> Commit:
        """A commit from a revision (registry/revisions.py), or what a branch pointed to at a time."""
        parsed = parse_revision(MAIN if revision is None else revision)
        if at is not None:
            if parsed.at is not None or parsed.steps:
                raise RegistryError("give a time once: --at TIME with a branch name, or NAME@TIME")
            parsed = type(parsed)(parsed.base, (), at)
        if parsed.at is not None:
            if self.catalog.ref(parsed.base) is None and not self.catalog.reflog(parsed.base):
                raise RegistryError(f"unknown branch {parsed.base!r} (a time needs a branch or tag name)")
            return self.resolve_time(parse_time(parsed.at), parsed.base)
        found = self.catalog.ref(parsed.base)
        if found is not None:
            commit = self.commit(found[1])
        else:
            prefix = hex_prefix(parsed.base)
            matches = self.catalog.commits_with_prefix(prefix) if prefix else []
            if not matches:
                raise RegistryError(f"unknown revision {revision!r}")
            if len(matches) > 1:
                raise RegistryError(f"ambiguous revision {revision!r}: matches several commits")
            commit = self.commit(matches[0])
        for kind, count in parsed.steps:
            if kind == "^":
                if count > len(commit.parents):
                    raise RegistryError(f"revision {revision!r}: commit {commit.commit_id[:12]} has {len(commit.parents)} parent(s)")
                commit = self.commit(commit.parents[count - 1])
                continue
            back = self.catalog.first_parent_ancestor(commit.commit_id, count)
            if back is None:
                raise RegistryError(f"revision {revision!r} goes back past the first commit")
            commit = self.commit(back)
        return commit

    def resolve_time(self, moment: datetime, ref: str = MAIN) -> Commit:
        """What `ref` pointed to at `moment`, from the ref log."""
        found = self.catalog.ref_at(ref, moment)
        if found is None:
            entries = self.catalog.reflog(ref)
            if entries and entries[0].time <= moment:
                raise RegistryError(f"{ref} did not exist at {iso(moment)} (it was deleted before then)")
            raise RegistryError(f"{ref} did not exist at {iso(moment)} (before the first commit on it)")
        return self.commit(found)

    # --- trees ---------------------------------------------------------------------------------
    def members(self, commit: Commit) -> dict[str, str]:
        """The commit's edit set: edit id -> 'active' | 'tombstone'."""
        return self.trees.members(commit.tree_id)

    def active_edit_ids(self, commit: Commit) -> list[str]:
        return sorted(e for e, s in self.members(commit).items() if s == ACTIVE)

    def tombstoned_edit_ids(self, commit: Commit) -> set[str]:
        """Revoked edits whose keys route their inputs to the base model at `commit`."""
        return {e for e, s in self.members(commit).items() if s == TOMBSTONE}

    def edit_state(self, edit_id: str, commit: Commit) -> State:
        return self.trees.states(commit.tree_id, [edit_id])[edit_id]

    def is_active(self, edit_id: str, commit: Commit | None = None) -> bool:
        return self.edit_state(edit_id, commit or self.head()) == ACTIVE

    def is_tombstoned(self, edit_id: str, commit: Commit | None = None) -> bool:
        return self.edit_state(edit_id, commit or self.head()) == TOMBSTONE

    # --- edits ---------------------------------------------------------------------------------
    def resolve_edit(self, text: str) -> str:
        prefix = hex_prefix(text) if isinstance(text, str) else None
        matches = self.catalog.edits_with_prefix(prefix) if prefix else []
        if not matches:
            raise RegistryError(f"unknown edit {str(text)[:80]!r}")
        if len(matches) > 1:
            raise RegistryError(f"ambiguous edit {text!r}: matches several edits")
        return matches[0]

    def edit_row(self, edit_id: str) -> dict[str, Any]:
        row = self.catalog.edit_row(edit_id)
        if row is None:
            raise RegistryError(f"unknown edit {edit_id}")
        return row

    def provenance(self, edit_id: str) -> dict[str, Any]:
        return self.objects.get_json(edit_id)

    def edit_lora(self, edit_id: str) -> dict[str, np.ndarray]:
        """The edit's tensors object: `lora_A`, `lora_B` (and, for edits written before keys moved
        to `key_vectors`, `keys`). What the routed layer needs when the edit fires."""
        return load_tensors(self.objects.get(self.edit_row(edit_id)["tensors_sha256"]))

    def edit_keys(self, edit_id: str, provenance: dict[str, Any] | None = None) -> np.ndarray:
        """The edit's routing keys (one row per key prompt), without reading its LoRA factors:
        from `key_vectors`, checked against the `keys_sha256` of its provenance (pass the document
        when already read), so a tampered row is never returned; for an edit of the older layout,
        from its tensors object."""
        import numpy as np

        document = provenance if provenance is not None else self.provenance(edit_id)
        if "keys_sha256" not in document:
            return self.edit_lora(edit_id)["keys"]
        blobs = self.catalog.edit_key_vectors(edit_id)
        if keys_digest(blobs) != document["keys_sha256"]:
            raise CorruptObject(f"keys of edit {edit_id[:12]} do not match its provenance (keys_sha256)")
        return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), self.key_dim()).copy()

    def edit_tensors(self, edit_id: str, provenance: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        """LoRA factors and keys of one edit, whichever of the two layouts it was written in."""
        tensors = self.edit_lora(edit_id)
        if "keys" not in tensors:
            tensors["keys"] = self.edit_keys(edit_id, provenance)
        return tensors

    def write_edit_objects(
        self, tensors: dict[str, np.ndarray], provenance: dict[str, Any], key_prompts: list[str], author: str
    ) -> tuple[str, list[Any], dict[str, Any], list[bytes]]:
        """Write an edit's tensors and provenance objects (before any row points at them).

        The tensors object holds the LoRA factors only; the keys go to `key_vectors` (in the
        transaction that records the edit) and into the provenance as `keys_sha256`, so each
        key is stored once (docs/scaling.md: bytes per edit).
        Returns (edit id, its `edits` row values, the provenance document, the key rows' bytes)."""
        import numpy as np
        from safetensors.numpy import save as save_safetensors

        if tensors["keys"].shape[0] != len(key_prompts):
            raise ValueError("one key prompt per key row")
        for name, value in tensors.items():
            if not np.isfinite(np.asarray(value, dtype=np.float32)).all():
                raise RegistryError(f"edit tensor {name} holds NaN or infinite values (training diverged); nothing was written")
        lora = {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in tensors.items() if name != "keys"}
        key_blobs = key_vector_blobs(tensors)
        tensors_sha = self.objects.put(save_safetensors(lora))
        document = dict(provenance, tensors_sha256=tensors_sha, keys_sha256=keys_digest(key_blobs), key_prompts=key_prompts)
        edit_id = self.objects.put(canonical_json(document))
        row = [edit_id, tensors_sha, document["prompt"], document["target"], document.get("subject"), author,
               document.get("reason"), document.get("source"), parse_time(document["created_at"]), len(key_prompts)]
        return edit_id, row, document, key_blobs

    def store_edit(
        self,
        tensors: dict[str, np.ndarray],
        provenance: dict[str, Any],
        key_prompts: list[str],
        author: str,
        message: str,
        supersede: Iterable[str] = (),
        branch: str = MAIN,
        committer: str | None = None,
        op: str | None = None,
    ) -> tuple[str, Commit]:
        """Write the edit's objects, then record it and its `add` commit on `branch` in one transaction.

        `author` is the edit's author (its row and provenance); `committer` makes the commit when
        someone else records it (a rebase keeps the original author), `op` names such a commit."""
        self.check_direct_write(branch)
        edit_id, row, document, key_blobs = self.write_edit_objects(tensors, provenance, key_prompts, author)
        if self.catalog.existing_edit([edit_id]):
            raise RegistryError(f"edit {edit_id[:12]} already exists")
        superseded = list(supersede)
        with self.transaction():
            head = self.check_direct_write(branch)
            for old in superseded:
                if not self.is_active(old, head):
                    raise RegistryError(f"cannot supersede {old[:12]}: it is not active on {branch}")
            self.catalog.insert_edits([row], [(edit_id, list(key_prompts), key_blobs)])
            changes: dict[str, State] = {old: ABSENT for old in superseded}
            changes[edit_id] = ACTIVE
            op = op or ("supersede" if superseded else "add")
            commit = self.commit_on(branch, changes, committer or author, op, message, document.get("reason"), head=head)
        return edit_id, commit

    def set_active(self, edit_id: str, active: bool, author: str, reason: str, branch: str = MAIN) -> Commit:
        """Revoke (active=False) or restore (active=True) as a new commit on `branch`."""
        if not isinstance(reason, str) or not reason.strip():
            raise RegistryError("a reason is required")
        row = self.edit_row(edit_id)
        head = self.check_direct_write(branch)
        # the edit's objects must be readable before a commit names it (restoring or revoking an
        # edit whose objects are missing would record a change nothing can serve or verify)
        self.edit_keys(edit_id, self.provenance(edit_id))
        self.objects.get(row["tensors_sha256"])
        state = self.edit_state(edit_id, head)
        if active and state == ACTIVE:
            raise RegistryError(f"edit {edit_id[:12]} is already active on {branch}")
        if not active and state != ACTIVE:
            raise RegistryError(f"edit {edit_id[:12]} is already revoked on {branch}" if self._was_on(edit_id, head)
                                else f"edit {edit_id[:12]} is not on branch {branch}")
        if active and state is ABSENT and not self._was_on(edit_id, head):
            raise RegistryError(f"edit {edit_id[:12]} was never on branch {branch} (use `sola cherry-pick` to add it)")
        op = "restore" if active else "revoke"
        with self.transaction():
            return self.commit_on(branch, {edit_id: ACTIVE if active else self.revoked_state}, author, op,
                                  f"{op} {edit_id[:12]}: {row['prompt']} -> {row['target']}", reason, head=head)

    def reroutes(self, edit_id: str, head: Commit, revoking: bool = False) -> list[dict[str, Any]]:
        """The edit's inputs (prompt, rephrases) that another active edit answers at `head` (with
        `revoking`: as `head` will route once this edit is revoked). The stored keys are the
        queries those inputs make, so the routing rule applies to them directly: no model."""
        from registry.routing import decide

        provenance = self.provenance(edit_id)
        inputs = [provenance["prompt"], *provenance.get("rephrases", [])]
        search, key_edit = self.key_search(head, tombstones=True)
        revoked = set(self.tombstoned_edit_ids(head))
        if revoking and self.tombstones:
            revoked.add(edit_id)
        elif revoking:
            import numpy as np

            gone = [k for k, e in key_edit.items() if e == edit_id]
            if gone:
                search.remove(np.array(gone, dtype=np.int64))
                key_edit = {k: e for k, e in key_edit.items() if e != edit_id}
        routing = decide(search, key_edit, frozenset(revoked), self.edit_keys(edit_id, provenance), self.rule)
        found = []
        for text, other, distance, radius in zip(inputs, routing.edits, routing.distances, routing.radii):
            if other is not None and other != edit_id:
                row = self.edit_row(other)
                found.append({"input": text, "edit": other, "distance": distance, "radius": radius,
                              "prompt": row["prompt"], "target": row["target"]})
        return found

    def _was_on(self, edit_id: str, head: Commit) -> bool:
        """Whether any commit in `head`'s history changed this edit."""
        touched = {c for c, _, _ in self.catalog.changes_of_edits([edit_id])}
        return bool(touched & ancestors(self.catalog.parent_map(), head.commit_id))

    # --- reviews -------------------------------------------------------------------------------
    def proposal_authors(self, source: Commit, target: Commit) -> set[str]:
        """Authors of the commits `source` would bring into `target`."""
        parents = self.catalog.parent_map()
        new = ancestors(parents, source.commit_id) - ancestors(parents, target.commit_id)
        return {c.author for c in self.catalog.commits(new).values()}

    def review(self, source: str, target: str, author: str, verdict: str, reason: str | None = None,
               commit: str | None = None) -> Review:
        """Record an approval or rejection of `source`'s head for merging into `target`."""
        if verdict not in ("approve", "reject"):
            raise RegistryError("a review approves or rejects")
        if source == target:
            raise RegistryError("a branch cannot be reviewed for merging into itself")
        source_head, target_head = self.branch_head(source), self.branch_head(target)
        if commit is not None and self.resolve(commit).commit_id != source_head.commit_id:
            raise RegistryError(f"stale review: {source} is now at {source_head.commit_id[:12]}, not {commit}")
        authors = self.proposal_authors(source_head, target_head)
        if not authors:
            raise RegistryError(f"{source} brings nothing into {target}: there is nothing to review")
        if author in authors:
            raise RegistryError(f"{author} wrote commits of {source}: a review must come from someone else")
        review = Review(0, source, source_head.commit_id, target, author, verdict, reason, utcnow())
        with self.transaction():
            review_id = self.catalog.insert_review(review)
        return replace(review, id=review_id)

    def reviews(self) -> list[Review]:
        return self.catalog.reviews()

    def current_reviews(self, source: str, target: str) -> list[Review]:
        """Each non-author reviewer's latest review of the source's current head for `target`
        (reviews of an older head are stale and do not count either way)."""
        source_head, target_head = self.branch_head(source), self.branch_head(target)
        authors = self.proposal_authors(source_head, target_head)
        latest: dict[str, Review] = {}
        for review in self.catalog.reviews():
            if review.source == source and review.target == target and review.source_commit == source_head.commit_id:
                latest[review.author] = review
        return [r for r in latest.values() if r.author not in authors]

    def approvals(self, source: str, target: str) -> list[Review]:
        """The approvals that count for merging `source` into `target` now."""
        return [r for r in self.current_reviews(source, target) if r.verdict == "approve"]

    def rejections(self, source: str, target: str) -> list[Review]:
        """Current rejections: any one blocks the merge until its reviewer approves a head."""
        return [r for r in self.current_reviews(source, target) if r.verdict == "reject"]

    # --- key search --------------------------------------------------------------------------------
    def key_dim(self) -> int:
        """Width of a routing key (the edited module's input), recorded at init."""
        return int(self.routing["key_dim"])

    @property
    def key_matrix(self) -> "KeyMatrix":
        from registry.keyindex import KeyMatrix

        return KeyMatrix(self.root / "cache")

    def key_owners(self) -> tuple[list[int], list[str]]:
        """(key ids, their edit ids) of every key ever stored, in key id order (append-only, so
        cached and extended, not re-read)."""
        ids, edits = self._key_owners
        fresh = self.catalog.key_owners(first_key=len(ids))
        if fresh:
            ids = ids + [k for k, _ in fresh]
            edits = edits + [e for _, e in fresh]
            self._key_owners = (ids, edits)
        return self._key_owners

    def all_keys(self) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Every key ever stored: (key ids 0..n-1, their edit ids, the (n, dim) float32 matrix),
        from the cached key matrix (blame scores a query against all of them at once)."""
        import numpy as np

        ids, edits = self.key_owners()
        dim = self.key_dim()
        if not ids:
            return np.zeros(0, np.int64), [], np.zeros((0, dim), np.float32)
        self.key_matrix.sync(len(ids), dim, self._load_key_rows, self.catalog.first_commit_id() or "")
        return np.asarray(ids, dtype=np.int64), edits, self.key_matrix.rows(np.arange(len(ids), dtype=np.int64), dim)

    def tree_keys(self, commit: Commit, tombstones: bool = False) -> tuple[np.ndarray, list[str]]:
        """Key ids and their edit ids at `commit`: the active edits' keys, plus with `tombstones`
        the keys of revoked edits that still route (to the base model)."""
        import numpy as np

        members = self.members(commit)
        wanted = (ACTIVE, TOMBSTONE) if tombstones else (ACTIVE,)
        ids, edits = self.key_owners()
        chosen = [(k, e) for k, e in zip(ids, edits) if members.get(e) in wanted]
        return np.array([k for k, _ in chosen], dtype=np.int64), [e for _, e in chosen]

    active_keys = tree_keys

    def _load_key_rows(self, first: int, end: int) -> np.ndarray:
        """Key ids first..end-1 from `key_vectors`, in key id order (one scan, no sort in SQL:
        ordering 100k blobs in DuckDB costs seconds, ordering their ids in numpy microseconds)."""
        import numpy as np

        rows = self.catalog.key_vectors(first, end)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        if len(rows) != end - first or not np.array_equal(np.sort(ids), np.arange(first, end)):
            raise CorruptObject("key_vectors does not hold every key id exactly once (run `sola verify`)")
        matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1)
        return matrix[np.argsort(ids, kind="stable")]

    def key_search(self, commit: Commit, tombstones: bool = False) -> tuple[FaissKeySearch, dict[int, str]]:
        """The key index of the commit's active keys (with `tombstones`, also the revoked keys
        that route to the base model; `tombstoned_edit_ids` names their edits) and key id -> edit id.

        Built from the cached key matrix (refreshed from `key_vectors`), exact below
        `FLAT_LIMIT` keys and IVF above it, with the registry's cached coarse lists."""
        from registry.keyindex import FLAT_LIMIT, CoarseLists, FaissKeySearch

        key_ids, edit_ids = self.tree_keys(commit, tombstones)
        key_edit = dict(zip(key_ids.tolist(), edit_ids))
        dim = self.key_dim()
        total = len(self.key_owners()[0])
        if not total:
            return FaissKeySearch.build(self.key_matrix.rows(key_ids, dim), key_ids, dim), key_edit
        owner = self.catalog.first_commit_id() or ""
        self.key_matrix.sync(total, dim, self._load_key_rows, owner)
        coarse = None
        if len(key_ids) >= FLAT_LIMIT:
            centroids, groups = CoarseLists(self.root / "cache").sync(self.key_matrix, total, dim, owner)
            coarse = (centroids, groups[key_ids])
        return FaissKeySearch.build(self.key_matrix.rows(key_ids, dim), key_ids, dim, coarse), key_edit

    # --- queries for the CLI ------------------------------------------------------------------------
    def log(self, limit: int | None = None, revision: Commit | None = None) -> list[Commit]:
        """Commits reachable from `revision` (default main), newest first by write order."""
        start = revision or self.head()
        if limit is None or limit > 1000:
            parents = self.catalog.parent_map()
            reachable = self.catalog.commits(ancestors(parents, start.commit_id))
            ordered = sorted(reachable.values(), key=lambda c: -c.seq)
            return ordered if limit is None else ordered[:limit]
        return self.catalog.recent_ancestors(start.commit_id, limit) if limit else []

    def diff(self, old: Commit, new: Commit) -> dict[str, list[str]]:
        """Edits active in `new` but not `old` (added) and the reverse (removed)."""
        a, b = set(self.active_edit_ids(old)), set(self.active_edit_ids(new))
        return {"added": sorted(b - a), "removed": sorted(a - b)}

    def edit_history(self, edit_id: str) -> list[dict[str, Any]]:
        """Every commit that changed the edit, on any branch, in write order."""
        rows = self.catalog.changes_of_edits([edit_id])
        commits = self.catalog.commits(c for c, _, _ in rows)
        return [dict(commits[c].to_dict(), active=state == ACTIVE, state=state or "absent") for c, _, state in rows]

    def counts(self) -> dict[str, int]:
        return {"edits": self.catalog.count("edits"), "commits": self.catalog.count("commits"),
                "keys": self.catalog.count("edit_keys")}


__all__ = ["Registry", "RegistryError", "RegistryLocked", "Commit", "CorruptObject", "parse_time", "iso", "utcnow"]
