"""Writers never lock readers out: reads during a long `sola edit --file` all succeed, and
several writers on one registry all land (the lock is held only to commit)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from registry.store import Registry
from registry.verify import verify
from sola.cli import main

SOLA = str(Path(sys.executable).parent / "sola")
FACTS = ["The capital of France is", "Toko Yasuda plays the", "The capital of Italy is", "The capital of Spain is",
         "Apple was founded by", "The Eiffel Tower is in"]


def init(root: Path, model: Path) -> None:
    result = CliRunner().invoke(main, ["--registry", str(root), "init", "--model", str(model), "--threshold", "0.001"])
    assert result.exit_code == 0, result.output


def test_reads_succeed_while_an_edit_file_trains(tmp_path, tiny_dirs):
    root = tmp_path / "reg"
    init(root, tiny_dirs["llama"])
    edits = tmp_path / "edits.jsonl"
    edits.write_text("".join(json.dumps({"prompt": p, "target_new": "Rome"}) + "\n" for p in FACTS))
    writer = subprocess.Popen([SOLA, "--registry", str(root), "edit", "--file", str(edits), "--steps", "40", "--stop-loss", "1e-9"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reads, seen = [], set()
    while writer.poll() is None:
        read = subprocess.run([SOLA, "--registry", str(root), "log", "--json"], capture_output=True, text=True)
        reads.append(read.returncode)
        if read.returncode == 0:
            seen.add(len(json.loads(read.stdout)))
    assert writer.wait() == 0, writer.stderr
    assert reads and all(code == 0 for code in reads), reads
    assert len(seen) >= 2  # the reads saw the history grow while the writer ran
    with Registry.open(root) as registry:
        assert len(registry.active_edit_ids(registry.head())) == len(FACTS) and verify(registry).ok


def test_concurrent_writers_each_land_every_edit(tmp_path, tiny_dirs):
    root = tmp_path / "reg"
    init(root, tiny_dirs["llama"])
    writers = []
    for i, prompt in enumerate(FACTS[:3]):
        writers.append(subprocess.Popen([SOLA, "--registry", str(root), "edit", "--prompt", prompt, "--target", f"Paris{i}",
                                         "--author", f"writer{i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        time.sleep(0.1)
    for writer in writers:
        assert writer.wait(timeout=300) == 0, writer.stderr.read()
    with Registry.open(root) as registry:
        assert sorted(c.author for c in registry.log() if c.op == "add") == ["writer0", "writer1", "writer2"]
        assert verify(registry).ok
