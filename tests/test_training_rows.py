"""Training an edit on more than its prompt: the target after generic contexts (TrainConfig.contexts)
and other-relation prompts of the subject held to the base model (relation_prompts, relation_kl)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from sola.cli import main
from sola.config import RoutingConfig, TrainConfig
from sola.probes import relation_probes, relation_templates, training_prompts
from sola.data import EditRequest
from sola.routed import RoutedModel, default_module_for
from sola.train import TRAINING_CONTEXTS, train_edit

PROMPT = "Danielle Darrieux's mother tongue is"
SUBJECT = "Danielle Darrieux"
TRAIN = TrainConfig(max_steps=150, lr=0.1, stop_loss=2.0)  # tiny random models: a looser loss (tests/test_method.py)


def routed_model(model, tokenizer) -> RoutedModel:
    return RoutedModel(model, tokenizer, RoutingConfig(layer=2, module=default_module_for(model)))


@torch.no_grad()
def target_argmax(routed: RoutedModel, prompt: str, target: str) -> bool:
    encoded = routed.encode(prompt, target)
    start = encoded.prompt_len - 1
    logits = routed.model(input_ids=encoded.input_ids, use_cache=False).logits[0, start : start + len(encoded.target_ids)]
    return bool((logits.argmax(-1) == encoded.target_ids).all())


@torch.no_grad()
def next_token(routed: RoutedModel, prompt: str) -> int:
    return int(routed.model(input_ids=routed.encode(prompt).input_ids, use_cache=False).logits[0, -1].argmax())


def test_an_edit_with_contexts_gives_its_target_after_each_context(tiny):
    _, model, tokenizer = tiny
    routed = routed_model(model, tokenizer)
    trained = train_edit(routed, PROMPT, "English", config=TrainConfig(**{**TRAIN.to_dict(), "contexts": 3}))
    assert trained.converged
    with routed.layer.training_adapter(trained.lora_a, trained.lora_b):
        assert target_argmax(routed, PROMPT, "English")
        for context in TRAINING_CONTEXTS[:3]:
            assert target_argmax(routed, f"{context} {PROMPT}", "English")
    # the stored key is still the prompt's alone: contexts change the value, never the routing
    plain = train_edit(routed, PROMPT, "English", config=TRAIN)
    assert torch.equal(plain.keys, trained.keys)


def test_held_prompts_keep_their_base_answer_when_the_edit_converges(tiny):
    _, model, tokenizer = tiny
    routed = routed_model(model, tokenizer)
    held = training_prompts(PROMPT, SUBJECT, 4)
    assert len(held) == 4
    base = {prompt: next_token(routed, prompt) for prompt in held}
    config = TrainConfig(**{**TRAIN.to_dict(), "relation_prompts": 4, "relation_kl": 5.0})
    trained = train_edit(routed, PROMPT, "English", config=config, subject=SUBJECT)
    assert trained.converged
    with routed.layer.training_adapter(trained.lora_a, trained.lora_b):
        assert target_argmax(routed, PROMPT, "English")
        assert {prompt: next_token(routed, prompt) for prompt in held} == base


def test_without_a_subject_no_prompt_is_held_and_the_edit_trains_as_before(tiny):
    _, model, tokenizer = tiny
    routed = routed_model(model, tokenizer)
    config = TrainConfig(**{**TRAIN.to_dict(), "relation_prompts": 4, "relation_kl": 5.0})
    assert training_prompts(PROMPT, None, 4) == []
    held_off = train_edit(routed, PROMPT, "English", config=config)
    plain = train_edit(routed, PROMPT, "English", config=TRAIN)
    assert held_off.losses == plain.losses


def test_training_prompts_never_are_evaluation_probes_nor_the_edits_own_relation():
    requests = [EditRequest(PROMPT, "English", subject=SUBJECT),
                EditRequest("Toko Yasuda plays the", "violin", subject="Toko Yasuda")]
    evaluation = {probe.prompt for probe in relation_probes(requests, per_edit=33)}
    for request in requests:
        held = training_prompts(request.prompt, request.subject, 16)
        assert held and not set(held) & evaluation
        assert all(request.subject in prompt for prompt in held)
        assert training_prompts(request.prompt, request.subject, 16) == held  # the same on every retrain
    # the edit's own relation (P103, native language / mother tongue) is never held to the base
    own = relation_templates("training_templates")["P103"].format(SUBJECT)
    assert own not in training_prompts(PROMPT, SUBJECT, 16)


def cli(root: Path, *args: str, ok: bool = True):
    result = CliRunner().invoke(main, ["--registry", str(root), *args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def test_init_records_the_training_rows_and_edit_uses_them(tmp_path, tiny_dirs):
    root = tmp_path / "reg"
    made = json.loads(cli(root, "init", "--model", str(tiny_dirs["llama"]), "--layer", "2", "--contexts", "2",
                          "--relation-prompts", "3", "--relation-kl", "2.5", "--json").stdout)
    assert (made["training"]["contexts"], made["training"]["relation_prompts"], made["training"]["relation_kl"]) == (2, 3, 2.5)
    edited = json.loads(cli(root, "edit", "--prompt", PROMPT, "--target", "English", "--subject", SUBJECT,
                            "--steps", "150", "--stop-loss", "2.0", "--json").stdout)
    shown = json.loads(cli(root, "show", edited["edit"], "--json").stdout)["provenance"]
    assert (shown["training"]["contexts"], shown["training"]["relation_prompts"], shown["training"]["relation_kl"]) == (2, 3, 2.5)
    # a flag on `edit` overrides the registry's default for that edit only
    other = json.loads(cli(root, "edit", "--prompt", "Toko Yasuda plays the", "--target", "violin", "--contexts", "0",
                           "--steps", "150", "--stop-loss", "2.0", "--json").stdout)
    assert json.loads(cli(root, "show", other["edit"], "--json").stdout)["provenance"]["training"]["contexts"] == 0


@pytest.mark.parametrize("flag,value", [("--contexts", "9"), ("--contexts", "-1"), ("--relation-prompts", "17"),
                                        ("--relation-kl", "nan"), ("--relation-kl", "-1"), ("--relation-kl", "inf")])
def test_out_of_range_training_rows_are_refused_before_a_registry_exists(tmp_path, tiny_dirs, flag, value):
    root = tmp_path / "reg"
    result = cli(root, "init", "--model", str(tiny_dirs["llama"]), flag, value, ok=False)
    assert result.exit_code != 0 and flag in result.output
    assert not root.exists()


def test_a_training_record_without_the_new_fields_trains_as_it_did():
    recorded = {"max_steps": 40, "lr": 0.1, "optimizer": "adam", "stop_loss": 0.05, "init_std": 0.02, "seed": 0, "extra": {}}
    config = TrainConfig.resolve(recorded)
    assert (config.contexts, config.relation_prompts, config.relation_kl) == (0, 0, 0.0)
