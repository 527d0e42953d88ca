"""after_target "stop": a fired edit's LoRA goes off once its target has been generated."""

from __future__ import annotations

import dataclasses

import torch

from sola.config import RoutingConfig, TrainConfig
from sola.layer import EditBank
from sola.routed import RoutedModel, default_module_for
from sola.train import train_edit

PROMPT = "The capital of France is"
TRAIN = TrainConfig(max_steps=100, lr=0.1, stop_loss=2.0)


def layer_calls(routed: RoutedModel, bank: EditBank, max_new_tokens: int) -> tuple[str, list[bool]]:
    """Generated text and, per decoding step after the prefill, whether the layer added a delta."""
    seen: list[bool] = []

    def record(module, args, output):
        seen.append(not torch.equal(output, module.base(args[0])))

    handle = routed.layer.register_forward_hook(record)
    try:
        [text], routing = routed.generate([PROMPT], max_new_tokens=max_new_tokens, bank=bank)
    finally:
        handle.remove()
    assert routing.edits == ["e"]
    return text, seen


def test_stop_turns_the_lora_off_after_the_target_and_keep_does_not(tiny):
    kind, model, tokenizer = tiny
    config = RoutingConfig(layer=2, module=default_module_for(model), threshold=0.05, after_target="stop")
    routed = RoutedModel(model, tokenizer, config)
    trained = train_edit(routed, PROMPT, "Madrid", config=TRAIN)
    target_ids = routed.encode(PROMPT, "Madrid").target_ids.tolist()
    tensors = {"e": (trained.lora_a, trained.lora_b, trained.keys)}
    known = dataclasses.replace(EditBank.from_tensors(tensors), answers={"e": (PROMPT, "Madrid")})
    text, applied = layer_calls(routed, known, 6)
    assert text.startswith(" Madrid")
    # prefill and the steps whose input is a target token before the last: delta on; from the step
    # whose input is the target's last token (it chooses the token after the answer): off
    assert applied == [True] * len(target_ids) + [False] * (6 - len(target_ids))

    unknown = EditBank.from_tensors(tensors)  # a bank that does not know the target keeps the LoRA on
    assert layer_calls(routed, unknown, 6)[1] == [True] * 6
    routed.config = dataclasses.replace(config, after_target="keep")
    kept_text, kept = layer_calls(routed, known, 6)
    assert kept == [True] * 6 and kept_text.startswith(" Madrid")


def test_a_registry_recorded_before_after_target_keeps_the_lora_on():
    assert RoutingConfig.from_record({"threshold": 0.04}).after_target == "keep"
    assert RoutingConfig().after_target == "stop"
