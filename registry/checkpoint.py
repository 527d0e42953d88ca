"""Checkpoints: a small statement of a registry's history so far, kept out of the writers' reach.

A checkpoint is the canonical JSON of

    {"format": "sola.checkpoint/1", "registry": <id of the init commit>,
     "length": <ref log entries>, "head": <entry_hash of the newest>, "time": <when taken>}

Every ref log entry hashes the entry before it (registry/model.py), every entry names commits,
every commit id hashes its parents, tree and changes, and every edit id hashes its provenance.
So a registry whose ref log entry number `length` still hashes to `head` (the chain recomputed
from the first entry) has every ref move up to it, and everything those moves reached, exactly
as it was when the checkpoint was taken: `sola verify --checkpoint FILE` checks that. Removing
history (truncating the log to before the checkpoint, or dropping the newest commit and moving
the branch back) or rewriting it (changing an entry's time or actor and recomputing every hash
after it) fails that check, although the registry on its own looks consistent: without a copy
held elsewhere, anyone who can write the files can recompute a chain, since it has no secret.

`--sign KEY` adds an Ed25519 signature (the `cryptography` package) over the canonical JSON of
the statement without its `signature` field, so a checkpoint published by a governance team
proves who took it.

A witness file receives one checkpoint line after every write (`Registry.transaction` calls
`open_witness` before and `WitnessAppend.append` after the catalog commits). It is configured
per process (`sola --witness PATH` or `SOLA_WITNESS`), not in the registry: whoever deploys the
writers decides where their checkpoints go, and a writer who can edit `registry.duckdb` cannot
redirect them by editing a row. See docs/integrity.md.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from registry.model import RegistryError, iso, parse_time, utcnow
from registry.objects import canonical_json

if TYPE_CHECKING:
    from registry.catalog import Catalog

FORMAT = "sola.checkpoint/1"
SIGNATURE_ALGORITHM = "ed25519"
WITNESS_ENV = "SOLA_WITNESS"
_FIELDS = ("format", "registry", "length", "head", "time")


# --- statements ---------------------------------------------------------------------------------
def take(catalog: "Catalog") -> dict[str, Any]:
    """The checkpoint of a registry's ref log as it is now."""
    length, head = catalog.reflog_head()
    return {"format": FORMAT, "registry": catalog.registry_id(), "length": length, "head": head, "time": iso(utcnow())}


def dumps(checkpoint: dict[str, Any]) -> str:
    """A checkpoint as one line of canonical JSON (what `sola checkpoint` prints and a witness holds)."""
    return canonical_json(checkpoint).decode("utf-8")


def signed_message(checkpoint: dict[str, Any]) -> bytes:
    """The bytes a signature covers: the canonical JSON of the checkpoint without `signature`."""
    return canonical_json({k: v for k, v in checkpoint.items() if k != "signature"})


def problems_of_statement(checkpoint: Any) -> str | None:
    """Why a parsed document is not a checkpoint statement, or None."""
    if not isinstance(checkpoint, dict):
        return "not a JSON object"
    if checkpoint.get("format") != FORMAT:
        return f"not a sola checkpoint (format {checkpoint.get('format')!r}, expected {FORMAT!r})"
    missing = [name for name in _FIELDS if name not in checkpoint]
    if missing:
        return f"lacks {', '.join(missing)}"
    length = checkpoint["length"]
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        return "its length is not a count"
    if not isinstance(checkpoint["registry"], str) or not (checkpoint["head"] is None or isinstance(checkpoint["head"], str)):
        return "its registry or head is not a hash"
    try:
        parse_time(checkpoint["time"])
    except RegistryError:
        return "its time is not an ISO 8601 time"
    return None


def parse(text: str) -> list[tuple[int, Any, str | None]]:
    """(line, document, why it cannot be read) of each checkpoint in a file: one JSON document
    (`sola checkpoint > FILE`, pretty-printed or not) or one per line (a witness file)."""
    try:
        return [(1, json.loads(text), None)]
    except json.JSONDecodeError:
        pass
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            found.append((number, json.loads(line), None))
        except json.JSONDecodeError as error:
            found.append((number, None, f"not JSON ({error.msg}; a damaged or partly written line?)"))
    return found


def read_file(path: Path) -> list[tuple[int, Any, str | None]]:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise RegistryError(f"no checkpoint file at {path}") from None
    except IsADirectoryError:
        raise RegistryError(f"{path} is a directory, not a checkpoint file") from None
    try:
        return parse(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise RegistryError(f"{path} is not a checkpoint file (not UTF-8 text)") from None


def checkpoints_in(path: Path) -> list[tuple[str, Any]]:
    """(label, document) of each checkpoint in a file given to `sola verify --checkpoint`."""
    found = read_file(path)
    for number, _, why in found:
        if why is not None:
            raise RegistryError(f"checkpoint file {path} line {number}: {why}")
    if not found:
        raise RegistryError(f"checkpoint file {path} is empty")
    return [(f"checkpoint {path}" + (f" line {number}" if len(found) > 1 else ""), document) for number, document, _ in found]


def check(checkpoint: Any, registry_id: str, chain: list[tuple[int, str]], public_key: bytes | None = None) -> list[str]:
    """Why the registry whose recomputed ref log chain is `chain` ((entry id, hash) in id order)
    does not extend `checkpoint` (empty: it does). With `public_key`, the checkpoint must also
    carry a valid signature by that key; a signed checkpoint is always checked against the key
    it names."""
    why = problems_of_statement(checkpoint)
    if why:
        return [why]
    problems = []
    if "signature" in checkpoint or public_key is not None:
        problem = signature_problem(checkpoint, public_key)
        if problem:
            problems.append(problem)
    if checkpoint["registry"] != registry_id:
        return problems + [f"is of another registry ({checkpoint['registry'][:12]}), not this one ({registry_id[:12]})"]
    length, taken = checkpoint["length"], checkpoint["time"]
    if length > len(chain):
        problems.append(f"covers {length} ref log entries but the registry now has only {len(chain)}: "
                        f"history was truncated (entries or commits removed) since {taken}")
    elif length == 0:
        if checkpoint["head"] is not None:
            problems.append("claims an empty ref log with a head hash")
    elif chain[length - 1][1] != checkpoint["head"]:
        problems.append(f"ref log entry number {length} (id {chain[length - 1][0]}) does not hash to the checkpoint's head: "
                        f"history at or before it was changed or removed since {taken}")
    return problems


# --- signatures ---------------------------------------------------------------------------------
def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - a declared dependency
        raise RegistryError("signing checkpoints needs the `cryptography` package (pip install cryptography)") from None
    return ed25519


def _raw_public(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_private_key(path: Path) -> Any:
    """An Ed25519 private key from a PEM file (`sola checkpoint --new-key` or `openssl genpkey -algorithm ed25519`)."""
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise RegistryError(f"no key file at {path}") from None
    except (ValueError, TypeError):
        raise RegistryError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise RegistryError(f"{path} is not an Ed25519 key (make one with `sola checkpoint --new-key FILE`)")
    return key


def load_public_key(path: Path) -> bytes:
    """The raw 32-byte Ed25519 public key from a PEM file (or a file holding its 64 hex digits)."""
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise RegistryError(f"no public key file at {path}") from None
    text = data.decode("utf-8", "replace").strip()
    if len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text):
        return bytes.fromhex(text)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise RegistryError(f"{path} is not a PEM public key (nor 64 hex digits)") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise RegistryError(f"{path} is not an Ed25519 public key")
    return _raw_public(key)


def new_key(path: Path) -> dict[str, str]:
    """Write a new Ed25519 private key to `path` (PEM, mode 0600) and its public key to
    `path`.pub; neither may exist yet."""
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization

    path = Path(path)
    public_path = path.with_name(path.name + ".pub")
    for existing in (path, public_path):
        if existing.exists():
            raise RegistryError(f"{existing} already exists (a key is never overwritten)")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem)
    return {"private_key": str(path), "public_key": str(public_path), "public_key_hex": _raw_public(key.public_key()).hex()}


def sign(checkpoint: dict[str, Any], key_path: Path) -> dict[str, Any]:
    key = load_private_key(key_path)
    statement = {k: v for k, v in checkpoint.items() if k != "signature"}
    value = key.sign(signed_message(statement))
    return dict(statement, signature={"algorithm": SIGNATURE_ALGORITHM, "public_key": _raw_public(key.public_key()).hex(),
                                      "value": value.hex()})


def signature_problem(checkpoint: dict[str, Any], public_key: bytes | None) -> str | None:
    """Why the checkpoint's signature does not hold (None: it holds). Checked against
    `public_key` when given, else against the key the signature names."""
    signature = checkpoint.get("signature")
    if signature is None:
        return "is not signed (a public key was given)"
    if not isinstance(signature, dict) or signature.get("algorithm") != SIGNATURE_ALGORITHM:
        return f"has a signature that is not {SIGNATURE_ALGORITHM}"
    try:
        named = bytes.fromhex(signature.get("public_key", ""))
        value = bytes.fromhex(signature.get("value", ""))
    except (TypeError, ValueError):
        return "has a damaged signature (not hex)"
    if public_key is not None and named != public_key:
        return "is signed by another key than the one given"
    ed25519 = _crypto()
    from cryptography.exceptions import InvalidSignature

    try:
        ed25519.Ed25519PublicKey.from_public_bytes(named).verify(value, signed_message(checkpoint))
    except (InvalidSignature, ValueError):
        return "has a signature that does not match its content (tampered checkpoint or signature)"
    return None


# --- the witness file -----------------------------------------------------------------------------
_override: list[Path | None] = []


@contextmanager
def witness_for(path: Path | None) -> Iterator[None]:
    """Use this witness file (None: none, whatever SOLA_WITNESS says) in this process for the
    duration (`sola --witness PATH`)."""
    _override.append(path)
    try:
        yield
    finally:
        _override.pop()


def witness_path() -> Path | None:
    """The witness file writes append to: `sola --witness`, else $SOLA_WITNESS, else none."""
    if _override:
        return _override[-1]
    value = os.environ.get(WITNESS_ENV, "").strip()
    return Path(value) if value else None


class WitnessAppend:
    """The witness file, opened for appending before a write's transaction (so an unwritable
    witness refuses the write before anything is recorded) and given the checkpoint after it
    commits. A kill between the two leaves the write unwitnessed until the next write, whose
    checkpoint covers it (checkpoints cover the whole log before them)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.fd: int | None = None
        if path is not None:
            try:
                self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as error:
                raise RegistryError(f"cannot open the witness file {path} for appending ({error.strerror}); "
                                    f"nothing was written") from None

    def append(self, catalog: "Catalog") -> None:
        if self.fd is None:
            return
        line = (dumps(take(catalog)) + "\n").encode("utf-8")
        try:
            os.write(self.fd, line)  # one write of one short line: O_APPEND keeps concurrent lines whole
            os.fsync(self.fd)
        except OSError as error:
            raise RegistryError(f"the write was committed but its checkpoint could not be appended to the witness file "
                                f"{self.path} ({error.strerror}); append one with `sola checkpoint >> {self.path}`") from None
        finally:
            self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def open_witness() -> WitnessAppend:
    return WitnessAppend(witness_path())


__all__ = ["FORMAT", "take", "dumps", "parse", "read_file", "checkpoints_in", "check", "sign", "new_key", "load_public_key",
           "signature_problem", "witness_for", "witness_path", "open_witness", "WitnessAppend"]
