"""Exports: a whole snapshot as a self-contained directory, or one edit as a PEFT LoRA adapter.

Snapshot directory (format `sola.snapshot/2`):
  manifest.json            base model identity, routing config, commit, tree, edits (id, hash, fact),
                           revoked (the tombstoned edits: id, fact, keys_sha256)
  snapshot.safetensors     lora_A (E, r, in), lora_B (E, out, r), keys (K, in), key_edit (K,) int64,
                           revoked_keys (T, in), revoked_key_edit (T,) int64 (position in `revoked`)
  provenance/<edit>.json   each edit's provenance document, byte-identical to the registry object
A tombstone needs only its keys (its inputs get the base model), so no LoRA factors are exported
for it. `sola.snapshot/1` (before tombstones) had no `revoked` entries.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save as save_safetensors

from registry.objects import canonical_json, write_atomically
from registry.store import Commit, Registry, RegistryError, iso, key_vector_blobs, keys_digest

SNAPSHOT_FORMAT = "sola.snapshot/2"


def _prepare_target(directory: Path) -> Path:
    directory = Path(directory).expanduser().resolve()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise RegistryError(f"export directory {directory} exists and is not empty")
    directory.parent.mkdir(parents=True, exist_ok=True)
    return directory


def _publish(staging: Path, directory: Path) -> None:
    """Move a finished staging directory into place so a half-written export is never visible."""
    if directory.exists():
        directory.rmdir()
    os.replace(staging, directory)


def export_snapshot(registry: Registry, commit: Commit, directory: Path) -> dict[str, Any]:
    directory = _prepare_target(directory)
    edit_ids = registry.active_edit_ids(commit)
    dim = registry.key_dim()
    rank = int(registry.routing["rank"])
    loras_a, loras_b, keys, key_edit, entries = [], [], [], [], []
    staging = Path(tempfile.mkdtemp(prefix=".sola-export-", dir=directory.parent))
    try:
        (staging / "provenance").mkdir()
        for position, edit_id in enumerate(edit_ids):
            row = registry.edit_row(edit_id)
            document = registry.objects.get(edit_id)
            provenance = json.loads(document)
            tensors = registry.edit_tensors(edit_id, provenance)
            loras_a.append(tensors["lora_A"])
            loras_b.append(tensors["lora_B"])
            keys.append(tensors["keys"])
            key_edit.extend([position] * len(tensors["keys"]))
            (staging / "provenance" / f"{edit_id}.json").write_bytes(document)
            entry = {"edit": edit_id, "tensors_sha256": row["tensors_sha256"], "prompt": row["prompt"],
                     "target": row["target"], "keys": int(len(tensors["keys"]))}
            keys_sha = provenance.get("keys_sha256")
            if keys_sha:  # keys kept outside the tensors object: their own digest
                entry["keys_sha256"] = keys_sha
            entries.append(entry)
        revoked_keys, revoked_key_edit, revoked_entries = [], [], []
        for position, edit_id in enumerate(sorted(registry.tombstoned_edit_ids(commit))):
            row = registry.edit_row(edit_id)
            edit_keys = registry.edit_keys(edit_id)
            revoked_keys.append(edit_keys)
            revoked_key_edit.extend([position] * len(edit_keys))
            revoked_entries.append({"edit": edit_id, "prompt": row["prompt"], "target": row["target"],
                                    "keys": int(len(edit_keys)), "keys_sha256": keys_digest(key_vector_blobs({"keys": edit_keys}))})
        out_features = loras_b[0].shape[0] if loras_b else 0
        arrays = {
            "lora_A": np.stack(loras_a) if loras_a else np.zeros((0, rank, dim), np.float32),
            "lora_B": np.stack(loras_b) if loras_b else np.zeros((0, out_features, rank), np.float32),
            "keys": np.concatenate(keys) if keys else np.zeros((0, dim), np.float32),
            "key_edit": np.array(key_edit, dtype=np.int64),
            "revoked_keys": np.concatenate(revoked_keys) if revoked_keys else np.zeros((0, dim), np.float32),
            "revoked_key_edit": np.array(revoked_key_edit, dtype=np.int64),
        }
        (staging / "snapshot.safetensors").write_bytes(save_safetensors(arrays))
        manifest = {
            "format": SNAPSHOT_FORMAT,
            "base_model": registry.base_model,
            "routing": registry.routing,
            "commit": commit.commit_id,
            "tree": commit.tree_id,
            "commit_time": iso(commit.time),
            "edits": entries,
            "revoked": revoked_entries,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        _publish(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"directory": str(directory), "commit": commit.commit_id, "tree": commit.tree_id, "edits": len(entries),
            "revoked": len(revoked_entries)}


def export_peft(registry: Registry, edit_id: str, directory: Path) -> dict[str, Any]:
    """One edit as a stock PEFT LoRA adapter; the routing key and provenance ride along as sidecars."""
    directory = _prepare_target(directory)
    from sola.arch import of_routing  # the one table of model-family facts (no torch)

    routing = registry.routing
    module_name = f"{routing['block_path']}.{routing['layer']}.{routing['module']}"
    tensors = registry.edit_tensors(edit_id)
    staging = Path(tempfile.mkdtemp(prefix=".sola-export-", dir=directory.parent))
    try:
        config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": int(routing["rank"]),
            "lora_alpha": float(routing["alpha"]),
            "lora_dropout": 0.0,
            "bias": "none",
            "target_modules": [module_name],
            "fan_in_fan_out": of_routing(routing).fan_in_fan_out,
            "base_model_name_or_path": registry.base_model["spec"],
            "inference_mode": True,
            "use_rslora": False,
            "use_dora": False,
        }
        (staging / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        prefix = f"base_model.model.{module_name}"
        adapter = {f"{prefix}.lora_A.weight": tensors["lora_A"], f"{prefix}.lora_B.weight": tensors["lora_B"]}
        (staging / "adapter_model.safetensors").write_bytes(save_safetensors(adapter))
        (staging / "sola_key.safetensors").write_bytes(save_safetensors({"keys": tensors["keys"]}))
        (staging / "sola_provenance.json").write_bytes(registry.objects.get(edit_id))
        (staging / "sola_routing.json").write_bytes(canonical_json({"routing": routing, "base_model": registry.base_model}))
        _publish(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"directory": str(directory), "edit": edit_id, "module": module_name}


__all__ = ["export_snapshot", "export_peft", "write_atomically"]
