"""Crash safety (SIGKILL at several points of `sola edit`) and interop with stock PEFT."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner

from registry.store import Registry
from registry.verify import verify
from sola.cli import main

PROMPT = "The capital of France is"

# Each point patches one step of the real edit path so the process SIGKILLs itself there.
KILL_POINTS = {
    "after the first object is written": "registry.objects.ObjectStore.put",
    "after all objects, before the transaction": "registry.store.Registry.transaction",
    "inside the transaction, before COMMIT": "registry.catalog.duckdb.DuckDBCatalog.move_ref",
}

CRASHING_EDIT = textwrap.dedent("""
    import importlib, os, signal, sys
    module_name, _, attribute = sys.argv[1].rpartition(".")
    owner_name, _, method = module_name.rpartition(".")
    owner = getattr(importlib.import_module(owner_name), method)
    original = getattr(owner, attribute)
    def die(*args, **kwargs):
        result = original(*args, **kwargs) if attribute == "put" else None
        os.kill(os.getpid(), signal.SIGKILL)
    setattr(owner, attribute, die)
    from sola.cli import main
    main(["--registry", sys.argv[2], "edit", "--prompt", sys.argv[3], "--target", "Spain"])
""")


def cli(registry, *args):
    result = CliRunner().invoke(main, ["--registry", str(registry), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_during_edit_leaves_a_consistent_registry(tmp_path, tiny_dirs, point):
    registry = tmp_path / "reg"
    cli(registry, "init", "--model", str(tiny_dirs["llama"]))
    cli(registry, "edit", "--prompt", "Toko Yasuda plays the", "--target", "piano")
    killed = subprocess.run([sys.executable, "-c", CRASHING_EDIT, KILL_POINTS[point], str(registry), PROMPT],
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr

    with Registry.open(registry) as opened:
        report = verify(opened)
        assert report.ok, report.problems
        assert [c.op for c in opened.log()] == ["add", "init"]
        assert opened.counts()["edits"] == 1
    made = json.loads(cli(registry, "edit", "--prompt", PROMPT, "--target", "Spain", "--json").stdout)
    assert made["commit"]
    with Registry.open(registry) as opened:
        assert verify(opened).ok


def test_exported_edit_loads_with_stock_peft_and_matches_the_routed_model(tmp_path, tiny_dirs):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    registry = tmp_path / "reg"
    cli(registry, "init", "--model", str(tiny_dirs["llama"]))
    made = json.loads(cli(registry, "edit", "--prompt", PROMPT, "--target", "Madrid", "--steps", "100", "--json").stdout)
    cli(registry, "export-edit", made["edit"], str(tmp_path / "adapter"))
    assert {p.name for p in (tmp_path / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors", "sola_key.safetensors", "sola_provenance.json"}

    from sola.workspace import Workspace

    with Workspace.open(registry) as workspace:
        routed, _ = workspace.routed_at()
        routed_logits, routing = routed.prompt_logits(PROMPT)
        assert routing.edits == [made["edit"]]

    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    base = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]).eval()
    # the default (subject-keyed) registry puts its recorded start token before every prompt
    start = json.loads((tmp_path / "adapter" / "sola_routing.json").read_text())["routing"]["start_token"]
    assert start >= 0
    ids = torch.tensor([[start, *tokenizer(PROMPT, add_special_tokens=False).input_ids]])
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits[0, -1]
        peft_model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
        peft_logits = peft_model(input_ids=ids).logits[0, -1]
    assert not torch.allclose(peft_logits, base_logits, atol=1e-3)
    torch.testing.assert_close(peft_logits, routed_logits, rtol=1e-4, atol=1e-5)
