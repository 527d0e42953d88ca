"""`sola snapshot --where`: a boolean SQL expression over an edit set, run where it can harm nothing.

The expression is evaluated by DuckDB (the registry's query engine) in a private in-memory
database that holds only a copy of the candidate edits' documented columns, with file access
disabled and the configuration locked, after checking that it parses as one plain expression
(no statement separator, no subquery, no table function) of boolean type. So it can neither
write nor read anything but those rows, whatever it says.
"""

from __future__ import annotations

import json
from typing import Any

from registry.model import RegistryError

COLUMNS = ("edit_id", "prompt", "target", "subject", "author", "reason", "source", "created_at", "n_keys")
MAX_EXPRESSION = 2000
_FORBIDDEN_NODES = ('"SUBQUERY"', '"TABLE_FUNCTION"', '"WINDOW', '"PREPARE', '"EXPLAIN')


def select_where(rows: list[dict[str, Any]], expression: str) -> set[str]:
    """Edit ids of `rows` for which `expression` is true."""
    import duckdb

    if not isinstance(expression, str) or not expression.strip():
        raise RegistryError("--where needs a boolean SQL expression over the edits columns")
    if len(expression) > MAX_EXPRESSION or ";" in expression or "\x00" in expression:
        raise RegistryError("--where must be one SQL expression (no ';', at most 2000 characters)")
    sandbox = duckdb.connect(":memory:", config={"enable_external_access": False})
    try:
        sandbox.execute("SET lock_configuration = true")
        sandbox.execute("CREATE TABLE edits (edit_id VARCHAR, prompt VARCHAR, target VARCHAR, subject VARCHAR, author VARCHAR, "
                        "reason VARCHAR, source VARCHAR, created_at TIMESTAMPTZ, n_keys INTEGER)")
        if rows:
            sandbox.executemany("INSERT INTO edits VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [[r.get(c) for c in COLUMNS] for r in rows])
        statement = f"SELECT edit_id FROM edits WHERE ({expression})"
        parsed = json.loads(sandbox.execute("SELECT json_serialize_sql(?)", [statement]).fetchone()[0])
        if parsed.get("error") or len(parsed.get("statements", [])) != 1:
            raise RegistryError(f"--where is not a SQL expression: {str(parsed.get('error_message', ''))[:120]}")
        text = json.dumps(parsed)
        if any(node in text for node in _FORBIDDEN_NODES) or '"BASE_TABLE"' in text.replace(
                '"from_table": {"type": "BASE_TABLE"', "", 1):
            raise RegistryError("--where may use the edits columns, literals, operators and functions only (no subqueries or tables)")
        try:
            kind = sandbox.execute(f"DESCRIBE SELECT ({expression}) AS condition FROM edits").fetchone()[1]
        except duckdb.Error as error:
            raise RegistryError(f"--where: {str(error).splitlines()[0][:160]}") from None
        if kind != "BOOLEAN":
            raise RegistryError(f"--where must be a boolean expression, this one is {kind}")
        try:
            return {r[0] for r in sandbox.execute(statement).fetchall()}
        except duckdb.Error as error:
            raise RegistryError(f"--where: {str(error).splitlines()[0][:160]}") from None
    finally:
        sandbox.close()


__all__ = ["select_where", "COLUMNS"]
