"""Registries as the previous releases wrote them: a fixture for the migration tests.

Schema versions 1-3 kept history as one line: each commit's record hashed its `seq` and its one
parent, its tree id was the additive set hash of the active edits (plus tombstones) and only
`commit_changes(edit, active)` said what changed. These helpers write exactly those rows through
a raw DuckDB connection, so upgrading them exercises the real migration.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np

from registry.db import connect, migrate, schema_version
from registry.model import ACTIVE, MODULUS, TOMBSTONE, Commit, commit_record, iso, member_term, parse_time, tree_id_for, utcnow
from registry.objects import ObjectStore, canonical_json, sha256_hex


class PreviousRelease:
    """A registry at schema `version` (1-3), written the way that release's code did."""

    def __init__(self, root: Path, version: int, base: dict, routing: dict) -> None:
        root.mkdir(parents=True)
        self.root = root
        self.db = connect(root / "registry.duckdb", read_only=False)
        migrate(self.db, up_to=version)
        assert schema_version(self.db) == version
        self.version = version
        self.objects = ObjectStore(root / "objects")
        self.tombstones = routing.get("revoke_mode", "delete") == "tombstone"
        self.digest = sha256_hex(canonical_json({"base_model": base["sha256"], "routing": routing}))
        self.db.execute("INSERT INTO registry_config VALUES ('base_model', ?)", [json.dumps(base)])
        self.db.execute("INSERT INTO registry_config VALUES ('routing', ?)", [json.dumps(routing)])
        self.active: set[str] = set()
        self.tombstoned: set[str] = set()
        self.set_sum = 0
        self.commits: list[str] = []
        self._commit([], "init", "init")

    def _commit(self, changes: list[tuple[str, bool]], op: str, message: str, tombstoned: list[str] = (), lifted: list[str] = ()) -> str:
        for edit_id, active in changes:
            (self.active.add if active else self.active.discard)(edit_id)
            self.set_sum = (self.set_sum + (1 if active else -1) * member_term(edit_id, ACTIVE)) % MODULUS
        for edit_id in tombstoned:
            self.tombstoned.add(edit_id)
            self.set_sum = (self.set_sum + member_term(edit_id, TOMBSTONE)) % MODULUS
        for edit_id in lifted:
            self.tombstoned.discard(edit_id)
            self.set_sum = (self.set_sum - member_term(edit_id, TOMBSTONE)) % MODULUS
        seq = len(self.commits)
        draft = Commit("", seq, tuple(self.commits[-1:]), tree_id_for(self.digest, self.set_sum), f"{self.set_sum:064x}",
                       len(self.active), "tester", utcnow(), op, message, None, 1)
        states = [(e, ACTIVE if a else None) for e, a in changes]
        commit_id = sha256_hex(canonical_json(commit_record(draft, states)))
        self.db.execute("INSERT INTO commits VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [commit_id, seq, draft.parent_id, draft.tree_id, draft.tree_sum, draft.n_active, draft.author,
                         draft.time, op, message, None])
        for edit_id, active in changes:
            self.db.execute("INSERT INTO commit_changes VALUES (?, ?, ?, ?)", [commit_id, seq, edit_id, active])
        old = self.commits[-1] if self.commits else None
        if old is None:
            self.db.execute("INSERT INTO refs VALUES ('main', 'branch', ?)", [commit_id])
        else:
            self.db.execute("UPDATE refs SET commit_id = ? WHERE name = 'main'", [commit_id])
        self.db.execute("INSERT INTO reflog VALUES (?, 'main', ?, ?, 'tester', ?, ?)", [seq, old, commit_id, draft.time, f"{op}: {message}"])
        self.commits.append(commit_id)
        return commit_id

    def add(self, prompt: str, seed: int, n_keys: int = 2) -> str:
        """An edit in that release's layout: keys inside the tensors object (and, from version 3,
        also in `key_vectors` with `keys_sha256` in the provenance)."""
        from safetensors.numpy import save as save_safetensors

        rng = np.random.default_rng(seed)
        keys = rng.normal(size=(n_keys, 8)).astype(np.float32)
        keys /= np.linalg.norm(keys, axis=1, keepdims=True)
        tensors = {"lora_A": rng.normal(size=(2, 8)).astype(np.float32), "lora_B": rng.normal(size=(16, 2)).astype(np.float32)}
        prompts = [prompt] + [f"{prompt}?" * i for i in range(1, n_keys)]
        document = {"prompt": prompt, "target": "x", "author": "tester", "reason": "test", "source": None, "subject": None,
                    "created_at": iso(utcnow()), "key_prompts": prompts}
        if self.version >= 3:
            blobs = [row.astype("<f4").tobytes() for row in keys]
            document["tensors_sha256"] = self.objects.put(save_safetensors(tensors))
            document["keys_sha256"] = sha256_hex(b"".join(blobs))
        else:
            document["tensors_sha256"] = self.objects.put(save_safetensors(dict(tensors, keys=keys)))
        edit_id = self.objects.put(canonical_json(document))
        self.db.execute("INSERT INTO edits VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [edit_id, document["tensors_sha256"], prompt, "x", None, "tester", "test", None,
                         parse_time(document["created_at"]), n_keys])
        first = self.db.execute("SELECT coalesce(max(key_id), -1) + 1 FROM edit_keys").fetchone()[0]
        for ordinal, text in enumerate(prompts):
            self.db.execute("INSERT INTO edit_keys VALUES (?, ?, ?, ?)", [first + ordinal, edit_id, ordinal, text])
            if self.version >= 3:
                self.db.execute("INSERT INTO key_vectors VALUES (?, ?)", [first + ordinal, keys[ordinal].astype("<f4").tobytes()])
        self._commit([(edit_id, True)], "add", f"add {prompt}")
        return edit_id

    def revoke(self, edit_id: str) -> str:
        return self._commit([(edit_id, False)], "revoke", f"revoke {edit_id[:12]}", tombstoned=[edit_id] if self.tombstones else [])

    def restore(self, edit_id: str) -> str:
        lifted = [edit_id] if edit_id in self.tombstoned else []
        return self._commit([(edit_id, True)], "restore", f"restore {edit_id[:12]}", lifted=lifted)

    def tag(self, name: str) -> None:
        self.db.execute("INSERT INTO refs VALUES (?, 'tag', ?)", [name, self.commits[-1]])
        self.db.execute("INSERT INTO reflog VALUES (?, ?, NULL, ?, 'tester', ?, ?)",
                        [1000 + len(self.commits), name, self.commits[-1], utcnow(), f"tag {name}"])

    def close(self) -> None:
        self.db.close()


def raw_sql(registry, statement: str, params: list | None = None) -> list[tuple]:
    """What anyone with write access to the catalog (`registry.duckdb`, or the Postgres schema)
    can do behind sola's back (tamper tests). `?` placeholders on both."""
    from registry.catalog.postgres import PostgresCatalog

    if isinstance(registry.catalog, PostgresCatalog):
        cursor = registry.catalog.db.execute(statement.replace("?", "%s"), params or [])
        return cursor.fetchall() if cursor.description else []
    return registry.catalog.db.execute(statement, params or []).fetchall()


__all__ = ["PreviousRelease", "raw_sql", "duckdb"]
