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


@dataclass(frozen=True)
class EditRequest:
    prompt: str
    target: str
    rephrases: tuple[str, ...] = ()
    subject: str | None = None
    locality_prompt: str | None = None
    locality_answer: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def validated(self) -> "EditRequest":
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise RequestError("empty prompt")
        if not isinstance(self.target, str) or not self.target.strip():
            raise RequestError("empty target")
        for text in self.rephrases:
            if not isinstance(text, str) or not text.strip():
                raise RequestError("empty rephrase prompt")
        return self


def _as_list(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise RequestError("rephrase_prompt must be a string or a list of strings")


def request_from_record(record: dict[str, Any]) -> EditRequest:
    """Map a record in the common editing schema, CounterFact or zsRE field names, to a request."""
    if not isinstance(record, dict):
        raise RequestError("record is not a JSON object")
    if "src" in record and "alt" in record:  # zsRE (MEND split)
        loc_answer = record.get("loc_ans")
        return EditRequest(
            prompt=record["src"],
            target=record["alt"],
            rephrases=_as_list(record.get("rephrase")),
            subject=record.get("subject"),
            locality_prompt=record.get("loc"),
            locality_answer=loc_answer[0] if isinstance(loc_answer, list) else loc_answer,
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
        except (RequestError, TypeError) as error:
            raise RequestError(f"{path}:{number}: {error}") from None
    if not requests:
        raise RequestError(f"{path}: no edit requests")
    return requests


def read_benchmark(path: Path, limit: int | None = None) -> tuple[str, list[EditRequest]]:
    """A CounterFact or zsRE file (JSON list or JSONL); returns (format name, requests)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        records = json.loads(text)
    except json.JSONDecodeError:
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
