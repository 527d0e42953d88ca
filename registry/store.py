"""The registry: edits as immutable artifacts, a hash-chained commit history, refs and a ref log.

History is linear on branch `main`; each commit records the edits it activates or revokes
(`commit_changes`), so the active set at any commit is a replay of changes up to its `seq`,
answered by one SQL aggregate. Nothing is deleted: revoke and restore are commits.

A snapshot ("tree") is identified by hashing the base model, the routing config and the set
of edits that route: the active edits and, when the routing config's `revoke_mode` is
"tombstone", the revoked edits whose keys still route their inputs to the base model. The set
is hashed additively (sum of per-member sha256 values mod 2^256, a tombstone hashing
differently from an active edit), so each commit derives its tree from its parent's in O(1)
while two revisions that route the same way still get the same tree id.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from registry.db import Backfill, RegistryLocked, connect, insert_rows, latest_version, migrate, schema_version
from registry.objects import CorruptObject, ObjectStore, canonical_json, sha256_hex

if TYPE_CHECKING:  # numpy, safetensors and FAISS are imported where used: `sola log` needs none of them
    import duckdb
    import numpy as np

    from registry.keyindex import FaissKeySearch, KeyMatrix

MODULUS = 1 << 256
MAIN = "main"
KEY_VECTORS_VERSION = 3  # the migration that added `key_vectors`


class RegistryError(Exception):
    """A user-facing failure: unknown revision, bad state transition, wrong registry path."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """ISO 8601; a time without zone is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise RegistryError(f"not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def edit_term(edit_id: str) -> int:
    return int(hashlib.sha256(b"sola-edit\0" + edit_id.encode()).hexdigest(), 16)


def tombstone_term(edit_id: str) -> int:
    return int(hashlib.sha256(b"sola-tombstone\0" + edit_id.encode()).hexdigest(), 16)


def tombstone_changes(
    op: str, changes: list[tuple[str, bool]], tombstones: bool, is_tombstoned: Callable[[str], bool]
) -> list[tuple[str, bool]]:
    """Which edits a commit turns into tombstones (True) or back from them (False).

    A revoke leaves the edit's keys routing to the base model; a restore of such an edit
    lifts it. A superseded edit is replaced by its correction, so its keys leave routing (its
    inputs are meant to reach the correction), and restoring it has no tombstone to lift.
    `is_tombstoned` answers for the state before the commit."""
    if not tombstones:
        return []
    if op == "revoke":
        return [(edit_id, True) for edit_id, active in changes if not active]
    if op == "restore":
        return [(edit_id, False) for edit_id, active in changes if active and is_tombstoned(edit_id)]
    return []


def tree_id_for(config_digest: str, set_sum: int) -> str:
    return sha256_hex(b"sola-tree\0" + config_digest.encode() + b"\0" + f"{set_sum:064x}".encode())


@dataclass(frozen=True)
class Commit:
    commit_id: str
    seq: int
    parent_id: str | None
    tree_id: str
    tree_sum: str
    n_active: int
    author: str
    time: datetime
    op: str
    message: str
    reason: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "commit": self.commit_id,
            "seq": self.seq,
            "parent": self.parent_id,
            "tree": self.tree_id,
            "active_edits": self.n_active,
            "author": self.author,
            "time": iso(self.time),
            "op": self.op,
            "message": self.message,
            "reason": self.reason,
        }


_COMMIT_COLUMNS = "commit_id, seq, parent_id, tree_id, tree_sum, n_active, author, time, op, message, reason"
# each edit's latest change up to a seq (the parameter): whether it is active, and the commit (so the op) that set it
_LAST_CHANGE = """WITH last AS (SELECT edit_id, arg_max(active, seq) AS active, arg_max(commit_id, seq) AS commit_id
                                FROM commit_changes WHERE seq <= ? GROUP BY edit_id)"""


def commit_record(commit: Commit, changes: list[tuple[str, bool]]) -> dict[str, Any]:
    """The hashed content of a commit; its id is sha256 of this record's canonical JSON."""
    return {
        "parent": commit.parent_id,
        "seq": commit.seq,
        "tree": commit.tree_id,
        "author": commit.author,
        "time": iso(commit.time),
        "op": commit.op,
        "message": commit.message,
        "reason": commit.reason,
        "changes": [[edit_id, active] for edit_id, active in changes],
    }


def next_commit(
    parent: Commit | None,
    config_digest: str,
    changes: list[tuple[str, bool]],
    author: str,
    op: str,
    message: str,
    reason: str | None,
    tombstones: Sequence[tuple[str, bool]] = (),
) -> Commit:
    """The next commit on top of `parent`: tree derived incrementally from the parent's set hash,
    id = sha256 of the canonical commit record. Shared by `Registry._append_commit` and the bulk
    loader. `tombstones` comes from `tombstone_changes`; it is not part of the commit record
    because the op and the history determine it."""
    set_sum = int(parent.tree_sum, 16) if parent else 0
    n_active = parent.n_active if parent else 0
    for edit_id, active in changes:
        set_sum = (set_sum + (edit_term(edit_id) if active else -edit_term(edit_id))) % MODULUS
        n_active += 1 if active else -1
    for edit_id, entering in tombstones:
        set_sum = (set_sum + (tombstone_term(edit_id) if entering else -tombstone_term(edit_id))) % MODULUS
    draft = Commit(
        commit_id="",
        seq=parent.seq + 1 if parent else 0,
        parent_id=parent.commit_id if parent else None,
        tree_id=tree_id_for(config_digest, set_sum),
        tree_sum=f"{set_sum:064x}",
        n_active=n_active,
        author=author,
        time=utcnow(),
        op=op,
        message=message,
        reason=reason,
    )
    commit_id = sha256_hex(canonical_json(commit_record(draft, changes)))
    return replace(draft, commit_id=commit_id)


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


def backfill_key_vectors(connection: duckdb.DuckDBPyConnection, objects: ObjectStore) -> None:
    """Migration 3 for a registry made before it: copy every key out of its (hash-checked)
    tensors object into `key_vectors`, inside the migration's transaction."""
    rows = connection.execute(
        """SELECT k.key_id, k.ordinal, e.tensors_sha256 FROM edit_keys k JOIN edits e USING (edit_id)
           WHERE k.key_id NOT IN (SELECT key_id FROM key_vectors) ORDER BY e.tensors_sha256, k.ordinal"""
    ).fetchall()
    keys_by_object: dict[str, list[bytes]] = {}
    batch: list[list[Any]] = []
    for key_id, ordinal, sha in rows:
        if sha not in keys_by_object:
            keys_by_object = {sha: key_vector_blobs(load_tensors(objects.get(sha)))}
        batch.append([key_id, keys_by_object[sha][ordinal]])
        if len(batch) >= 10_000:
            insert_rows(connection, "key_vectors", batch)
            batch = []
    if batch:
        insert_rows(connection, "key_vectors", batch)


def backfills(root: Path) -> dict[int, Backfill]:
    """Migration steps that need the objects, for `registry.db.migrate`."""
    return {KEY_VECTORS_VERSION: lambda connection: backfill_key_vectors(connection, ObjectStore(root / "objects"))}


class Registry:
    """One registry directory: `registry.duckdb`, `objects/`, and the derived `cache/`."""

    def __init__(self, root: Path, connection: duckdb.DuckDBPyConnection, writable: bool) -> None:
        self.root = root
        self.db = connection
        self.writable = writable
        self.objects = ObjectStore(root / "objects")
        self.db.execute("SET TimeZone = 'UTC'")

    # --- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, base_model: dict[str, Any], routing: dict[str, Any], author: str,
               training: dict[str, Any] | None = None) -> "Registry":
        """`training` is the registry's default for fitting new edits; unlike `routing` it is not
        part of any snapshot's identity (each edit records the training it actually got)."""
        root = Path(root)
        if (root / "registry.duckdb").exists():
            raise RegistryError(f"a registry already exists at {root}")
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root / "cache", ignore_errors=True)  # derived from a registry that no longer exists
        connection = connect(root / "registry.duckdb", read_only=False)
        registry = cls(root, connection, writable=True)
        migrate(connection, backfills=backfills(root))
        with registry.transaction():
            connection.execute("INSERT INTO registry_config VALUES ('base_model', ?)", [canonical_json(base_model).decode()])
            connection.execute("INSERT INTO registry_config VALUES ('routing', ?)", [canonical_json(routing).decode()])
            if training:
                connection.execute("INSERT INTO registry_config VALUES ('training', ?)", [canonical_json(training).decode()])
            registry._append_commit([], author, "init", f"init registry on {base_model.get('name')}", None)
        return registry

    @classmethod
    def open(cls, root: Path, writable: bool = False, wait_seconds: float = 0.0) -> "Registry":
        root = Path(root)
        database = root / "registry.duckdb"
        if not database.is_file():
            raise RegistryError(f"no registry at {root} (run `sola init` first)")
        connection = connect(database, read_only=not writable, wait_seconds=wait_seconds)
        if schema_version(connection) < latest_version():
            if not writable:  # upgrading needs the write lock; reopen briefly as a writer
                connection.close()
                connection = connect(database, read_only=False, wait_seconds=wait_seconds)
                migrate(connection, backfills=backfills(root))
                connection.close()
                connection = connect(database, read_only=True, wait_seconds=wait_seconds)
            else:
                migrate(connection, backfills=backfills(root))
        return cls(root, connection, writable)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    class _Transaction:
        def __init__(self, db: duckdb.DuckDBPyConnection) -> None:
            self.db = db

        def __enter__(self) -> None:
            self.db.execute("BEGIN TRANSACTION")

        def __exit__(self, exc_type: object, *rest: object) -> None:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")

    def transaction(self) -> "_Transaction":
        if not self.writable:
            raise RegistryError("registry opened read-only")
        return self._Transaction(self.db)

    # --- configuration -----------------------------------------------------------------------
    def config(self, name: str, missing: dict[str, Any] | None = None) -> dict[str, Any]:
        """A `registry_config` row; `missing` is returned for a row that is optional and absent."""
        row = self.db.execute("SELECT value FROM registry_config WHERE name = ?", [name]).fetchone()
        if row is None:
            if missing is not None:
                return missing
            raise RegistryError(f"registry has no {name} configuration")
        return json.loads(row[0])

    @property
    def base_model(self) -> dict[str, Any]:
        return self.config("base_model")

    @property
    def routing(self) -> dict[str, Any]:
        return self.config("routing")

    @property
    def training(self) -> dict[str, Any]:
        """Default training settings for new edits, set at init; empty when init set none."""
        return self.config("training", missing={})

    @property
    def tombstones(self) -> bool:
        """Whether a revoke leaves the edit's keys routing to the base model (`revoke_mode`
        "tombstone"); registries made before the option deleted them."""
        return self.routing.get("revoke_mode", "delete") == "tombstone"

    def config_digest(self) -> str:
        return sha256_hex(canonical_json({"base_model": self.base_model["sha256"], "routing": self.routing}))

    # --- commits -------------------------------------------------------------------------------
    def _commit_from_row(self, row: tuple) -> Commit:
        return Commit(*row)

    def head(self, ref: str = MAIN) -> Commit:
        row = self.db.execute(
            f"SELECT {_COMMIT_COLUMNS} FROM commits WHERE commit_id = (SELECT commit_id FROM refs WHERE name = ?)", [ref]
        ).fetchone()
        if row is None:
            raise RegistryError(f"unknown ref {ref!r}")
        return self._commit_from_row(row)

    def commit(self, commit_id: str) -> Commit:
        row = self.db.execute(f"SELECT {_COMMIT_COLUMNS} FROM commits WHERE commit_id = ?", [commit_id]).fetchone()
        if row is None:
            raise RegistryError(f"unknown commit {commit_id}")
        return self._commit_from_row(row)

    def all_commits(self) -> list[Commit]:
        """Every commit in chain order, in one query (verify, audit)."""
        rows = self.db.execute(f"SELECT {_COMMIT_COLUMNS} FROM commits ORDER BY seq").fetchall()
        return [self._commit_from_row(r) for r in rows]

    def changes(self, commit_id: str) -> list[tuple[str, bool]]:
        rows = self.db.execute(
            "SELECT edit_id, active FROM commit_changes WHERE commit_id = ? ORDER BY rowid", [commit_id]
        ).fetchall()
        return [(edit_id, bool(active)) for edit_id, active in rows]

    def _append_commit(self, changes: list[tuple[str, bool]], author: str, op: str, message: str, reason: str | None) -> Commit:
        """Insert a commit on top of main and move main; the caller holds the transaction."""
        row = self.db.execute(f"SELECT {_COMMIT_COLUMNS} FROM commits ORDER BY seq DESC LIMIT 1").fetchone()
        parent = self._commit_from_row(row) if row else None
        tombstones = tombstone_changes(op, changes, self.tombstones, self.is_tombstoned)
        commit = next_commit(parent, self.config_digest(), changes, author, op, message, reason, tombstones)
        commit_id = commit.commit_id
        self.db.execute(
            f"INSERT INTO commits ({_COMMIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [getattr(commit, f) for f in _COMMIT_COLUMNS.split(", ")],
        )
        if changes:
            self.db.executemany(
                "INSERT INTO commit_changes VALUES (?, ?, ?, ?)", [[commit_id, commit.seq, e, a] for e, a in changes]
            )
        self._move_ref(MAIN, "branch", commit_id, author, f"{op}: {message}", commit.time)
        return commit

    def _move_ref(self, name: str, kind: str, commit_id: str, actor: str, reason: str, moment: datetime) -> None:
        old = self.db.execute("SELECT commit_id FROM refs WHERE name = ?", [name]).fetchone()
        if old is None:
            self.db.execute("INSERT INTO refs VALUES (?, ?, ?)", [name, kind, commit_id])
        else:
            self.db.execute("UPDATE refs SET commit_id = ? WHERE name = ?", [commit_id, name])
        next_id = self.db.execute("SELECT coalesce(max(id), -1) + 1 FROM reflog").fetchone()[0]
        self.db.execute(
            "INSERT INTO reflog VALUES (?, ?, ?, ?, ?, ?, ?)",
            [next_id, name, old[0] if old else None, commit_id, actor, moment, reason],
        )

    # --- revisions -----------------------------------------------------------------------------
    def resolve(self, revision: str | None = None, at: str | None = None) -> Commit:
        """A commit from `main`, `main~N`, a tag, a full or unique-prefix commit id, or a time."""
        if at is not None:
            return self.resolve_time(parse_time(at))
        text = (revision or MAIN).strip()
        if not text:
            raise RegistryError("empty revision")
        base, _, back = text.partition("~")
        if back and not back.isdigit():
            raise RegistryError(f"bad revision {text!r}: expected NAME~N")
        steps = int(back) if back else 0
        ref = self.db.execute("SELECT commit_id FROM refs WHERE name = ?", [base]).fetchone()
        if ref is not None:
            commit = self.commit(ref[0])
        else:
            lowered = base.lower().removeprefix("sha256:")
            if len(lowered) < 4 or any(c not in "0123456789abcdef" for c in lowered):
                raise RegistryError(f"unknown revision {text!r}")
            rows = self.db.execute(
                "SELECT commit_id FROM commits WHERE starts_with(commit_id, ?) LIMIT 2", [lowered]
            ).fetchall()
            if not rows:
                raise RegistryError(f"unknown revision {text!r}")
            if len(rows) > 1:
                raise RegistryError(f"ambiguous revision {text!r}: matches several commits")
            commit = self.commit(rows[0][0])
        if steps:
            if steps > commit.seq:
                raise RegistryError(f"revision {text!r} goes back past the first commit")
            row = self.db.execute(f"SELECT {_COMMIT_COLUMNS} FROM commits WHERE seq = ?", [commit.seq - steps]).fetchone()
            commit = self._commit_from_row(row)
        return commit

    def resolve_time(self, moment: datetime, ref: str = MAIN) -> Commit:
        """What `ref` pointed to at `moment`, from the ref log."""
        row = self.db.execute(
            "SELECT new_commit FROM reflog WHERE ref = ? AND time <= ? ORDER BY time DESC, id DESC LIMIT 1", [ref, moment]
        ).fetchone()
        if row is None:
            raise RegistryError(f"{ref} did not exist at {iso(moment)} (before the first commit)")
        return self.commit(row[0])

    # --- edits ---------------------------------------------------------------------------------
    def active_edit_ids(self, commit: Commit) -> list[str]:
        rows = self.db.execute(
            """SELECT edit_id FROM commit_changes WHERE seq <= ?
               GROUP BY edit_id HAVING arg_max(active, seq) ORDER BY edit_id""",
            [commit.seq],
        ).fetchall()
        return [r[0] for r in rows]

    def active_keys(self, commit: Commit, tombstones: bool = False) -> tuple[np.ndarray, list[str]]:
        """Key ids and their edit ids at `commit`: the active edits' keys, plus with `tombstones`
        the keys of revoked edits that still route (to the base model)."""
        import numpy as np

        rows = self.db.execute(
            f"""{_LAST_CHANGE}
               SELECT k.key_id, k.edit_id FROM edit_keys k JOIN last USING (edit_id) JOIN commits c USING (commit_id)
               WHERE last.active OR (? AND c.op = 'revoke') ORDER BY k.key_id""",
            [commit.seq, tombstones and self.tombstones],
        ).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows]

    def tombstoned_edit_ids(self, commit: Commit) -> set[str]:
        """Revoked edits whose keys route their inputs to the base model at `commit`."""
        if not self.tombstones:
            return set()
        rows = self.db.execute(
            f"""{_LAST_CHANGE}
               SELECT last.edit_id FROM last JOIN commits c USING (commit_id) WHERE NOT last.active AND c.op = 'revoke'""",
            [commit.seq],
        ).fetchall()
        return {r[0] for r in rows}

    def is_tombstoned(self, edit_id: str, commit: Commit | None = None) -> bool:
        if not self.tombstones:
            return False
        commit = commit or self.head()
        row = self.db.execute(
            """SELECT ch.active, c.op FROM commit_changes ch JOIN commits c USING (commit_id)
               WHERE ch.edit_id = ? AND ch.seq <= ? ORDER BY ch.seq DESC LIMIT 1""",
            [edit_id, commit.seq],
        ).fetchone()
        return bool(row) and not row[0] and row[1] == "revoke"

    def is_active(self, edit_id: str, commit: Commit | None = None) -> bool:
        commit = commit or self.head()
        row = self.db.execute(
            "SELECT arg_max(active, seq) FROM commit_changes WHERE edit_id = ? AND seq <= ?", [edit_id, commit.seq]
        ).fetchone()
        return bool(row and row[0])

    def resolve_edit(self, text: str) -> str:
        lowered = text.strip().lower().removeprefix("sha256:")
        if len(lowered) < 4 or any(c not in "0123456789abcdef" for c in lowered):
            raise RegistryError(f"unknown edit {text!r}")
        rows = self.db.execute("SELECT edit_id FROM edits WHERE starts_with(edit_id, ?) LIMIT 2", [lowered]).fetchall()
        if not rows:
            raise RegistryError(f"unknown edit {text!r}")
        if len(rows) > 1:
            raise RegistryError(f"ambiguous edit {text!r}: matches several edits")
        return rows[0][0]

    def edit_row(self, edit_id: str) -> dict[str, Any]:
        cursor = self.db.execute("SELECT * FROM edits WHERE edit_id = ?", [edit_id])
        row = cursor.fetchone()
        if row is None:
            raise RegistryError(f"unknown edit {edit_id}")
        return dict(zip([d[0] for d in cursor.description], row))

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
        blobs = [r[0] for r in self.db.execute(
            "SELECT v.vector FROM edit_keys k JOIN key_vectors v USING (key_id) WHERE k.edit_id = ? ORDER BY k.ordinal", [edit_id]
        ).fetchall()]
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
    ) -> tuple[str, Commit]:
        """Write the edit's objects, then record it and its `add` commit in one transaction."""
        edit_id, row, document, key_blobs = self.write_edit_objects(tensors, provenance, key_prompts, author)
        if self.db.execute("SELECT 1 FROM edits WHERE edit_id = ?", [edit_id]).fetchone():
            raise RegistryError(f"edit {edit_id[:12]} already exists")
        superseded = list(supersede)
        for old in superseded:
            if not self.is_active(old):
                raise RegistryError(f"cannot supersede {old[:12]}: it is not active")
        with self.transaction():
            self.db.execute("INSERT INTO edits VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            first_key = self.db.execute("SELECT coalesce(max(key_id), -1) + 1 FROM edit_keys").fetchone()[0]
            self.db.executemany(
                "INSERT INTO edit_keys VALUES (?, ?, ?, ?)",
                [[first_key + i, edit_id, i, text] for i, text in enumerate(key_prompts)],
            )
            insert_rows(self.db, "key_vectors", [[first_key + i, blob] for i, blob in enumerate(key_blobs)])
            changes = [(old, False) for old in superseded] + [(edit_id, True)]
            op = "supersede" if superseded else "add"
            commit = self._append_commit(changes, author, op, message, document.get("reason"))
        return edit_id, commit

    def set_active(self, edit_id: str, active: bool, author: str, reason: str) -> Commit:
        """Revoke (active=False) or restore (active=True) as a new commit on main."""
        if not reason or not reason.strip():
            raise RegistryError("a reason is required")
        currently = self.is_active(edit_id)
        if currently == active:
            raise RegistryError(f"edit {edit_id[:12]} is already {'active' if active else 'revoked'}")
        row = self.edit_row(edit_id)
        op = "restore" if active else "revoke"
        with self.transaction():
            return self._append_commit([(edit_id, active)], author, op, f"{op} {edit_id[:12]}: {row['prompt']} -> {row['target']}", reason)

    # --- tags ------------------------------------------------------------------------------------
    def tag(self, name: str, commit: Commit, actor: str) -> None:
        if not name or name == MAIN or "~" in name or name.strip() != name or all(c in "0123456789abcdef" for c in name.lower()):
            raise RegistryError(f"invalid tag name {name!r}")
        if self.db.execute("SELECT 1 FROM refs WHERE name = ?", [name]).fetchone():
            raise RegistryError(f"tag {name!r} already exists (tags are immutable)")
        with self.transaction():
            self._move_ref(name, "tag", commit.commit_id, actor, f"tag {name}", utcnow())

    def tags(self) -> list[dict[str, str]]:
        rows = self.db.execute("SELECT name, commit_id FROM refs WHERE kind = 'tag' ORDER BY name").fetchall()
        return [{"tag": n, "commit": c} for n, c in rows]

    # --- key search --------------------------------------------------------------------------------
    def key_dim(self) -> int:
        """Width of a routing key (the edited module's input), recorded at init."""
        return int(self.routing["key_dim"])

    @property
    def key_matrix(self) -> "KeyMatrix":
        from registry.keyindex import KeyMatrix

        return KeyMatrix(self.root / "cache")

    def _load_key_rows(self, first: int, end: int) -> np.ndarray:
        """Key ids first..end-1 from `key_vectors`, in key id order (one scan, no sort in SQL:
        ordering 100k blobs in DuckDB costs seconds, ordering their ids in numpy microseconds)."""
        import numpy as np

        rows = self.db.execute("SELECT key_id, vector FROM key_vectors WHERE key_id >= ? AND key_id < ?", [first, end]).fetchall()
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

        key_ids, edit_ids = self.active_keys(commit, tombstones)
        key_edit = dict(zip(key_ids.tolist(), edit_ids))
        dim = self.key_dim()
        total = self.db.execute("SELECT count(*) FROM edit_keys").fetchone()[0]
        if not total:
            return FaissKeySearch.build(self.key_matrix.rows(key_ids, dim), key_ids, dim), key_edit
        owner = self.db.execute("SELECT commit_id FROM commits WHERE seq = 0").fetchone()[0]
        self.key_matrix.sync(total, dim, self._load_key_rows, owner)
        coarse = None
        if len(key_ids) >= FLAT_LIMIT:
            centroids, groups = CoarseLists(self.root / "cache").sync(self.key_matrix, total, dim, owner)
            coarse = (centroids, groups[key_ids])
        return FaissKeySearch.build(self.key_matrix.rows(key_ids, dim), key_ids, dim, coarse), key_edit

    # --- queries for the CLI ------------------------------------------------------------------------
    def log(self, limit: int | None = None, revision: Commit | None = None) -> list[Commit]:
        top = (revision or self.head()).seq
        sql = f"SELECT {_COMMIT_COLUMNS} FROM commits WHERE seq <= ? ORDER BY seq DESC"
        params: list[Any] = [top]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [self._commit_from_row(r) for r in self.db.execute(sql, params).fetchall()]

    def diff(self, old: Commit, new: Commit) -> dict[str, list[str]]:
        rows = self.db.execute(
            """WITH a AS (SELECT edit_id FROM commit_changes WHERE seq <= ? GROUP BY edit_id HAVING arg_max(active, seq)),
                    b AS (SELECT edit_id FROM commit_changes WHERE seq <= ? GROUP BY edit_id HAVING arg_max(active, seq))
               SELECT 'added', edit_id FROM (SELECT edit_id FROM b EXCEPT SELECT edit_id FROM a)
               UNION ALL
               SELECT 'removed', edit_id FROM (SELECT edit_id FROM a EXCEPT SELECT edit_id FROM b)
               ORDER BY 1, 2""",
            [old.seq, new.seq],
        ).fetchall()
        return {
            "added": [e for kind, e in rows if kind == "added"],
            "removed": [e for kind, e in rows if kind == "removed"],
        }

    def edit_history(self, edit_id: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            f"""SELECT ch.active, {', '.join('c.' + c for c in _COMMIT_COLUMNS.split(', '))}
                FROM commit_changes ch JOIN commits c USING (commit_id) WHERE ch.edit_id = ? ORDER BY c.seq""",
            [edit_id],
        ).fetchall()
        return [dict(self._commit_from_row(r[1:]).to_dict(), active=bool(r[0])) for r in rows]

    def counts(self) -> dict[str, int]:
        return {
            "edits": self.db.execute("SELECT count(*) FROM edits").fetchone()[0],
            "commits": self.db.execute("SELECT count(*) FROM commits").fetchone()[0],
            "keys": self.db.execute("SELECT count(*) FROM edit_keys").fetchone()[0],
        }


__all__ = ["Registry", "RegistryError", "RegistryLocked", "Commit", "CorruptObject", "parse_time", "iso", "utcnow"]
