"""Loading an exported snapshot directory into a routed model, with no registry involved.

Each edit's tensors are re-serialised and hashed against the manifest, so a snapshot that
was altered after export is refused rather than silently routed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save

from sola.config import RoutingConfig
from sola.layer import EditBank, ExactKeySearch
from sola.modelio import load_for_inference
from sola.routed import RoutedModel
from sola.workspace import Generation


SNAPSHOT_FORMATS = ("sola.snapshot/1", "sola.snapshot/2")  # 1: before tombstones (no `revoked`)


class SnapshotError(ValueError):
    """The snapshot directory is missing, malformed or does not match its manifest."""


class Snapshot:
    def __init__(self, manifest: dict, routed: RoutedModel) -> None:
        self.manifest = manifest
        self.routed = routed

    def generate(self, prompts: list[str], max_new_tokens: int = 16) -> list[Generation]:
        texts, routing = self.routed.generate(prompts, max_new_tokens=max_new_tokens)
        return Generation.batch(prompts, texts, routing, self.manifest["commit"])


def _keys_sha256(keys: np.ndarray) -> str:
    """`keys_sha256` as the registry computes it: the key rows as little-endian float32 bytes."""
    return hashlib.sha256(np.ascontiguousarray(keys, dtype="<f4").tobytes()).hexdigest()


def _edit_matches_manifest(lora_a: np.ndarray, lora_b: np.ndarray, keys: np.ndarray, entry: dict) -> bool:
    """Recompute an edit's content hashes from the stacked arrays (docs/format.md): the tensors
    object is the safetensors file of its LoRA factors, plus its keys when the manifest entry
    has no `keys_sha256` (edits stored before keys moved to the registry's `key_vectors`)."""
    tensors = {"lora_A": lora_a, "lora_B": lora_b}
    if "keys_sha256" in entry:
        if _keys_sha256(keys) != entry["keys_sha256"]:
            return False
    else:
        tensors["keys"] = keys
    return hashlib.sha256(save({k: np.ascontiguousarray(v) for k, v in tensors.items()})).hexdigest() == entry["tensors_sha256"]


def load_snapshot(directory: Path) -> Snapshot:
    directory = Path(directory)
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        arrays = load_file(str(directory / "snapshot.safetensors"))
    except (OSError, json.JSONDecodeError, Exception) as error:  # safetensors raises its own error types
        raise SnapshotError(f"not a sola snapshot directory: {directory} ({type(error).__name__})") from None
    if manifest.get("format") not in SNAPSHOT_FORMATS:
        raise SnapshotError(f"unsupported snapshot format {manifest.get('format')!r}")
    edits, revoked = manifest["edits"], manifest.get("revoked", [])
    key_edit = arrays["key_edit"]
    for position, entry in enumerate(edits):
        rows = np.flatnonzero(key_edit == position)
        if not _edit_matches_manifest(arrays["lora_A"][position], arrays["lora_B"][position], arrays["keys"][rows], entry):
            raise SnapshotError(f"snapshot tensors of edit {entry['edit'][:12]} do not match the manifest")
    revoked_keys = arrays.get("revoked_keys", np.zeros((0, arrays["keys"].shape[1]), np.float32))
    revoked_key_edit = arrays.get("revoked_key_edit", np.zeros(0, np.int64))
    for position, entry in enumerate(revoked):
        if _keys_sha256(revoked_keys[revoked_key_edit == position]) != entry["keys_sha256"]:
            raise SnapshotError(f"snapshot keys of revoked edit {entry['edit'][:12]} do not match the manifest")
    base_model = manifest["base_model"]
    # a snapshot only generates: the inference core where the family has one (sola.modelio)
    model, tokenizer, _ = load_for_inference(base_model["spec"], expected_sha256=base_model["sha256"])
    routed = RoutedModel(model, tokenizer, RoutingConfig.from_record(manifest["routing"]))
    ids = [entry["edit"] for entry in edits]
    revoked_ids = [entry["edit"] for entry in revoked]
    lora_a, lora_b = torch.from_numpy(arrays["lora_A"].copy()), torch.from_numpy(arrays["lora_B"].copy())
    owners = [ids[int(p)] for p in key_edit] + [revoked_ids[int(p)] for p in revoked_key_edit]
    search = ExactKeySearch(np.concatenate([arrays["keys"], revoked_keys]), np.arange(len(owners), dtype=np.int64))
    index_of = {edit: i for i, edit in enumerate(ids)}
    routed.set_bank(EditBank(search, dict(enumerate(owners)),
                             lambda edit: (lora_a[index_of[edit]], lora_b[index_of[edit]]), frozenset(revoked_ids),
                             {entry["edit"]: (entry["prompt"], entry["target"]) for entry in edits}))
    return Snapshot(manifest, routed)
