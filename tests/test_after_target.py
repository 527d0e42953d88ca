"""after_target: how long a fired edit's LoRA applies while generating. "stop": it goes off once
its target has been generated; "refresh" (the default): also the row's cached keys/values are
recomputed by the base model then, so the text after the answer is the base model's own
continuation of prompt + target; "keep": on throughout."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sola.config import RoutingConfig, TrainConfig
from sola.core.load import load_llama
from sola.layer import EditBank
from sola.routed import RoutedModel, default_module_for
from sola.train import train_edit

PROMPT = "The capital of France is"
LONGER = "What is the twin city of Lyon? It is"  # more tokens than PROMPT: PROMPT's row is left padded
TRAIN = TrainConfig(max_steps=100, lr=0.1, stop_loss=2.0)
AFTER = 8  # tokens compared after the target


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
    # "refresh": off from the same step as "stop", and one more pass of the layer at that step, the
    # base model's forward that recomputes the row's cache
    routed.config = dataclasses.replace(config, after_target="refresh")
    assert layer_calls(routed, known, 6)[1] == applied[:len(target_ids)] + [False] + applied[len(target_ids):]


# --- "refresh" ------------------------------------------------------------------------------------
class Tokens:
    """A streamer that keeps the token ids of a generation: the prompt rows, then one column per step."""

    def __init__(self) -> None:
        self.rows: list[list[int]] | None = None

    def put(self, value: torch.Tensor) -> None:
        if self.rows is None:
            self.rows = value.tolist()
        else:
            for row, token in zip(self.rows, value.reshape(-1).tolist()):
                row.append(token)

    def end(self) -> None:
        pass


class LastCache:
    """Keeps the KV cache a model's forward passes are given (transformers' `past_key_values`,
    the core's `cache`): after a generation, it holds every position fed."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.cache = None
        self.handle = model.register_forward_pre_hook(self.keep, with_kwargs=True)

    def keep(self, _model, _args, kwargs) -> None:
        found = kwargs.get("cache", kwargs.get("past_key_values"))
        if found is not None:
            self.cache = found


def layers_of(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per block of either cache kind, (batch, heads, positions, dim)."""
    if hasattr(cache, "length"):  # sola.core.llama.KVCache
        return [cache.layers[i] for i in sorted(cache.layers)]
    return [(layer.keys, layer.values) for layer in cache.layers]


def base_layers(model: torch.nn.Module, tokens: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The base model's cache for `tokens` alone (outside any routing call)."""
    with torch.no_grad():
        output = model(input_ids=torch.tensor([tokens]), use_cache=True)
    return layers_of(output.cache if hasattr(output, "cache") else output.past_key_values)


def row_matches_base(cache, row: int, base: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
    """Whether `row`'s last slots in every block hold the base model's keys and values."""
    for (keys, values), (base_keys, base_values) in zip(layers_of(cache), base, strict=True):
        count = base_keys.shape[2]
        for mine, theirs in ((keys, base_keys), (values, base_values)):
            if not torch.allclose(mine[row, :, -count:], theirs[0], rtol=1e-9, atol=1e-9):
                return False
    return True


def generate(routed: RoutedModel, prompts: list[str], bank: EditBank, mode: str, max_new_tokens: int, **sampling):
    """(token rows after the prompts, the routing, the final cache) of one routed generation."""
    routed.config = dataclasses.replace(routed.config, after_target=mode)
    tokens, last = Tokens(), LastCache(routed.model)
    try:
        _, routing = routed.generate(prompts, max_new_tokens=max_new_tokens, bank=bank, streamer=tokens, **sampling)
    finally:
        last.handle.remove()
    width = len(tokens.rows[0]) - max_new_tokens
    return [row[width:] for row in tokens.rows], routing, last.cache


def edited(model: torch.nn.Module, tokenizer, trained_on: torch.nn.Module | None = None) -> tuple[RoutedModel, EditBank, list[int]]:
    """A float64 model routed with one edit "France -> Madrid" (trained on `trained_on`, by
    default the model itself), its bank and the prompt + target token ids."""
    source = (trained_on or model).double()
    trainer = RoutedModel(source, tokenizer, RoutingConfig(layer=2, module=default_module_for(source), threshold=0.05))
    trained = train_edit(trainer, PROMPT, "Madrid", config=TRAIN)
    bank = dataclasses.replace(EditBank.from_tensors({"e": (trained.lora_a, trained.lora_b, trained.keys)}), answers={"e": (PROMPT, "Madrid")})
    routed = trainer if trained_on is None else RoutedModel(model.double(), tokenizer, trainer.config)
    return routed, bank, routed.encode(PROMPT, "Madrid").input_ids[0].tolist()


def base_continuation(model: torch.nn.Module, ids: list[int], tokens: int) -> list[int]:
    """The base model's greedy continuation of `ids` (no routing call: the base model)."""
    with torch.no_grad():
        output = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                max_new_tokens=tokens, pad_token_id=0, do_sample=False)
    return output[0, len(ids):].tolist()


def check_refresh_is_the_base_continuation(routed: RoutedModel, bank: EditBank, full: list[int]) -> None:
    target = full[len(routed.encode(PROMPT).input_ids[0]):]
    reference = base_continuation(routed.model, full, AFTER)
    [refreshed], routing, cache = generate(routed, [PROMPT], bank, "refresh", len(target) + AFTER)
    assert routing.edits == ["e"] and refreshed[:len(target)] == target
    assert refreshed[len(target):] == reference
    # the cache then holds, for every position, what the base model computes for these tokens
    assert row_matches_base(cache, 0, base_layers(routed.model, full + refreshed[len(target):-1]))
    # "stop" turns the LoRA off at the same step but writes on from the edited cache: here it differs
    [stopped], _, stop_cache = generate(routed, [PROMPT], bank, "stop", len(target) + AFTER)
    assert stopped[:len(target)] == target and stopped[len(target):] != reference
    assert not row_matches_base(stop_cache, 0, base_layers(routed.model, full + stopped[len(target):-1]))


def test_refresh_writes_on_as_the_base_model_after_prompt_and_target(tiny):
    _, model, tokenizer = tiny
    check_refresh_is_the_base_continuation(*edited(model, tokenizer))


def test_refresh_in_the_core_writes_on_as_the_base_model_after_prompt_and_target(tiny_dirs):
    from transformers import AutoModelForCausalLM

    core, tokenizer = load_llama(tiny_dirs["llama"])
    reference = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]).eval()
    routed, bank, full = edited(core, tokenizer, trained_on=reference)
    assert type(routed.model).__module__ == "sola.core.llama"
    check_refresh_is_the_base_continuation(routed, bank, full)


@pytest.mark.parametrize("runner", ["transformers", "core"])
def test_refresh_leaves_the_other_rows_of_a_batch_alone(tiny_dirs, runner):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]).eval()
    if runner == "core":
        routed, bank, full = edited(*load_llama(tiny_dirs["llama"]), trained_on=hf)
    else:
        routed, bank, full = edited(hf, AutoTokenizer.from_pretrained(tiny_dirs["llama"]))
    target = len(full) - len(routed.encode(PROMPT).input_ids[0])
    steps = target + AFTER
    rows, routing, cache = generate(routed, [PROMPT, LONGER], bank, "refresh", steps)
    assert routing.edits == ["e", None]
    assert len(routed.encode(PROMPT).input_ids[0]) < len(routed.encode(LONGER).input_ids[0])  # the edited row is padded
    assert rows[0][target:] == base_continuation(routed.model, full, AFTER)
    assert row_matches_base(cache, 0, base_layers(routed.model, full + rows[0][target:-1]))
    stop_rows, _, stop_cache = generate(routed, [PROMPT, LONGER], bank, "stop", steps)
    [alone], _, _ = generate(routed, [LONGER], bank, "refresh", steps)
    assert rows[1] == stop_rows[1] == alone
    for (keys, values), (stop_keys, stop_values) in zip(layers_of(cache), layers_of(stop_cache), strict=True):
        assert torch.equal(keys[1], stop_keys[1]) and torch.equal(values[1], stop_values[1])  # bit for bit


def test_refresh_with_sampling_leaves_the_base_models_cache(tiny_dirs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]).eval()
    routed, bank, full = edited(hf, AutoTokenizer.from_pretrained(tiny_dirs["llama"]))
    target = len(full) - len(routed.encode(PROMPT).input_ids[0])
    [row], routing, cache = generate(routed, [PROMPT], bank, "refresh", target + AFTER, temperature=0.05, seed=0)
    assert routing.edits == ["e"] and row[:target] == full[-target:]
    assert row_matches_base(cache, 0, base_layers(routed.model, full + row[target:-1]))


def test_refresh_writes_only_the_positions_a_sliding_window_layer_holds(tiny_gemma_dir):
    """Gemma 3's sliding-window blocks (window 3) keep only the latest positions."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir).eval().double()
    tokenizer = AutoTokenizer.from_pretrained(tiny_gemma_dir)
    routed = RoutedModel(model, tokenizer, RoutingConfig(layer=1, module=default_module_for(model), threshold=0.05))
    trained = train_edit(routed, PROMPT, "Madrid", config=TRAIN)
    bank = dataclasses.replace(EditBank.from_tensors({"e": (trained.lora_a, trained.lora_b, trained.keys)}), answers={"e": (PROMPT, "Madrid")})
    full = routed.encode(PROMPT, "Madrid").input_ids[0].tolist()
    target = len(routed.encode(PROMPT, "Madrid").target_ids)
    rows, routing, cache = generate(routed, [PROMPT, LONGER], bank, "refresh", target + AFTER)
    assert routing.edits[0] == "e" and rows[0][:target] == full[-target:]
    assert rows[0][target:] == base_continuation(model, full, AFTER)
    held = [keys.shape[2] for keys, _ in layers_of(cache)]
    assert min(held) < max(held)  # sliding layers hold fewer positions than full ones
    stop_rows, _, _ = generate(routed, [PROMPT, LONGER], bank, "stop", target + AFTER)
    assert stop_rows[0][target:] != rows[0][target:]


# --- which mode a registry uses -------------------------------------------------------------------
def test_new_registries_refresh_and_recorded_ones_keep_their_mode(tmp_path, tiny_dirs):
    from sola.workspace import Workspace

    assert RoutingConfig().after_target == "refresh"
    assert RoutingConfig.from_record({"threshold": 0.04}).after_target == "keep"  # recorded before the option
    assert RoutingConfig.from_record({"threshold": 0.04, "after_target": "stop"}).after_target == "stop"
    with pytest.raises(ValueError, match="after_target must be one of"):
        RoutingConfig(after_target="restart")
    Workspace.init(tmp_path / "new", str(tiny_dirs["llama"]), {}, "tester").close()
    Workspace.init(tmp_path / "old", str(tiny_dirs["llama"]), {"after_target": "stop"}, "tester").close()
    assert Workspace.open(tmp_path / "new").routing.after_target == "refresh"
    with Workspace.open(tmp_path / "old") as old:
        assert old.registry.routing["after_target"] == "stop" and old.routing.after_target == "stop"
        routed = old.serving_model()
        assert routed.config.after_target == "stop"
        scope = routed.routing_call(bank=dataclasses.replace(EditBank.empty(), answers={"e": (PROMPT, "Madrid")}))
        with scope as entered:  # a "stop" registry watches for the target but never refreshes the cache
            assert entered.target_ids is not None and entered.refresh is False
