"""What only the real second family shows: on Gemma 3 270M (the bundled `gemma3` model) a
CounterFact edit flips the answer, revoke restores the base output bit for bit, and the
exported edit loads in stock PEFT with the same logits.

Marked slow. One registry is shared by the module (the model loads once, ~10 s from the
cached conversion; the first run ever assembles and converts the GGUF, ~2 min) and makes one edit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sola.data import request_from_record
from sola.layer import EditBank
from sola.workspace import Workspace

pytestmark = pytest.mark.slow
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact-1k.json"


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    ws = Workspace.init(tmp_path_factory.mktemp("gemma") / "registry", "gemma3", {}, "tester")
    record = json.loads(DATA.read_text())[0]  # Danielle Darrieux's mother tongue: French -> English
    request = request_from_record(record)
    routed = ws.model()
    with routed.bank_override(EditBank.empty()):
        before = {p: routed.prompt_logits(p)[0] for p in (request.prompt, request.locality_prompt)}
    outcome = ws.edit(request, reason="real-model test")
    yield ws, request, outcome, before
    ws.close()


def test_gemma_registry_records_the_family_its_defaults_and_the_float32_conversion(gemma):
    from sola.arch import by_name
    from sola.modelio import cache_root

    ws, _, _, _ = gemma
    routing, model = ws.registry.routing, ws.registry.base_model
    assert (model["spec"], model["name"]) == ("gemma3", "gemma-3-270m")
    assert routing["family"] == "gemma3"
    assert routing["key_function"] == by_name("gemma3").default_key_function == "subject"
    assert {k: routing[k] for k in by_name("gemma3").subject_routing_defaults} == by_name("gemma3").subject_routing_defaults
    assert routing["layer"] == by_name("gemma3").routing_defaults["layer"]
    cached = cache_root() / "models" / model["sha256"]
    assert json.loads((cached / "config.json").read_text())["dtype"] == "float32"
    assert ws.model().model.lm_head.weight.data_ptr() == ws.model().model.model.embed_tokens.weight.data_ptr()  # tied


def test_gemma_edit_flips_the_answer_keeps_unrelated_and_revoke_restores_exactly(gemma):
    ws, request, outcome, before = gemma
    routed, _ = ws.routed_at()
    target_id = routed.encode(request.prompt, request.target).target_ids[0]
    assert before[request.prompt].argmax() != target_id
    assert outcome.converged

    edited, routing = routed.prompt_logits(request.prompt)
    assert routing.edits == [outcome.edit] and edited.argmax() == target_id
    assert ws.generate([request.prompt], max_new_tokens=3)[0].text.strip().startswith(request.target)
    unrelated, unrelated_routing = routed.prompt_logits(request.locality_prompt)
    assert unrelated_routing.edits == [None] and torch.equal(unrelated, before[request.locality_prompt])

    ws.set_active(outcome.edit, False, "test over")
    routed, _ = ws.routed_at()
    restored, restored_routing = routed.prompt_logits(request.prompt)
    assert restored_routing.edits == [None] and torch.equal(restored, before[request.prompt])
    ws.set_active(outcome.edit, True, "back for the export test")


def test_gemma_edit_exported_loads_in_stock_peft_with_the_routed_logits(gemma, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from registry.export import export_peft
    from sola.modelio import cache_root

    ws, request, outcome, before = gemma
    export_peft(ws.registry, outcome.edit, tmp_path / "adapter")
    routed, _ = ws.routed_at()
    routed_logits, routing = routed.prompt_logits(request.prompt)
    assert routing.edits == [outcome.edit]
    ids = routed.encode(request.prompt).input_ids  # <bos> + prompt, as sola feeds Gemma

    directory = cache_root() / "models" / ws.registry.base_model["sha256"]
    base = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        peft_logits = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()(input_ids=ids).logits[0, -1]
    assert peft_logits.argmax() == routed_logits.argmax() != before[request.prompt].argmax()
    torch.testing.assert_close(peft_logits, routed_logits, rtol=1e-4, atol=1e-4)
