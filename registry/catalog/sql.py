"""The SQL both catalogs share: every query the store makes, written once.

`SQLCatalog` holds the registry's queries in the SQL that DuckDB and PostgreSQL both speak
(`?` placeholders, which the Postgres catalog turns into its own). A subclass supplies the
connection: how a statement runs, how rows are inserted, transactions and the schema version.
The two engines differ in little else: Postgres keeps the insertion order of `commit_changes`
in an identity column named `rowid`, so `ORDER BY rowid` reads the same on both.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable

from registry.catalog import RefMoved
from registry.model import ABSENT, Changes, Commit, RefEntry, Review, State, TreeDelta, TreeSummary

COMMIT_COLUMNS = "commit_id, seq, parent_id, tree_id, tree_sum, n_active, author, time, op, message, reason, format"
TABLES = ("registry_config", "edits", "edit_keys", "key_vectors", "commits", "commit_parents", "commit_changes", "trees",
          "tree_members", "refs", "reflog", "protections", "reviews")
REFLOG_COLUMNS = "id, ref, old_commit, new_commit, actor, time, reason, kind, prev_hash, entry_hash"
ROWS_PER_INSERT = 200
_CHUNK = 500


def state_out(text: str | None) -> State:
    return None if text in (None, "absent") else text


def state_in(state: State) -> str:
    return "absent" if state is ABSENT else state


class SQLCatalog:
    """The queries; subclasses provide `_execute`, `transaction`, `schema_version` and `close`."""

    writable: bool

    def __init__(self, writable: bool) -> None:
        self.writable = writable
        self._parents_cache: dict[str, tuple[str, ...]] = {}
        self._registry_id: str | None = None

    def _execute(self, sql: str, params: list[Any] | tuple = ()) -> Any:
        """Run one statement; the result has `fetchone`, `fetchall` and `description`."""
        raise NotImplementedError

    def _insert(self, table: str, rows: list[list[Any]], columns: str | None = None) -> None:
        """Multi-row INSERTs (one statement per `ROWS_PER_INSERT` rows: a statement per row costs
        about a millisecond in DuckDB and a round trip in Postgres)."""
        target = f"{table} ({columns})" if columns else table
        for start in range(0, len(rows), ROWS_PER_INSERT):
            chunk = rows[start : start + ROWS_PER_INSERT]
            row = "(" + ", ".join("?" * len(chunk[0])) + ")"
            self._execute(f"INSERT INTO {target} VALUES " + ", ".join([row] * len(chunk)), [value for r in chunk for value in r])

    # --- configuration ---------------------------------------------------------------------------
    def config(self, name: str) -> str | None:
        row = self._execute("SELECT value FROM registry_config WHERE name = ?", [name]).fetchone()
        return None if row is None else row[0]

    def put_config(self, name: str, value: str) -> None:
        self._execute("INSERT INTO registry_config VALUES (?, ?)", [name, value])

    # --- edits and keys ---------------------------------------------------------------------------
    def insert_edits(self, rows: list[list[Any]], keys: list[tuple[str, list[str], list[bytes]]]) -> None:
        """Edit rows, then each edit's key prompts and vectors under dense key ids in call order."""
        next_key = self._execute("SELECT coalesce(max(key_id), -1) + 1 FROM edit_keys").fetchone()[0]
        key_rows, vector_rows = [], []
        for edit_id, prompts, blobs in keys:
            for ordinal, (text, blob) in enumerate(zip(prompts, blobs)):
                key_rows.append([next_key, edit_id, ordinal, text])
                vector_rows.append([next_key, blob])
                next_key += 1
        self._insert("edits", rows)
        self._insert("edit_keys", key_rows)
        self._insert("key_vectors", vector_rows)

    def existing_edit(self, edit_ids: list[str]) -> str | None:
        for start in range(0, len(edit_ids), _CHUNK):
            chunk = edit_ids[start : start + _CHUNK]
            row = self._execute(f"SELECT edit_id FROM edits WHERE edit_id IN ({', '.join('?' * len(chunk))}) LIMIT 1", chunk).fetchone()
            if row:
                return row[0]
        return None

    def edit_row(self, edit_id: str) -> dict[str, Any] | None:
        cursor = self._execute("SELECT * FROM edits WHERE edit_id = ?", [edit_id])
        row = cursor.fetchone()
        return None if row is None else dict(zip([d[0] for d in cursor.description], row))

    def edit_rows(self, edit_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        ids = list(dict.fromkeys(edit_ids))
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            cursor = self._execute(f"SELECT * FROM edits WHERE edit_id IN ({', '.join('?' * len(chunk))})", chunk)
            columns = [d[0] for d in cursor.description]
            for row in cursor.fetchall():
                out[row[0]] = dict(zip(columns, row))
        return out

    def all_edit_rows(self) -> list[dict[str, Any]]:
        cursor = self._execute("SELECT * FROM edits ORDER BY created_at, edit_id")
        columns = [d[0] for d in cursor.description]
        return [dict(zip(columns, row)) for row in cursor.fetchall()]

    def edits_with_prefix(self, prefix: str, limit: int = 2) -> list[str]:
        return [r[0] for r in self._execute("SELECT edit_id FROM edits WHERE starts_with(edit_id, ?) LIMIT ?", [prefix, limit]).fetchall()]

    def edit_key_rows(self, edit_id: str) -> list[tuple[int, int, str]]:
        return [tuple(r) for r in self._execute(
            "SELECT key_id, ordinal, prompt FROM edit_keys WHERE edit_id = ? ORDER BY ordinal", [edit_id]).fetchall()]

    def edit_key_vectors(self, edit_id: str) -> list[bytes]:
        return [r[0] for r in self._execute(
            "SELECT v.vector FROM edit_keys k JOIN key_vectors v USING (key_id) WHERE k.edit_id = ? ORDER BY k.ordinal", [edit_id]).fetchall()]

    def key_owners(self, first_key: int = 0) -> list[tuple[int, str]]:
        """(key id, edit id) of every key from `first_key` on, in key id order."""
        return [tuple(r) for r in self._execute(
            "SELECT key_id, edit_id FROM edit_keys WHERE key_id >= ? ORDER BY key_id", [first_key]).fetchall()]

    def key_vectors(self, first: int, end: int) -> list[tuple[int, bytes]]:
        return [tuple(r) for r in self._execute(
            "SELECT key_id, vector FROM key_vectors WHERE key_id >= ? AND key_id < ?", [first, end]).fetchall()]

    def count(self, table: str) -> int:
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        return self._execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    # --- trees ------------------------------------------------------------------------------------
    def tree(self, tree_id: str) -> TreeDelta | None:
        row = self._execute("SELECT base_id, level, tree_sum, n_active, n_tombstones FROM trees WHERE tree_id = ?", [tree_id]).fetchone()
        if row is None:
            return None
        members = {e: state_out(s) for e, s in self._execute(
            "SELECT edit_id, state FROM tree_members WHERE tree_id = ?", [tree_id]).fetchall()}
        return TreeDelta(tree_id, row[0], int(row[1]), TreeSummary(tree_id, int(row[2], 16), int(row[3]), int(row[4])), members)

    def insert_trees(self, trees: list[TreeDelta]) -> None:
        self._insert("trees", [[t.tree_id, t.base_id, t.level, f"{t.summary.tree_sum:064x}", t.summary.n_active,
                                        t.summary.n_tombstones] for t in trees])
        self._insert("tree_members", [[t.tree_id, e, state_in(s)] for t in trees for e, s in t.members.items()])

    # --- commits ----------------------------------------------------------------------------------
    def next_seq(self) -> int:
        return self._execute("SELECT coalesce(max(seq), -1) + 1 FROM commits").fetchone()[0]

    def insert_commits(self, commits: list[tuple[Commit, Changes]]) -> None:
        self._insert("commits", [[c.commit_id, c.seq, c.parent_id, c.tree_id, c.tree_sum, c.n_active, c.author, c.time,
                                          c.op, c.message, c.reason, c.format] for c, _ in commits], COMMIT_COLUMNS)
        self._insert("commit_parents", [[c.commit_id, i, p] for c, _ in commits for i, p in enumerate(c.parents)])
        self._insert("commit_changes", [[c.commit_id, c.seq, e, s == "active", state_in(s)] for c, changes in commits
                                                for e, s in changes], "commit_id, seq, edit_id, active, state")

    def _commits_from_rows(self, rows: list[tuple]) -> list[Commit]:
        if not rows:
            return []
        ids = [r[0] for r in rows]
        parents = self._parents_of(ids)
        return [Commit(r[0], r[1], parents.get(r[0], ()), r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11]) for r in rows]

    def _parents_of(self, commit_ids: list[str]) -> dict[str, tuple[str, ...]]:
        missing = [c for c in commit_ids if c not in self._parents_cache]
        for start in range(0, len(missing), _CHUNK):
            chunk = missing[start : start + _CHUNK]
            found: dict[str, list[str]] = {c: [] for c in chunk}
            for commit_id, parent in self._execute(
                f"SELECT commit_id, parent_id FROM commit_parents WHERE commit_id IN ({', '.join('?' * len(chunk))}) ORDER BY position",
                chunk).fetchall():
                found[commit_id].append(parent)
            self._parents_cache.update({c: tuple(p) for c, p in found.items()})
        return {c: self._parents_cache[c] for c in commit_ids}

    def commit(self, commit_id: str) -> Commit | None:
        found = self._commits_from_rows(self._execute(f"SELECT {COMMIT_COLUMNS} FROM commits WHERE commit_id = ?", [commit_id]).fetchall())
        return found[0] if found else None

    def commits(self, commit_ids: Iterable[str]) -> dict[str, Commit]:
        ids = list(dict.fromkeys(commit_ids))
        out: dict[str, Commit] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            rows = self._execute(f"SELECT {COMMIT_COLUMNS} FROM commits WHERE commit_id IN ({', '.join('?' * len(chunk))})", chunk).fetchall()
            out.update({c.commit_id: c for c in self._commits_from_rows(rows)})
        return out

    def commits_with_prefix(self, prefix: str, limit: int = 2) -> list[str]:
        return [r[0] for r in self._execute("SELECT commit_id FROM commits WHERE starts_with(commit_id, ?) LIMIT ?", [prefix, limit]).fetchall()]

    def all_commits(self) -> list[Commit]:
        """Every commit in write order, in two queries (verify, audit, graph walks)."""
        parents = self.parent_map()
        rows = self._execute(f"SELECT {COMMIT_COLUMNS} FROM commits ORDER BY seq").fetchall()
        return [Commit(r[0], r[1], parents.get(r[0], ()), r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11]) for r in rows]

    def commits_since(self, moment: datetime) -> list[Commit]:
        rows = self._execute(f"SELECT {COMMIT_COLUMNS} FROM commits WHERE time >= ? ORDER BY seq", [moment]).fetchall()
        return self._commits_from_rows(rows)

    def first_commit_id(self) -> str | None:
        row = self._execute("SELECT commit_id FROM commits WHERE seq = 0").fetchone()
        return None if row is None else row[0]

    def parent_map(self) -> dict[str, tuple[str, ...]]:
        found: dict[str, list[str]] = {r[0]: [] for r in self._execute("SELECT commit_id FROM commits").fetchall()}
        for commit_id, parent in self._execute("SELECT commit_id, parent_id FROM commit_parents ORDER BY commit_id, position").fetchall():
            found.setdefault(commit_id, []).append(parent)
        parents = {c: tuple(p) for c, p in found.items()}
        self._parents_cache.update(parents)
        return parents

    def first_parent_ancestor(self, commit_id: str, steps: int) -> str | None:
        """The commit `steps` first parents back (None past the root): one recursive query for a
        short walk, one scan of the parent table for a long one."""
        if steps > 256:
            parents = self.parent_map()
            for _ in range(steps):
                found = parents.get(commit_id)
                if not found:
                    return None
                commit_id = found[0]
            return commit_id
        row = self._execute(
            """WITH RECURSIVE chain(commit_id, depth) AS (
                   SELECT ?::VARCHAR, 0
                   UNION ALL
                   SELECT p.parent_id, c.depth + 1 FROM chain c JOIN commit_parents p ON p.commit_id = c.commit_id AND p.position = 0
                   WHERE c.depth < ?)
               SELECT commit_id FROM chain WHERE depth = ?""", [commit_id, steps, steps]).fetchone()
        return None if row is None else row[0]

    def recent_ancestors(self, commit_id: str, limit: int) -> list[Commit]:
        """The `limit` newest (by write order) commits reachable from `commit_id`. Each of them is
        within `limit` parent steps of it (every commit on the way is newer and also reachable),
        so one bounded recursive query finds them all."""
        rows = self._execute(
            f"""WITH RECURSIVE reach(commit_id, depth) AS (
                    SELECT ?::VARCHAR, 1
                    UNION
                    SELECT p.parent_id, r.depth + 1 FROM reach r JOIN commit_parents p ON p.commit_id = r.commit_id
                    WHERE r.depth < ?)
                SELECT DISTINCT {', '.join('c.' + c for c in COMMIT_COLUMNS.split(', '))}
                FROM commits c JOIN reach USING (commit_id) ORDER BY c.seq DESC LIMIT ?""", [commit_id, limit, limit]).fetchall()
        return self._commits_from_rows(rows)

    def changes(self, commit_id: str) -> Changes:
        return [(e, state_out(s)) for e, s in self._execute(
            "SELECT edit_id, state FROM commit_changes WHERE commit_id = ? ORDER BY rowid", [commit_id]).fetchall()]

    def all_changes(self) -> dict[str, Changes]:
        out: dict[str, Changes] = {}
        for commit_id, edit_id, state in self._execute("SELECT commit_id, edit_id, state FROM commit_changes ORDER BY seq, rowid").fetchall():
            out.setdefault(commit_id, []).append((edit_id, state_out(state)))
        return out

    def changes_of_edits(self, edit_ids: Iterable[str]) -> list[tuple[str, str, State]]:
        """(commit id, edit id, state) of every change to these edits, in write order."""
        ids = list(dict.fromkeys(edit_ids))
        rows: list[tuple[int, str, str, State]] = []
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            rows.extend((seq, c, e, state_out(s)) for seq, c, e, s in self._execute(
                f"SELECT seq, commit_id, edit_id, state FROM commit_changes WHERE edit_id IN ({', '.join('?' * len(chunk))})", chunk).fetchall())
        rows.sort(key=lambda r: r[0])
        return [(c, e, s) for _, c, e, s in rows]

    # --- refs -------------------------------------------------------------------------------------
    def ref(self, name: str) -> tuple[str, str] | None:
        row = self._execute("SELECT kind, commit_id FROM refs WHERE name = ?", [name]).fetchone()
        return None if row is None else (row[0], row[1])

    def refs(self) -> list[tuple[str, str, str]]:
        return [tuple(r) for r in self._execute("SELECT name, kind, commit_id FROM refs ORDER BY kind, name").fetchall()]

    def registry_id(self) -> str:
        """This registry's identity in its ref log chain and checkpoints: the id of its init
        commit (the root of its history; it hashes who made it, when and on what)."""
        if self._registry_id is None:
            found = self.first_commit_id()
            if found is None:
                raise RuntimeError("the registry has no init commit (its identity)")
            self._registry_id = found
        return self._registry_id

    def _reflog_tail(self) -> tuple[int, str | None]:
        """(next entry id, the last entry's hash) for appending to the chain."""
        row = self._execute("SELECT id, entry_hash FROM reflog ORDER BY id DESC LIMIT 1").fetchone()
        return (0, None) if row is None else (row[0] + 1, row[1])

    def _append_reflog(self, entries: list[tuple[str, str, str | None, str | None, str, datetime, str]]) -> None:
        """Ref log rows (ref, kind, old, new, actor, time, reason), chained onto the last entry."""
        from registry.model import reflog_entry_hash

        registry_id = self.registry_id()
        next_id, prev = self._reflog_tail()
        rows = []
        for offset, (ref, kind, old, new, actor, moment, reason) in enumerate(entries):
            entry_hash = reflog_entry_hash(registry_id, prev, next_id + offset, ref, kind, old, new, actor, moment, reason)
            rows.append([next_id + offset, ref, old, new, actor, moment, reason, kind, prev, entry_hash])
            prev = entry_hash
        self._insert("reflog", rows, REFLOG_COLUMNS)

    def move_ref(self, name: str, kind: str, new: str | None, expected: str | None, actor: str, reason: str, moment: datetime) -> None:
        """Compare-and-swap: move `name` from `expected` (None: it must not exist) to `new`
        (None: delete it), with its ref log entry chained onto the last one; the caller holds
        the transaction."""
        current = self.ref(name)
        if (current[1] if current else None) != expected:
            raise RefMoved(f"{name} moved to {current[1][:12] if current else 'nothing'} (expected {expected[:12] if expected else 'nothing'})")
        if new is None:
            self._execute("DELETE FROM refs WHERE name = ?", [name])
        elif current is None:
            self._execute("INSERT INTO refs VALUES (?, ?, ?)", [name, kind, new])
        else:
            self._execute("UPDATE refs SET commit_id = ? WHERE name = ?", [new, name])
        self._append_reflog([(name, current[0] if current else kind, expected, new, actor, moment, reason)])

    def move_ref_many(self, name: str, kind: str, moves: list[tuple[str | None, str, str, datetime, str]]) -> None:
        """Many consecutive moves of one ref (bulk loading): (old, new, actor, time, reason) each."""
        if not moves:
            return
        current = self.ref(name)
        if (current[1] if current else None) != moves[0][0]:
            raise RefMoved(f"{name} moved")
        if current is None:
            self._execute("INSERT INTO refs VALUES (?, ?, ?)", [name, kind, moves[-1][1]])
        else:
            self._execute("UPDATE refs SET commit_id = ? WHERE name = ?", [moves[-1][1], name])
        kind = current[0] if current else kind
        self._append_reflog([(name, kind, old, new, actor, moment, reason) for old, new, actor, moment, reason in moves])

    def ref_at(self, name: str, moment: datetime) -> str | None:
        row = self._execute(
            "SELECT new_commit FROM reflog WHERE ref = ? AND time <= ? ORDER BY time DESC, id DESC LIMIT 1", [name, moment]).fetchone()
        return None if row is None else row[0]

    def reflog(self, name: str | None = None) -> list[RefEntry]:
        sql = f"SELECT {REFLOG_COLUMNS} FROM reflog"
        rows = self._execute(sql + (" WHERE ref = ? ORDER BY id" if name else " ORDER BY id"), [name] if name else []).fetchall()
        return [RefEntry(*r) for r in rows]

    def reflog_head(self) -> tuple[int, str | None]:
        """(number of ref log entries, the newest entry's stored hash): what a checkpoint records."""
        count = self._execute("SELECT count(*) FROM reflog").fetchone()[0]
        return count, self._reflog_tail()[1]

    def last_reflog_id(self) -> int | None:
        """The newest ref log entry's id: it changes with every ref move (a cheap change token)."""
        return self._execute("SELECT max(id) FROM reflog").fetchone()[0]

    def ref_time(self, name: str, commit_id: str) -> datetime | None:
        row = self._execute("SELECT min(time) FROM reflog WHERE ref = ? AND new_commit = ?", [name, commit_id]).fetchone()
        return row[0] if row else None

    # --- governance -------------------------------------------------------------------------------
    def protection(self, branch: str) -> int:
        row = self._execute("SELECT reviews FROM protections WHERE branch = ? ORDER BY id DESC LIMIT 1", [branch]).fetchone()
        return int(row[0]) if row else 0

    def set_protection(self, branch: str, reviews: int, actor: str, moment: datetime, reason: str | None) -> None:
        next_id = self._execute("SELECT coalesce(max(id), -1) + 1 FROM protections").fetchone()[0]
        self._execute("INSERT INTO protections VALUES (?, ?, ?, ?, ?, ?)", [next_id, branch, reviews, actor, moment, reason])

    def protections(self) -> list[dict[str, Any]]:
        cursor = self._execute("SELECT id, branch, reviews, actor, time, reason FROM protections ORDER BY id")
        return [dict(zip(("id", "branch", "reviews", "actor", "time", "reason"), r)) for r in cursor.fetchall()]

    def insert_review(self, review: Review) -> int:
        next_id = self._execute("SELECT coalesce(max(id), -1) + 1 FROM reviews").fetchone()[0]
        self._execute("INSERT INTO reviews VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [next_id, review.source, review.source_commit, review.target,
                                                                                review.author, review.verdict, review.reason, review.time])
        return next_id

    def reviews(self) -> list[Review]:
        return [Review(*r) for r in self._execute(
            "SELECT id, source, source_commit, target, author, verdict, reason, time FROM reviews ORDER BY id").fetchall()]

    def insert_scanned(self, table: str, columns: list[str], rows: list[tuple]) -> int:
        """Rows exactly as another catalog's `scan` returned them (`sola migrate-storage`),
        in that order; an engine's own ordering column (`rowid`) is left to this engine."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        keep = [i for i, c in enumerate(columns) if c != "rowid"]
        if rows:
            self._insert(table, [[row[i] for i in keep] for row in rows], ", ".join(columns[i] for i in keep))
        return len(rows)

    # --- read-only views for `sola snapshot --where` and integrity -------------------------------
    def scan(self, table: str) -> tuple[list[str], list[tuple]]:
        """Every row of a table, for `sola verify` (which must see what is stored, not what the API returns)."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        order = {"commit_changes": " ORDER BY seq, rowid", "edit_keys": " ORDER BY key_id", "reflog": " ORDER BY id",
                 "commits": " ORDER BY seq", "commit_parents": " ORDER BY commit_id, position"}.get(table, "")
        cursor = self._execute(f"SELECT * FROM {table}{order}")
        return [d[0] for d in cursor.description], cursor.fetchall()


__all__ = ["SQLCatalog", "COMMIT_COLUMNS", "TABLES"]
