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
    from registry_helpers import new_registry

    new_registry(tmp_path / "r").close()
    for args in (["log"], ["branch"], ["audit"], ["verify"], ["review", "list"]):
        code = ("import sys\nfrom sola.cli import main\ntry:\n    main(['--registry', sys.argv[1], *sys.argv[2:], '--json'])\n"
                "except SystemExit as done:\n    assert not done.code, done.code\nassert 'torch' not in sys.modules, 'torch imported'")
        result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r"), *args], capture_output=True, text=True)
        assert result.returncode == 0, (args, result.stderr[-500:])
