"""The store never imports torch, and model-free commands start without it (ARCHITECTURE.md)."""

from __future__ import annotations

import subprocess
import sys

STORE_MODULES = ["registry.store", "registry.editsets", "registry.blame", "registry.inspect", "registry.verify", "registry.bulk",
                 "registry.export", "registry.where", "registry.trees", "registry.graph", "registry.revisions", "registry.routing",
                 "registry.catalog.duckdb", "registry.keyindex"]


def test_the_registry_package_never_imports_torch():
    code = f"import sys\nfor m in {STORE_MODULES!r}: __import__(m)\nassert 'torch' not in sys.modules, 'torch imported'"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0


def test_model_free_commands_do_not_import_torch(tmp_path):
    """Every command that loads no model, writing ones included (tag, revoke with its
    still-answered-by report, restore, branch, gc), runs in one process that never imports torch."""
    from registry_helpers import add_edit, new_registry

    registry = new_registry(tmp_path / "r")
    edit = add_edit(registry, "The capital of France is", seed=1)
    add_edit(registry, "Toko Yasuda plays the", seed=2)
    registry.close()
    commands = [["log"], ["branch"], ["audit"], ["verify"], ["review", "list"], ["show", edit], ["tag", "v1"],
                ["revoke", edit, "--reason", "wrong"], ["restore", edit, "--reason", "right after all"], ["branch", "side", "main~4"],
                ["diff", "v1", "main"], ["conflicts"], ["audit", "--revoked"], ["log", "--rev", "side"], ["gc", "--dry-run"],
                ["checkpoint"], ["cherry-pick", edit, "--onto", "side"], ["revert", "main", "--reason", "undo"]]
    code = ("import json, sys\nfrom sola.cli import main\n"
            "for args in json.loads(sys.argv[2]):\n"
            "    try:\n        main(['--registry', sys.argv[1], *args, '--json'])\n"
            "    except SystemExit as done:\n        assert not done.code, (args, done.code)\n"
            "    assert 'torch' not in sys.modules, ('torch imported by', args)")
    import json

    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r"), json.dumps(commands)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-1500:]
