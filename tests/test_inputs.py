"""Hard edges that need more than one command to show: what a refusal leaves behind, damaged
files, start-up caches. (tests/test_fuzz.py has the table of single bad commands.)"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from registry.store import Registry, RegistryError
from registry_helpers import add_edit, new_registry
from sola.cli import dumps, main

PROMPT = "The capital of France is"


class Sola:
    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, *args: str):
        return CliRunner().invoke(main, ["--registry", str(self.root), *args], catch_exceptions=False)

    def json(self, *args: str):
        result = self(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def error(self, *args: str) -> str:
        result = self(*args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error: "), result.output
        return lines[0]


def objects(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / "objects").rglob("*") if p.is_file())


@pytest.fixture
def tiny(tmp_path, tiny_dirs) -> Sola:
    cli = Sola(tmp_path / "reg")
    assert cli("init", "--model", str(tiny_dirs["llama"]), "--threshold", "0.001").exit_code == 0
    return cli


def test_init_keeps_what_the_directory_already_holds(tmp_path, tiny_dirs):
    root = tmp_path / "reg"
    (root / "cache").mkdir(parents=True)
    (root / "cache" / "notes.txt").write_text("mine")
    (root / "README").write_text("also mine")
    assert Sola(root)("init", "--model", str(tiny_dirs["llama"])).exit_code == 0
    assert (root / "cache" / "notes.txt").read_text() == "mine" and (root / "README").read_text() == "also mine"
    # a second init refuses before loading anything and leaves it all in place
    assert "already exists" in Sola(root).error("init", "--model", str(tmp_path / "no-such-model"))
    assert (root / "cache" / "notes.txt").read_text() == "mine"


def test_a_diverged_training_commits_nothing_and_writes_no_object(tiny, monkeypatch):
    import sola.workspace as workspace_module

    real = workspace_module.train_edit

    def diverging(*args, **kwargs):
        trained = real(*args, **kwargs)
        trained.loss = float("nan")
        trained.lora_b[0, 0] = float("inf")
        return trained

    monkeypatch.setattr(workspace_module, "train_edit", diverging)
    log, files = tiny.json("log"), objects(tiny.root)
    assert "training diverged" in tiny.error("edit", "--prompt", PROMPT, "--target", "Rome", "--steps", "2")
    assert tiny.json("log") == log and objects(tiny.root) == files


def test_the_store_refuses_non_finite_tensors(tmp_path):
    registry = new_registry(tmp_path / "r")
    tensors = {"lora_A": np.full((2, 8), np.nan, np.float32), "lora_B": np.zeros((16, 2), np.float32),
               "keys": np.ones((1, 8), np.float32) / np.sqrt(8)}
    provenance = {"prompt": "p", "target": "t", "created_at": "2026-12-01T00:00:00Z"}
    with pytest.raises(RegistryError, match="NaN or infinite"):
        registry.store_edit(tensors, provenance, ["p"], "tester", "add p")
    assert registry.counts()["edits"] == 0 and not list(registry.objects)


def test_json_output_never_holds_nan():
    text = dumps({"loss": float("nan"), "distance": float("inf"), "nested": [float("-inf"), 1.5]})
    assert json.loads(text) == {"loss": None, "distance": None, "nested": [None, 1.5]}
    assert "NaN" not in text and "Infinity" not in text


def test_a_revoke_that_cannot_read_its_edit_commits_nothing(tmp_path):
    registry = new_registry(tmp_path / "r")
    edit = add_edit(registry, PROMPT, seed=1)
    tensors = registry.edit_row(edit)["tensors_sha256"]
    registry.close()
    path = tmp_path / "r" / "objects" / tensors[:2] / tensors[2:]
    saved = path.read_bytes()
    path.unlink()
    cli = Sola(tmp_path / "r")
    log = cli.json("log")
    assert "is missing" in cli.error("revoke", edit, "--reason", "wrong")
    assert cli.json("log") == log
    path.write_bytes(saved)
    assert cli.json("revoke", edit, "--reason", "wrong")["op"] == "revoke"
    path.unlink()
    assert "is missing" in cli.error("restore", edit, "--reason", "back")
    assert cli.json("log")[0]["op"] == "revoke"


def test_supersede_of_a_revoked_edit_is_refused_before_training(tiny, monkeypatch):
    made = tiny.json("edit", "--prompt", PROMPT, "--target", "Rome", "--steps", "2")
    tiny.json("revoke", made["edit"], "--reason", "wrong")
    import sola.workspace as workspace_module

    def never(*args, **kwargs):
        raise AssertionError("trained")

    monkeypatch.setattr(workspace_module, "train_edit", never)
    monkeypatch.setattr(workspace_module.Workspace, "model", never)  # refused before the model loads, too
    files = objects(tiny.root)
    assert "cannot supersede" in tiny.error("edit", "--prompt", PROMPT, "--target", "Paris", "--supersede", made["edit"])
    assert objects(tiny.root) == files


def test_a_damaged_key_cache_is_a_verify_problem_and_reads_rebuild_it(tmp_path):
    registry = new_registry(tmp_path / "r")
    for seed in range(3):
        add_edit(registry, f"prompt {seed}", seed=seed)
    registry.key_search(registry.head())  # builds cache/keys.f32
    registry.close()
    keys = tmp_path / "r" / "cache" / "keys.f32"
    keys.write_bytes(keys.read_bytes()[:10])
    cli = Sola(tmp_path / "r")
    line = cli.error("verify")
    assert "keys.f32" in line and "delete" in line and "cache" in line and "internal error" not in line
    report = json.loads(cli("verify", "--json").stdout)
    assert not report["ok"] and any("keys.f32" in p for p in report["problems"])
    with Registry.open(tmp_path / "r") as reader:
        search, _ = reader.key_search(reader.head())  # a read rebuilds the damaged cache
        assert search.size == 3
    assert cli.json("verify")["ok"]


def test_a_damaged_ivf_cache_is_a_verify_problem(tmp_path):
    registry = new_registry(tmp_path / "r")
    add_edit(registry, "p", seed=1)
    registry.close()
    (tmp_path / "r" / "cache").mkdir(exist_ok=True)
    (tmp_path / "r" / "cache" / "ivf.npz").write_bytes(b"PK\x03\x04 truncated")
    assert "ivf.npz" in Sola(tmp_path / "r").error("verify")


def test_verify_notes_leftovers_and_gc_removes_only_sola_files(tmp_path):
    registry = new_registry(tmp_path / "r")
    edit = add_edit(registry, "p", seed=1)
    orphan = registry.objects.put(b"an object no row points at")
    registry.close()
    root = tmp_path / "r"
    prefix = root / "objects" / edit[:2]
    (prefix / ".tmp-abc123").write_bytes(b"half an object")
    (prefix / "NOTES").write_text("not sola's")
    (root / "objects" / "zz").mkdir()
    (root / "objects" / "zz" / ("a" * 62)).write_text("not sola's either")
    outside = tmp_path / "precious"
    outside.write_text("keep")
    (prefix / ("b" * 62)).symlink_to(outside)
    cli = Sola(root)
    report = cli.json("verify")
    assert report["ok"]
    notes = " ".join(report["notes"])
    assert "1 unreferenced object" in notes and "1 temporary file" in notes and ".tmp-abc123" in notes and "sola did not write" in notes
    planned = cli.json("gc", "--dry-run")
    assert [o["object"] for o in planned["objects"]] == [orphan] and [t["path"] for t in planned["temporary"]] == [
        f"objects/{edit[:2]}/.tmp-abc123"]
    assert planned["files_removed"] == 0 and (prefix / ".tmp-abc123").exists()
    log = cli.json("log")
    done = cli.json("gc")
    assert done["files_removed"] == 2 and done["bytes"] == len(b"an object no row points at") + len(b"half an object")
    assert not (prefix / ".tmp-abc123").exists() and not registry.objects.exists(orphan)
    assert (prefix / "NOTES").exists() and (root / "objects" / "zz" / ("a" * 62)).exists()
    assert (prefix / ("b" * 62)).is_symlink() and outside.read_text() == "keep"
    assert cli.json("log") == log and cli.json("verify")["ok"] and cli.json("gc")["files_removed"] == 0
    assert cli.json("show", edit)["edit"] == edit  # referenced objects untouched


@pytest.mark.parametrize("damage", ["garbage", "empty", "flipped"])
def test_a_damaged_catalog_is_one_clear_error(tmp_path, damage):
    registry = new_registry(tmp_path / "r")
    add_edit(registry, "p", seed=1)
    registry.close()
    database = tmp_path / "r" / "registry.duckdb"
    data = bytearray(database.read_bytes())
    if damage == "garbage":
        data = bytearray(os.urandom(len(data)))
    elif damage == "empty":
        data = bytearray()
    else:
        for at in range(0, len(data), 251):
            data[at] ^= 0x5A
    database.write_bytes(bytes(data))
    cli = Sola(tmp_path / "r")
    for args in (["log"], ["verify"], ["tag", "v1"], ["edit", "--prompt", "a", "--target", "b"], ["generate", "a"]):
        line = cli.error(*args)
        assert "registry.duckdb" in line and "backup" in line and "internal error" not in line, (args, line)


def test_an_over_long_argument_is_cut_in_the_error_line(tmp_path):
    new_registry(tmp_path / "r").close()
    line = Sola(tmp_path / "r").error("log", "--rev", "r" * 20_000)
    assert len(line) < 200 and "r" * 80 + "..." in line


def test_invalid_utf8_in_a_prompt_is_refused_before_the_model_loads(tiny, monkeypatch):
    import sola.workspace as workspace_module

    def never(*args, **kwargs):
        raise AssertionError("loaded the model")

    monkeypatch.setattr(workspace_module, "load_base", never)
    assert "not valid UTF-8" in tiny.error("generate", "caf\udce9")
    assert "not valid UTF-8" in tiny.error("edit", "--prompt", "caf\udce9", "--target", "x")


def test_generation_is_bounded_by_the_context(tiny):
    assert "over the model's context of 128 tokens" in tiny.error("generate", PROMPT, "--max-new-tokens", "127")
    assert tiny.json("generate", PROMPT, "--max-new-tokens", "8")["text"] is not None


def test_a_pickle_checkpoint_beside_safetensors_is_never_read(tmp_path, tiny_dirs):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_dirs["llama"], model)
    (model / "pytorch_model.bin").write_bytes(b"not a pickle: reading it would fail")
    assert Sola(tmp_path / "reg")("init", "--model", str(model)).exit_code == 0


def test_model_digests_are_cached_by_file_stamp(tmp_path, monkeypatch):
    import sola.modelio as modelio

    monkeypatch.setenv("SOLA_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "weights.gguf"
    weights.write_bytes(b"a" * 1000)
    hashed = []
    real = modelio._hash_file
    monkeypatch.setattr(modelio, "_hash_file", lambda path: hashed.append(path) or real(path))
    first = modelio._sha256_file(weights)
    assert modelio._sha256_file(weights) == first and len(hashed) == 1  # remembered
    weights.write_bytes(b"b" * 1000)  # same size, new content: the stamp changes
    assert modelio._sha256_file(weights) != first and len(hashed) == 2
    (tmp_path / "cache" / modelio.DIGEST_CACHE).write_text("{not json")  # a damaged cache is only a miss
    assert modelio._sha256_file(weights) == real(weights) and len(hashed) == 3


def test_non_finite_settings_are_refused_by_the_records():
    from sola.config import RoutingConfig, TrainConfig

    for bad in ({"lr": math.inf}, {"lr": math.nan}, {"stop_loss": math.nan}, {"max_steps": 10**9}, {"max_steps": 2.5}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)
    for bad in ({"threshold": math.nan}, {"radius_ratio": math.nan}, {"radius_ratio": math.inf}, {"rank": 0}):
        with pytest.raises(ValueError):
            RoutingConfig(**bad)
