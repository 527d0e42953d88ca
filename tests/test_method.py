"""The routed LoRA method on tiny GPT-2 (Conv1D) and Llama (Linear) models."""

from __future__ import annotations

import torch

from sola.config import RoutingConfig, TrainConfig
from sola.layer import EditBank, RoutingScope
from sola.routed import RoutedModel, default_module_for
from sola.train import routing_key, train_edit

PROMPT = "The capital of France is"
OTHER = "Toko Yasuda plays the"
# Tiny random models have tied, small embeddings behind a final norm, which bounds how peaked the
# output can get: require the target to be the argmax with a looser loss than the real-model default.
TRAIN = TrainConfig(max_steps=100, lr=0.1, stop_loss=2.0)


def routed_model(kind, model, tokenizer, threshold=0.05, key_function="mean"):
    config = RoutingConfig(layer=2, module=default_module_for(model), threshold=threshold, key_function=key_function)
    return RoutedModel(model, tokenizer, config)


def base_next_logits(routed: RoutedModel, prompt: str) -> torch.Tensor:
    with routed.bank_override(EditBank.empty()):
        return routed.prompt_logits(prompt)[0]


def bank_of(*edits):
    return EditBank.from_tensors({name: (t.lora_a, t.lora_b, t.keys) for name, t in edits})


def test_edit_makes_target_the_argmax_and_fires_only_under_threshold(tiny):
    kind, model, tokenizer = tiny
    routed = routed_model(kind, model, tokenizer, threshold=1e-3)
    base_other = base_next_logits(routed, OTHER)
    trained = train_edit(routed, PROMPT, "Madrid", config=TRAIN)
    assert trained.converged
    routed.set_bank(bank_of(("rome", trained)))

    logits, encoded, routing = routed.score(PROMPT, "Madrid")
    assert routing.edits == ["rome"]
    assert torch.equal(logits.argmax(-1), encoded.target_ids)

    other_logits, other_routing = routed.prompt_logits(OTHER)
    assert other_routing.distances[0] >= 1e-3 and other_routing.edits == [None]
    assert torch.equal(other_logits, base_other)


def test_revoked_edit_gives_bit_identical_base_logits(tiny, tiny_dirs):
    from transformers import AutoModelForCausalLM

    kind, model, tokenizer = tiny
    pristine = AutoModelForCausalLM.from_pretrained(tiny_dirs[kind]).eval()
    ids = tokenizer(PROMPT, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        base_logits = pristine(input_ids=ids, use_cache=False).logits[0, -1]

    routed = routed_model(kind, model, tokenizer)
    trained = train_edit(routed, PROMPT, "Madrid", config=TRAIN)
    routed.set_bank(bank_of(("rome", trained)))
    edited, _ = routed.prompt_logits(PROMPT)
    assert not torch.equal(edited, base_logits)

    routed.set_bank(EditBank.empty())  # the revoked snapshot: key gone
    restored, routing = routed.prompt_logits(PROMPT)
    assert routing.edits == [None]
    assert torch.equal(restored, base_logits)


def test_mixed_batch_equals_each_sequence_alone(tiny):
    kind, model, tokenizer = tiny
    routed = routed_model(kind, model, tokenizer, threshold=1e-3)
    prompts = [PROMPT, "The capital of Italy is", OTHER]
    lengths = {len(routed.encode(p).input_ids[0]) for p in prompts}
    a = train_edit(routed, prompts[0], "Madrid", config=TRAIN)
    b = train_edit(routed, prompts[1], "Spain", config=TRAIN)
    routed.set_bank(bank_of(("a", a), ("b", b)))

    alone = [routed.generate([p], max_new_tokens=4) for p in prompts]
    batch_texts, batch_routing = routed.generate(prompts, max_new_tokens=4)
    assert batch_routing.edits == ["a", "b", None]
    assert batch_texts == [texts[0] for texts, _ in alone]
    assert [r.edits[0] for _, r in alone] == batch_routing.edits

    if len(lengths) == 1:  # same length: no padding, so whole-batch logits are comparable
        ids = torch.cat([routed.encode(p).input_ids for p in prompts])
        with torch.no_grad(), routed.routing_call(RoutingScope()):
            batched = model(input_ids=ids, use_cache=False).logits[:, -1]
        for row, prompt in enumerate(prompts):
            torch.testing.assert_close(batched[row], routed.prompt_logits(prompt)[0], rtol=0, atol=1e-5)


def test_generation_keeps_the_prefill_decision(tiny):
    kind, model, tokenizer = tiny
    routed = routed_model(kind, model, tokenizer, threshold=1e-4)
    trained = train_edit(routed, PROMPT, "Madrid", config=TRAIN)
    routed.set_bank(bank_of(("rome", trained)))
    texts, routing = routed.generate([PROMPT], max_new_tokens=6)
    assert routing.edits == ["rome"]

    # Reference: the edit's LoRA forced on for every step of a cache-free greedy loop.
    ids = routed.encode(PROMPT).input_ids
    with torch.no_grad(), routed.layer.training_adapter(trained.lora_a, trained.lora_b):
        for _ in range(6):
            ids = torch.cat([ids, model(input_ids=ids, use_cache=False).logits[:, -1:].argmax(-1)], dim=1)
    forced = tokenizer.decode(ids[0, routed.encode(PROMPT).input_ids.shape[1]:], skip_special_tokens=True)
    assert texts[0] == forced
    # Re-routing on the grown sequence would not have fired: the pinned decision is what kept the edit.
    _, rerouted = routed.prompt_logits(PROMPT + forced)
    assert rerouted.edits == [None]


def test_paraphrase_given_at_edit_time_routes_to_the_edit(tiny):
    kind, model, tokenizer = tiny
    routed = routed_model(kind, model, tokenizer, threshold=1e-3)
    paraphrase = "Which city is the capital of France?"
    trained = train_edit(routed, PROMPT, "Madrid", rephrases=[paraphrase], config=TRAIN)
    assert trained.keys.shape[0] == 2
    routed.set_bank(bank_of(("rome", trained)))
    assert routed.prompt_logits(paraphrase)[1].edits == ["rome"]
    assert torch.allclose(trained.keys[1], routing_key(routed, paraphrase))


def test_an_edit_trains_against_the_base_not_on_top_of_other_edits(tiny):
    kind, model, tokenizer = tiny
    routed = routed_model(kind, model, tokenizer, threshold=2.0)  # every prompt would route to edit 1
    first = train_edit(routed, PROMPT, "Madrid", config=TRAIN)
    alone = train_edit(routed, "The capital of Spain is", "Paris", config=TRAIN)
    routed.set_bank(bank_of(("first", first)))
    beside = train_edit(routed, "The capital of Spain is", "Paris", config=TRAIN)
    assert torch.equal(alone.lora_a, beside.lora_a) and torch.equal(alone.lora_b, beside.lora_b)


def test_cached_lower_blocks_train_the_same_lora_as_full_forward(tiny):
    kind, model, tokenizer = tiny
    routed = routed_model(kind, model, tokenizer)
    cached = train_edit(routed, PROMPT, "Madrid", config=TRAIN)
    full = train_edit(routed, PROMPT, "Madrid", config=TRAIN, cache_lower_blocks=False)
    assert cached.steps == full.steps
    torch.testing.assert_close(cached.lora_b, full.lora_b, rtol=1e-4, atol=1e-5)


def test_last_token_key_function_is_selectable(tiny):
    kind, model, tokenizer = tiny
    mean = routing_key(routed_model(kind, model, tokenizer, key_function="mean"), PROMPT)
    model2 = type(model)(model.config).eval()
    model2.load_state_dict({k.replace(".base.", "."): v for k, v in model.state_dict().items()})
    last = routing_key(routed_model(kind, model2, tokenizer, key_function="last"), PROMPT)
    assert mean.shape == last.shape and not torch.allclose(mean, last)
    assert torch.isclose(last.norm(), torch.tensor(1.0))


def test_second_finished_model_conversion_keeps_the_first_copy(tmp_path):
    from sola.modelio import publish_conversion

    target = tmp_path / "models" / "abc"
    first, second = tmp_path / "models" / ".convert-1", tmp_path / "models" / ".convert-2"
    for staging, text in ((first, "first"), (second, "second")):
        staging.mkdir(parents=True)
        (staging / "config.json").write_text(text)
        (staging / "model.safetensors").write_text(text)
    publish_conversion(first, target)
    publish_conversion(second, target)  # a concurrent converter finishing later
    assert (target / "config.json").read_text() == "first"
    assert not second.exists() and not first.exists()


def test_snapshot_check_accepts_both_edit_layouts_and_rejects_a_changed_key():
    """Snapshot manifests carry `keys_sha256` for edits whose keys live in `key_vectors`, and
    only `tensors_sha256` (over LoRA factors + keys) for edits stored before that layout."""
    import hashlib

    import numpy as np
    from safetensors.numpy import save

    from sola.snapshot import _edit_matches_manifest

    rng = np.random.default_rng(0)
    lora_a, lora_b = rng.normal(size=(2, 8)).astype(np.float32), rng.normal(size=(16, 2)).astype(np.float32)
    keys = rng.normal(size=(1, 8)).astype(np.float32)
    current = {"edit": "e" * 64, "tensors_sha256": hashlib.sha256(save({"lora_A": lora_a, "lora_B": lora_b})).hexdigest(),
               "keys_sha256": hashlib.sha256(keys.astype("<f4").tobytes()).hexdigest()}
    older = {"edit": "f" * 64, "tensors_sha256": hashlib.sha256(save({"lora_A": lora_a, "lora_B": lora_b, "keys": keys})).hexdigest()}
    changed = keys.copy()
    changed[0, 0] += 1e-3
    assert _edit_matches_manifest(lora_a, lora_b, keys, current)
    assert _edit_matches_manifest(lora_a, lora_b, keys, older)
    assert not _edit_matches_manifest(lora_a, lora_b, changed, current)
    assert not _edit_matches_manifest(lora_a, lora_b, changed, older)


def _router(radius_ratio: float, keys_by_edit: dict[str, list[list[float]]], threshold: float = 0.5):
    """The routing decision of a routed nn.Linear(3, 2) over a bank of the given unit keys (LoRA factors irrelevant here)."""
    import math

    from sola.layer import RoutedLoRA

    layer = RoutedLoRA(torch.nn.Linear(3, 2), "mean", threshold, scale=1.0, radius_ratio=radius_ratio)
    edits = {}
    for edit, rows in keys_by_edit.items():
        keys = torch.tensor([[x / math.sqrt(sum(v * v for v in row)) for x in row] for row in rows])
        edits[edit] = (torch.zeros(1, 3), torch.zeros(2, 1), keys)
    bank = EditBank.from_tensors(edits)
    return lambda query: layer.route(bank, query, None)


def _at_angle(radians: float) -> torch.Tensor:
    """A one-token input whose query is the unit vector at `radians` from (1, 0, 0) in the x-y plane."""
    import math

    return torch.tensor([[[math.cos(radians), math.sin(radians), 0.0]]])


def test_radius_ratio_refuses_a_query_near_a_crowded_key_that_the_threshold_alone_accepts():
    import math

    crowded = {"a": [[1.0, 0.0, 0.0]], "b": [[math.cos(0.6), math.sin(0.6), 0.0]]}  # a-b distance 0.175
    query = _at_angle(-0.45)  # nearest a at distance 0.0996: under the threshold, over 0.5 x 0.175
    assert _router(0.0, crowded)(query).edits == ["a"]
    routing = _router(0.5, crowded)(query)
    assert routing.edits == [None] and routing.nearest == ["a"]
    assert math.isclose(routing.radii[0], 0.5 * (1 - math.cos(0.6)), rel_tol=1e-5)
    assert _router(0.5, crowded)(_at_angle(0.0)).edits == ["a"]  # the key's own prompt


def test_radius_ratio_ignores_the_other_keys_of_the_same_edit():
    import math

    one_edit_two_keys = {"a": [[1.0, 0.0, 0.0], [math.cos(0.1), math.sin(0.1), 0.0]], "far": [[0.0, 0.0, 1.0]]}
    routing = _router(0.5, one_edit_two_keys)(_at_angle(-0.45))
    assert routing.edits == ["a"] and math.isclose(routing.radii[0], 0.5)  # min(threshold, 0.5 x distance 1 to "far")


def test_recorded_routing_without_radius_ratio_keeps_routing_by_threshold_alone():
    assert RoutingConfig.from_dict({}).radius_ratio == 0.5  # what a new registry gets
    assert RoutingConfig.from_record({"threshold": 0.04}).radius_ratio == 0.0  # a registry made before the field
    assert RoutingConfig.from_record({"radius_ratio": 0.7}).radius_ratio == 0.7


def test_recorded_routing_without_revoke_mode_keeps_deleting_revoked_keys():
    assert RoutingConfig.from_dict({}).revoke_mode == "tombstone"  # what a new registry gets
    assert RoutingConfig.from_record({"threshold": 0.04}).revoke_mode == "delete"  # a registry made before the field


def test_tombstone_gives_a_revoked_prompt_base_logits_where_deleting_its_key_lets_a_restatement_answer(tiny):
    kind, model, tokenizer = tiny
    routed = routed_model(kind, model, tokenizer, threshold=0.5)
    restated = "The capital city of France is"
    base_logits = base_next_logits(routed, PROMPT)
    madrid = train_edit(routed, PROMPT, "Madrid", config=TRAIN)
    rome = train_edit(routed, restated, "Rome", config=TRAIN)
    both = {"madrid": (madrid.lora_a, madrid.lora_b, madrid.keys), "rome": (rome.lora_a, rome.lora_b, rome.keys)}

    deleted = EditBank.from_tensors({"rome": both["rome"]})  # the paper's revoke: madrid's key is gone
    routed.set_bank(deleted)
    _, routing = routed.prompt_logits(PROMPT)
    assert routing.edits == ["rome"]  # the restatement answers the revoked prompt

    tombstoned = EditBank.from_tensors(both)
    tombstoned.revoked = frozenset({"madrid"})
    routed.set_bank(tombstoned)
    logits, routing = routed.prompt_logits(PROMPT)
    assert routing.edits == [None] and routing.nearest == ["madrid"]
    assert torch.equal(logits, base_logits)
    assert routed.prompt_logits(restated)[1].edits == ["rome"]  # the active edit keeps its own prompt


def test_workspace_on_a_registry_recorded_before_radius_ratio_routes_by_threshold_alone(tmp_path):
    from registry_helpers import ROUTING, new_registry
    from sola.workspace import Workspace

    assert "radius_ratio" not in ROUTING
    new_registry(tmp_path / "r").close()
    assert Workspace.open(tmp_path / "r").routing.radius_ratio == 0.0


def test_head_index_relabelled_by_revoke_and_restore_routes_like_a_fresh_build(tmp_path, tiny_dirs):
    from sola.data import EditRequest
    from sola.workspace import Workspace

    quick = TrainConfig(max_steps=3)
    with Workspace.init(tmp_path / "r", str(tiny_dirs["llama"]), {"threshold": 0.5, "radius_ratio": 0.0}, "tester") as ws:
        first = ws.edit(EditRequest(PROMPT, "Madrid"), train_config=quick).edit
        ws.edit(EditRequest("The capital city of France is", "Rome"), force=True, train_config=quick)
        query = routing_key(ws.model(), PROMPT).numpy()[None, :]

        def both_banks():
            relabelled, fresh = ws.head_bank(), ws.bank(ws.registry.head())
            assert relabelled.revoked == fresh.revoked and relabelled.key_edit == fresh.key_edit
            return relabelled.decide(query, 0.5, 0.0).edits, fresh.decide(query, 0.5, 0.0).edits

        both_banks()  # builds the head index
        ws.set_active(first, False, "wrong")
        assert both_banks() == ([None], [None])
        ws.set_active(first, True, "right")
        assert both_banks() == ([first], [first])


def test_neighbours_look_past_tombstones_to_the_nearest_active_edit(tmp_path, tiny_dirs):
    from sola.data import EditRequest
    from sola.workspace import Workspace

    quick = TrainConfig(max_steps=3)
    with Workspace.init(tmp_path / "r", str(tiny_dirs["llama"]), {"threshold": 0.5, "radius_ratio": 0.0}, "tester") as ws:
        revoked = ws.edit(EditRequest(PROMPT, "Madrid"), train_config=quick).edit
        active = ws.edit(EditRequest("The capital city of France is", "Rome"), force=True, train_config=quick).edit
        ws.set_active(revoked, False, "wrong")
        key = routing_key(ws.model(), PROMPT)
        assert [n.edit for n in ws.neighbours(key, 0.5, k=1)] == [active]  # the tombstone at distance 0 is not one


def test_training_swaps_only_the_upper_blocks_linears_and_puts_them_back(tiny):
    kind, model, tokenizer = tiny
    routed = routed_model(kind, model, tokenizer)
    before = {name: type(module) for name, module in model.named_modules()}
    with routed.training_linears() as swapped:
        changed = {name for name, module in model.named_modules() if before.get(name) is not type(module)}
    upper = range(routed.config.layer, model.config.num_hidden_layers)
    if kind == "gpt2":  # Conv1D already multiplies by an (in, out) weight: nothing to swap
        assert swapped == 0 and not changed
    else:  # q, k, v, o, gate, up (the routed layer's base), down of every upper block
        assert swapped == 7 * len(upper)
        assert changed and all(int(name.split(".")[2]) in upper for name in changed)
    train_edit(routed, PROMPT, "Madrid", config=TRAIN)
    assert {name: type(module) for name, module in model.named_modules()} == before
