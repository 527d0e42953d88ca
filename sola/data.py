"""Edit requests: from the CLI, from JSONL files, and from CounterFact / zsRE benchmark files.

A whole file is validated before anything is trained, and every problem names its line, so a
bad batch changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class RequestError(ValueError):
    """An edit request or edit file is malformed."""


# Longest text sola takes for one field of an edit (the server's limit for a prompt too); the
# model's context bounds prompt + target tokens further once it is loaded (sola.workspace).
MAX_TEXT_CHARS = 32_000
MAX_REPHRASES = 64
MAX_NOTE_CHARS = 4_000  # a reason or a source
MAX_AUTHOR_CHARS = 200


def check_text(name: str, value: object, optional: bool = False, limit: int = MAX_TEXT_CHARS) -> str | None:
    """`value` as a field of an edit: a non-empty string (or None when `optional`) of valid
    Unicode (no lone surrogates, which is what undecodable UTF-8 bytes in an argument become)
    and at most `limit` characters; anything else is a RequestError naming the field."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        kind = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object", type(None): "null"}.get(
            type(value), type(value).__name__)
        raise RequestError(f"{name} must be a string{' or null' if optional else ''}, not {kind}")
    if not value.strip():
        if optional:
            return value
        raise RequestError(f"empty {name}")
    if len(value) > limit:
        raise RequestError(f"{name} is {len(value)} characters long; the limit is {limit}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(f"{name} is not valid UTF-8 text") from None
    if "\x00" in value:
        raise RequestError(f"{name} contains a NUL character")
    return value


@dataclass(frozen=True)
class EditRequest:
    prompt: str
    target: str
    rephrases: tuple[str, ...] = ()
    subject: str | None = None
    locality_prompt: str | None = None
    locality_answer: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    subject_inferred: bool = False  # the subject was found in the prompt (sola.subjects), not given

    @property
    def names_subject(self) -> bool:
        """Whether the request has a subject at all (a blank one counts as none)."""
        return bool(self.subject and self.subject.strip())

    def validated(self) -> "EditRequest":
        """The request, once every field has the type and size sola stores (RequestError if not)."""
        check_text("prompt", self.prompt)
        check_text("target", self.target)
        if not isinstance(self.rephrases, (tuple, list)):
            raise RequestError("rephrases must be a list of strings")
        if len(self.rephrases) > MAX_REPHRASES:
            raise RequestError(f"{len(self.rephrases)} rephrases; the limit is {MAX_REPHRASES}")
        for text in self.rephrases:
            check_text("rephrase prompt", text)
        check_text("subject", self.subject, optional=True)
        check_text("locality prompt", self.locality_prompt, optional=True)
        check_text("locality answer", self.locality_answer, optional=True)
        return self


def check_notes(author: str | None, reason: str | None, source: str | None = None) -> None:
    """Refuse an author, reason or source sola would not store as given (before any work)."""
    check_text("author", author, optional=True, limit=MAX_AUTHOR_CHARS)
    check_text("reason", reason, optional=True, limit=MAX_NOTE_CHARS)
    check_text("source", source, optional=True, limit=MAX_NOTE_CHARS)


def _as_list(value: Any, name: str = "rephrase_prompt") -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise RequestError(f"{name} must be a string or a list of strings")


def request_from_record(record: dict[str, Any]) -> EditRequest:
    """Map a record in the common editing schema, CounterFact or zsRE field names, to a request."""
    if not isinstance(record, dict):
        raise RequestError("record is not a JSON object")
    if "src" in record and "alt" in record:  # zsRE (MEND split)
        loc_answer = record.get("loc_ans")
        return EditRequest(
            prompt=record["src"],
            target=record["alt"],
            rephrases=_as_list(record.get("rephrase"), "rephrase"),
            subject=record.get("subject"),
            locality_prompt=record.get("loc"),
            locality_answer=loc_answer[0] if isinstance(loc_answer, list) and loc_answer else loc_answer,
        ).validated()
    if "prompt" not in record or "target_new" not in record:
        missing = [f for f in ("prompt", "target_new") if f not in record]
        raise RequestError(f"missing field(s) {', '.join(missing)}")
    return EditRequest(
        prompt=record["prompt"],
        target=record["target_new"],
        rephrases=_as_list(record.get("rephrase_prompt")),
        subject=record.get("subject"),
        locality_prompt=record.get("locality_prompt"),
        locality_answer=record.get("locality_ground_truth"),
    ).validated()


def read_jsonl(path: Path) -> list[EditRequest]:
    """Parse and validate every line first; raise naming the first bad line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise RequestError(f"cannot read {path}: {error}") from None
    requests = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            requests.append(request_from_record(json.loads(line)))
        except json.JSONDecodeError as error:
            raise RequestError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        except RecursionError:
            raise RequestError(f"{path}:{number}: JSON nested too deeply") from None
        except (RequestError, TypeError) as error:
            raise RequestError(f"{path}:{number}: {error}") from None
    if not requests:
        raise RequestError(f"{path}: no edit requests")
    return requests


def read_benchmark(path: Path, limit: int | None = None) -> tuple[str, list[EditRequest]]:
    """A CounterFact or zsRE file (JSON list or JSONL); returns (format name, requests)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RequestError(f"cannot read {path}: {error}") from None
    try:
        records = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return "jsonl", read_jsonl(path)[:limit]
    if isinstance(records, dict):  # a JSONL file of one record
        return "jsonl", read_jsonl(path)[:limit]
    if not isinstance(records, list) or not records:
        raise RequestError(f"{path}: expected a non-empty JSON list of records")
    chosen = records[:limit] if limit else records
    zsre_records = sum(1 for record in chosen if isinstance(record, dict) and "src" in record)
    kind = "zsre" if zsre_records == len(chosen) else "counterfact" if zsre_records == 0 else "mixed"
    requests = []
    for index, record in enumerate(chosen):
        try:
            requests.append(request_from_record(record))
        except RequestError as error:
            raise RequestError(f"{path}: record {index}: {error}") from None
    return kind, requests
