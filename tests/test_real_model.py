"""What only the real default model shows: a CounterFact edit flips the answer; revoke restores exactly.

Marked slow (loads SmolLM2-135M; the first run converts the bundled GGUF once, ~30 s).
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
def workspace(tmp_path_factory):
    ws = Workspace.init(tmp_path_factory.mktemp("real") / "registry", None, {}, "tester")
    yield ws
    ws.close()


def base_logits(ws: Workspace, prompt: str) -> torch.Tensor:
    routed = ws.model()
    with routed.bank_override(EditBank.empty()):
        return routed.prompt_logits(prompt)[0]


def test_counterfact_edit_flips_answer_keeps_unrelated_and_revoke_restores_exactly(workspace):
    record = json.loads(DATA.read_text())[0]
    request = request_from_record(record)
    routed = workspace.model()
    target_id = routed.encode(request.prompt, request.target).target_ids[0]
    before = base_logits(workspace, request.prompt)
    unrelated_before = base_logits(workspace, request.locality_prompt)
    assert before.argmax() != target_id

    outcome = workspace.edit(request, reason="real-model test")
    assert outcome.converged
    routed, _ = workspace.routed_at()
    edited, routing = routed.prompt_logits(request.prompt)
    assert routing.edits == [outcome.edit]
    assert edited.argmax() == target_id
    text = workspace.generate([request.prompt], max_new_tokens=3)[0]
    assert text.text.strip().startswith(request.target)
    unrelated, unrelated_routing = routed.prompt_logits(request.locality_prompt)
    assert unrelated_routing.edits == [None]
    assert torch.equal(unrelated, unrelated_before)

    workspace.set_active(outcome.edit, False, "test over")
    routed, _ = workspace.routed_at()
    restored, restored_routing = routed.prompt_logits(request.prompt)
    assert restored_routing.edits == [None]
    assert torch.equal(restored, before)


def test_default_model_conversion_is_cached_and_reused(workspace):
    from sola.modelio import cache_root

    recorded = workspace.registry.base_model
    cached = cache_root() / "models" / recorded["sha256"]
    assert (cached / "config.json").is_file() and list(cached.glob("*.safetensors"))


def test_counterfact_edits_trained_in_a_batch_follow_their_curves_alone(workspace):
    """On the real model (30 blocks, prompts of different lengths, right padding) a batch of
    edits trains each as alone. Run in float64: in float32 a stacked product rounds a few ulps
    off the single sequence's and Adam amplifies that (an entry near zero whose sign rounds
    differently moves by the whole learning rate), which would hide or fake a real difference."""
    from sola.batch_train import EditJob, train_edits
    from sola.config import TrainConfig
    from sola.modelio import load_base
    from sola.routed import RoutedModel
    from sola.train import train_edit

    records = json.loads(DATA.read_text())[:6]
    jobs = [EditJob(r["prompt"], r["target_new"]) for r in records]
    model, tokenizer, _ = load_base(None)
    routed, config = RoutedModel(model.double(), tokenizer, workspace.model().config), TrainConfig()
    alone = [train_edit(routed, j.prompt, j.target, config=config) for j in jobs]
    batched = dict(train_edits(routed, jobs, config, batch_size=4))
    assert len({len(routed.encode(j.prompt, j.target).input_ids[0]) for j in jobs}) > 1  # padding is exercised
    for index, single in enumerate(alone):
        together = batched[index]
        assert together.steps == single.steps and together.converged == single.converged
        # measured ~1e-7 apart in float64 (~1e-3 in float32): Adam still amplifies the last bits
        assert torch.allclose(torch.tensor(together.losses), torch.tensor(single.losses), rtol=1e-5, atol=1e-6)
        drift = float((together.lora_b - single.lora_b).norm() / single.lora_b.norm())
        assert drift < 1e-4, drift
