"""Subject keys: a recorded key-function choice that keys an edit on its subject's tokens."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from registry.keyindex import FaissKeySearch
from registry.routing import PROJECT_FROM, PROJECTED_DIMS, ExactKeySearch, SubjectIndex, SubjectQuery, nearest_subject, subject_similarity
from sola.config import SUBJECT_ROUTING_DEFAULTS, SUBJECT_TRAINING_DEFAULTS, RoutingConfig, TrainConfig
from sola.keys import continues_name, name_ends, token_texts
from sola.layer import EditBank
from sola.routed import RoutedModel, default_module_for, start_token_for
from sola.train import routing_key, train_edit
from tests.test_cli import Sola

PROMPT = "Danielle Darrieux's mother tongue is"
SUBJECT = "Danielle Darrieux"
SAME_SUBJECT_FIRST = "Danielle Darrieux plays the"  # shares the subject's tokens and position
NAMELESS = "beef bourguignon was first cooked in"  # no capitalised name: its first content words are the subject
WORDLESS = "<b>?</b> =>"  # no word to key on at all: keyed on the prompt's last tokens
NEWLINE = 199  # the tiny byte-level tokenizer's id for "\n"
TRAIN = TrainConfig(max_steps=100, lr=0.1, stop_loss=2.0)


def subject_model(model, tokenizer, threshold=0.05):
    config = RoutingConfig(layer=2, module=default_module_for(model), threshold=threshold, key_function="subject",
                           key_layers=(2, 1), start_token=start_token_for(tokenizer))
    return RoutedModel(model, tokenizer, config)


def test_subject_key_is_two_unit_parts_and_its_prompt_fires_it_at_distance_zero(tiny):
    kind, model, tokenizer = tiny
    routed = subject_model(model, tokenizer)
    key = routing_key(routed, PROMPT, SUBJECT)
    half = routed.layer.in_features
    assert key.shape == (2 * half,) and routed.key_dim == 2 * half
    assert torch.allclose(key[:half].norm() * np.sqrt(2), torch.tensor(1.0)) and torch.allclose(key[half:].norm() * np.sqrt(2), torch.tensor(1.0))
    trained = train_edit(routed, PROMPT, "English", config=TRAIN, subject=SUBJECT)
    routed.set_bank(EditBank.from_tensors({"e": (trained.lora_a, trained.lora_b, trained.keys)}))
    _, routing = routed.prompt_logits(PROMPT)
    assert routing.edits == ["e"] and routing.distances[0] < 1e-5
    # another relation of the same subject, worded alike up to the subject: the same subject states
    _, same = routed.prompt_logits(SAME_SUBJECT_FIRST)
    assert same.edits == ["e"] and same.distances[0] < 1e-5


def test_without_a_subject_the_prompt_tail_stands_in_and_another_ending_is_farther(tiny):
    kind, model, tokenizer = tiny
    routed = subject_model(model, tokenizer)
    with_subject = routing_key(routed, PROMPT, SUBJECT)
    without = routing_key(routed, PROMPT, None)
    assert not torch.allclose(with_subject, without)
    bank = EditBank.from_tensors({"e": (torch.zeros(routed.config.rank, routed.layer.in_features),
                                        torch.zeros(routed.layer.out_features, routed.config.rank), without[None])})
    assert routed.prompt_logits(PROMPT, bank)[1].distances[0] < 1e-5  # the literal prompt still fires it
    assert routed.prompt_logits(SAME_SUBJECT_FIRST, bank)[1].distances[0] > 1e-3  # its subject alone does not


def test_subject_must_occur_in_the_prompt(tiny):
    kind, model, tokenizer = tiny
    routed = subject_model(model, tokenizer)
    with pytest.raises(ValueError, match="does not occur in the prompt"):
        routing_key(routed, PROMPT, "Toko Yasuda")
    assert routed.subject_span(PROMPT, "danielle darrieux") == routed.subject_span(PROMPT, SUBJECT)  # case ignored as a fallback


def test_a_revoked_subject_edit_gives_bit_identical_base_logits_and_batches_route_as_singles(tiny, tiny_dirs):
    kind, model, tokenizer = tiny
    routed = subject_model(model, tokenizer)
    prompts = [PROMPT, "Toko Yasuda plays the", SAME_SUBJECT_FIRST]
    with routed.bank_override(EditBank.empty()):
        base = [routed.prompt_logits(p)[0] for p in prompts]
    trained = train_edit(routed, PROMPT, "English", config=TRAIN, subject=SUBJECT)
    other = train_edit(routed, "Toko Yasuda plays the", "piano", config=TRAIN, subject="Toko Yasuda")
    loras = {"e": (trained.lora_a, trained.lora_b, trained.keys), "o": (other.lora_a, other.lora_b, other.keys)}
    bank = EditBank.from_tensors(loras)
    singles = [routed.prompt_logits(p, bank)[1].edits[0] for p in prompts]
    assert singles == ["e", "o", "e"]
    _, batched = routed.generate(prompts, max_new_tokens=2, bank=bank)  # left-padded batch, one prefill
    assert batched.edits == singles
    revoked = EditBank(bank.search, bank.key_edit, bank.fetch, frozenset({"e"}))
    for prompt, reference in zip(prompts, base):
        logits, routing = routed.prompt_logits(prompt, revoked)
        if routing.edits[0] is None:
            assert torch.equal(logits, reference)
    assert routed.prompt_logits(PROMPT, revoked)[1].edits == [None]


def test_two_stage_search_finds_the_exhaustive_best(tmp_path):
    rng = np.random.default_rng(0)
    dim = 16

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    keys = np.concatenate([unit(rng.normal(size=(500, dim))), unit(rng.normal(size=(500, dim)))], axis=1) / np.sqrt(2)
    keys = keys.astype(np.float32)
    queries = []
    for target in (3, 77, 499):  # a noisy copy of a key's token part among random tokens, and of its span part
        tokens = unit(np.concatenate([rng.normal(size=(5, dim)), keys[target:target + 1, :dim] * np.sqrt(2) + 0.1 * rng.normal(size=(1, dim))]))
        windows = unit(np.concatenate([rng.normal(size=(9, dim)), keys[target:target + 1, dim:] * np.sqrt(2) + 0.1 * rng.normal(size=(1, dim))]))
        queries.append(SubjectQuery(tokens.astype(np.float32), windows.astype(np.float32)))
    ids = np.arange(1000, 1500, dtype=np.int64)
    for search in (ExactKeySearch(keys, ids), FaissKeySearch.build(keys, ids, 2 * dim)):
        sims, found = nearest_subject(search, queries, candidates=8)
        exhaustive = [int(ids[subject_similarity(q, keys).argmax()]) for q in queries]
        assert found.tolist() == exhaustive == [1003, 1077, 1499]
        assert np.allclose(sims, [subject_similarity(q, keys).max() for q in queries], atol=1e-5)


def test_a_subject_registry_fits_its_edits_to_the_subject_stop_loss_unless_it_was_given_one(tmp_path, tiny_dirs):
    """A subject key reaches the paraphrases; how many get the target is the fit, so subject
    registries record a stricter stop loss; a mean-keyed one keeps TrainConfig's."""
    model = str(tiny_dirs["llama"])
    subject = Sola(tmp_path / "subject")
    made = subject.json("init", "--model", model, "--key-function", "subject", "--layer", "2", "--lr", "0.2")
    assert made["training"]["stop_loss"] == SUBJECT_TRAINING_DEFAULTS["stop_loss"] < TrainConfig().stop_loss
    assert made["training"]["lr"] == 0.2  # what was given stays
    edit = subject.json("edit", "--prompt", PROMPT, "--target", "English", "--subject", SUBJECT, "--steps", "80")
    assert subject.json("show", edit["edit"])["provenance"]["training"]["stop_loss"] == SUBJECT_TRAINING_DEFAULTS["stop_loss"]
    mean = Sola(tmp_path / "mean").json("init", "--model", model, "--key-function", "mean")
    assert mean["training"]["stop_loss"] == TrainConfig().stop_loss
    chosen = Sola(tmp_path / "chosen").json("init", "--model", model, "--key-function", "subject", "--stop-loss", "0.3")
    assert chosen["training"]["stop_loss"] == 0.3
    from sola.evaluate import run_eval  # an eval's scratch registry is made as `init` makes one

    data = Path(__file__).parent / "fixtures" / "counterfact-4.json"
    evaluated = run_eval(data, model, {"key_function": "subject", "layer": 2}, limit=1, training={"max_steps": 20}, scratch=tmp_path)
    assert (evaluated.protocol["training"]["stop_loss"], evaluated.protocol["training"]["max_steps"]) == (SUBJECT_TRAINING_DEFAULTS["stop_loss"], 20)


def test_a_subject_registry_on_a_family_whose_prompts_open_with_bos_records_no_start_token(tmp_path, tiny_gemma_dir):
    """Gemma's `<bos>` already keeps a subject at the prompt's start off position 0; a second
    fixed token would only move every prompt."""
    routing = Sola(tmp_path / "gemma").json("init", "--model", str(tiny_gemma_dir), "--key-function", "subject", "--layer", "2")["routing"]
    assert routing["key_function"] == "subject" and routing["start_token"] == -1


def test_cli_subject_registry_records_its_key_and_refuses_a_subject_its_prompt_or_rephrase_lacks(tmp_path, tiny_dirs):
    cli = Sola(tmp_path / "subject")
    made = cli.json("init", "--model", str(tiny_dirs["llama"]), "--key-function", "subject", "--layer", "2", "--threshold", "0.05")
    routing = made["routing"]
    assert routing["key_function"] == "subject" and routing["key_layers"] == [2, 2]
    assert routing["start_token"] == NEWLINE  # the tokenizer's one-token newline
    assert routing["key_dim"] == 64  # two parts of the 32-wide projection input
    studied = Sola(tmp_path / "studied").json("init", "--model", str(tiny_dirs["llama"]), "--key-function", "subject")["routing"]
    assert (studied["threshold"], studied["radius_ratio"]) == (SUBJECT_ROUTING_DEFAULTS["threshold"], SUBJECT_ROUTING_DEFAULTS["radius_ratio"])
    error = cli.fails("edit", "--prompt", PROMPT, "--target", "English", "--subject", "Toko Yasuda", "--steps", "5")
    assert "does not occur in the prompt" in error
    assert len(cli.json("log")) == 1  # nothing was committed
    error = cli.fails("edit", "--prompt", PROMPT, "--target", "English", "--subject", SUBJECT,
                      "--rephrase", "Her mother tongue is", "--steps", "5")
    assert "rephrase 1" in error and "does not name the subject" in error
    lines = tmp_path / "bad-rephrase.jsonl"
    lines.write_text(json.dumps({"prompt": "Toko Yasuda plays the", "target_new": "piano", "subject": "Toko Yasuda"}) + "\n"
                     + json.dumps({"prompt": PROMPT, "target_new": "French", "rephrase_prompt": "Her mother tongue is"}) + "\n")
    error = cli.fails("edit", "--file", str(lines), "--steps", "5")
    assert "request 2" in error and "does not name the subject" in error and "nothing was edited" in error
    assert len(cli.json("log")) == 1  # none of the refused requests committed anything
    edits = tmp_path / "edits.jsonl"
    edits.write_text(json.dumps({"prompt": PROMPT, "target_new": "English", "subject": SUBJECT}) + "\n"
                     + json.dumps({"prompt": "Toko Yasuda plays the", "target_new": "piano", "subject": "Toko Yasuda"}) + "\n")
    cli("edit", "--file", str(edits), "--steps", "60", "--batch", "2")  # the batched trainer keys on the subject too
    fired = cli.json("generate", SAME_SUBJECT_FIRST, "--max-new-tokens", "1")
    assert fired["edit"] is not None and fired["distance"] < 1e-5
    blamed = cli.json("blame", SAME_SUBJECT_FIRST)  # blame scores the prompt's subject query, as routing does
    assert [(e["op"], e["edit"]) for e in blamed] == [("add", fired["edit"])]


def test_cli_edit_without_a_subject_is_keyed_on_the_name_found_in_its_prompt(tmp_path, tiny_dirs):
    cli = Sola(tmp_path / "subject")
    cli("init", "--model", str(tiny_dirs["llama"]), "--key-function", "subject", "--layer", "2", "--threshold", "0.05")
    made = cli.json("edit", "--prompt", PROMPT, "--target", "English", "--steps", "60")
    assert (made["subject"], made["subject_inferred"]) == (SUBJECT, True)
    shown = cli.json("show", made["edit"])
    assert shown["subject"] == SUBJECT and shown["subject_inferred"] is True  # recorded as found, not given
    # keyed on the subject's tokens, not the prompt's ending: another relation of the same subject,
    # worded alike up to the subject, meets the key at distance 0 (a last-token key would not)
    fired = cli.json("generate", SAME_SUBJECT_FIRST, "--max-new-tokens", "1")
    assert fired["edit"] == made["edit"] and fired["distance"] < 1e-5
    printed = cli("edit", "--prompt", "Toko Yasuda plays the", "--target", "piano", "--steps", "60").stdout
    assert "subject 'Toko Yasuda' (found in the prompt" in printed
    given = cli.json("edit", "--prompt", "The Eiffel Tower is in", "--target", "Rome", "--subject", "Eiffel Tower", "--steps", "60")
    assert (given["subject"], given["subject_inferred"]) == ("Eiffel Tower", False)
    assert cli.json("show", given["edit"])["subject_inferred"] is False


def test_cli_edit_of_a_prompt_without_a_name_is_keyed_on_its_first_words_or_else_its_last_tokens(tmp_path, tiny_dirs):
    cli = Sola(tmp_path / "default")
    assert cli.json("init", "--model", str(tiny_dirs["llama"]), "--layer", "2", "--threshold", "0.05")["routing"]["key_function"] == "subject"
    made = cli.json("edit", "--prompt", NAMELESS, "--target", "Paris", "--steps", "60")
    assert (made["subject"], made["subject_inferred"], made["keyed_on_last_tokens"]) == ("beef bourguignon", True, False)
    # keyed on "beef bourguignon": another relation of it, worded alike up to the subject, meets the key
    fired = cli.json("generate", "beef bourguignon is served with", "--max-new-tokens", "1")
    assert fired["edit"] == made["edit"] and fired["distance"] < 1e-5
    printed = cli("edit", "--prompt", WORDLESS, "--target", "yes", "--steps", "60").stdout
    assert "no subject found in the prompt: keyed on its last tokens" in printed
    edit = cli.json("log")[0]
    wordless = cli.json("generate", WORDLESS, "--max-new-tokens", "1")
    assert wordless["edit"] is not None and wordless["edit"] != made["edit"] and wordless["distance"] < 1e-5
    shown = cli.json("show", wordless["edit"])
    assert shown["subject"] is None and shown["subject_inferred"] is False
    assert edit["op"] == "add" and len(cli.json("log")) == 3


def test_a_mean_keyed_registry_keeps_routing_by_its_mean_key_now_that_subject_is_the_default(tmp_path, tiny_dirs):
    assert RoutingConfig.from_record({"threshold": 0.04}).key_function == "mean"  # a record from before the field
    old = Sola(tmp_path / "old")
    routing = old.json("init", "--model", str(tiny_dirs["llama"]), "--key-function", "mean", "--layer", "2")["routing"]
    made = old.json("edit", "--prompt", PROMPT, "--target", "English", "--steps", "60")
    assert made["subject"] is None and made["subject_inferred"] is False  # a mean key infers no subject
    assert routing["key_function"] == "mean" and routing["key_dim"] == 32  # one vector, not two parts
    assert old.json("generate", PROMPT, "--max-new-tokens", "1")["edit"] == made["edit"]
    # another relation of the same subject, worded alike up to the subject: a subject key meets it
    # at distance 0 (test_cli_edit_without_a_subject_...); the mean key of the whole prompt does not
    other = old.json("generate", SAME_SUBJECT_FIRST, "--max-new-tokens", "1")
    assert other["edit"] is None or other["distance"] > 1e-3
    default = Sola(tmp_path / "new").json("init", "--model", str(tiny_dirs["llama"]), "--layer", "2")["routing"]
    assert default["key_function"] == "subject" and default["key_dim"] == 64


@pytest.mark.parametrize("name_ends", ["--no-name-ends", "--name-ends"])
def test_a_name_inside_another_edits_subject_does_not_take_its_prompt_nor_keep_it_after_a_revoke(tmp_path, tiny_dirs, name_ends):
    cli = Sola(tmp_path / "nested")
    recorded = cli.json("init", "--model", str(tiny_dirs["llama"]), "--layer", "2", "--threshold", "0.05", name_ends)["routing"]
    assert recorded["name_ends"] is (name_ends == "--name-ends")
    inner = cli.json("edit", "--prompt", "Manila is a twin city of", "--target", "Hamburg", "--steps", "60")
    outer = cli.json("edit", "--prompt", "Manila Bay, in", "--target", "Italy", "--steps", "60", "--force")
    assert (inner["subject"], outer["subject"]) == ("Manila", "Manila Bay")
    # without name ends the query of "Manila Bay, in" meets both keys at distance 0 (its "Manila"
    # window is the inner key's exact span) and the longer window decides, whichever edit came
    # first; with name ends its "Manila" goes on as "Manila Bay" and meets the inner key not at all
    fired = cli.json("generate", "Manila Bay, in", "--max-new-tokens", "1")
    assert fired["edit"] == outer["edit"] and fired["distance"] < 1e-5
    assert cli.json("generate", "Manila is a twin city of", "--max-new-tokens", "1")["edit"] == inner["edit"]
    cli("revoke", outer["edit"], "--reason", "wrong bay")
    held = cli.json("generate", "Manila Bay, in", "--max-new-tokens", "1")
    assert held["edit"] is None and held["nearest_edit"] == outer["edit"]  # its tombstone holds it for the base model
    base = Sola(tmp_path / "base")
    base("init", "--model", str(tiny_dirs["llama"]), "--layer", "2", "--threshold", "0.05")
    assert held["text"] == base.json("generate", "Manila Bay, in", "--max-new-tokens", "1")["text"]
    # blame agrees: without name ends the inner edit answered it until the outer one was added
    answers = [(e["op"], e["edit"]) for e in cli.json("blame", "Manila Bay, in")]
    earlier = [("add", inner["edit"])] if name_ends == "--no-name-ends" else []
    assert answers == earlier + [("add", outer["edit"]), ("revoke", None)]


def test_a_subject_registry_recorded_with_another_start_token_keeps_it(tiny):
    kind, model, tokenizer = tiny
    assert start_token_for(tokenizer) == NEWLINE == tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    recorded = {"layer": 2, "module": default_module_for(model), "rank": 4, "alpha": 4.0, "threshold": 0.2,
                "key_function": "subject", "duplicate_distance": 0.002, "radius_ratio": 0.5, "revoke_mode": "tombstone",
                "key_layers": [2, 1], "max_window": 8, "start_token": 0}  # <|endoftext|>, the earlier default
    routed = RoutedModel(model, tokenizer, RoutingConfig.from_record(recorded))
    plain = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    prefix = routed.prefix
    assert routed.encode(PROMPT).input_ids[0].tolist() == prefix + [0] + plain  # routes and edits as recorded
    assert routed.subject_span(PROMPT, SUBJECT)[0] == len(prefix) + 1


def test_a_registry_recorded_before_subject_keys_routes_by_its_mean_key_without_a_start_token(tmp_path, tiny_dirs, tiny):
    old_record = {"layer": 2, "module": "mlp.up_proj", "rank": 4, "alpha": 4.0, "threshold": 0.05, "key_function": "mean",
                  "duplicate_distance": 0.002, "radius_ratio": 0.5, "revoke_mode": "tombstone"}
    config = RoutingConfig.from_record(old_record)
    assert config.key_function == "mean" and config.start_token == -1 and config.read_layers == (2,)
    kind, model, tokenizer = tiny
    if kind != "llama":
        return
    routed = RoutedModel(model, tokenizer, config)
    plain = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    assert routed.encode(PROMPT).input_ids[0].tolist() == plain  # nothing put before the prompt
    states = routed.capture_keys(torch.tensor([plain]))
    mean = torch.nn.functional.normalize(states[2][0].mean(dim=0), dim=-1)
    assert torch.allclose(routing_key(routed, PROMPT, SUBJECT), mean, atol=1e-6)  # the subject is not used


def test_a_large_bank_searches_a_projection_first_and_still_finds_the_exhaustive_best():
    """From PROJECT_FROM keys on, the first stage scores tokens in the token parts' principal
    subspace; keys shaped like activations (most energy in few directions) lose nothing by it."""
    rng = np.random.default_rng(1)
    dim, count = 256, PROJECT_FROM

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    mixing = rng.normal(size=(dim, dim)) * (0.95 ** np.arange(dim))[:, None]  # a decaying spectrum
    token_parts, span_parts = unit(rng.normal(size=(count, dim)) @ mixing), unit(rng.normal(size=(count, dim)) @ mixing)
    keys = (np.concatenate([token_parts, span_parts], axis=1) / np.sqrt(2)).astype(np.float32)
    ids = np.arange(count, dtype=np.int64) + 7
    index = SubjectIndex(ids, keys)
    assert index.projection is not None and index.projection.shape == (dim, PROJECTED_DIMS)
    assert SubjectIndex(ids[:100], keys[:100]).projection is None  # a small bank searches in full
    targets = rng.choice(count, size=20, replace=False)
    queries = []
    for target in targets:  # the key's own parts among noise tokens, slightly perturbed
        tokens = unit(np.concatenate([unit(rng.normal(size=(6, dim)) @ mixing), token_parts[target:target + 1] + 0.05 * rng.normal(size=(1, dim))]))
        windows = unit(np.concatenate([unit(rng.normal(size=(10, dim)) @ mixing), span_parts[target:target + 1] + 0.05 * rng.normal(size=(1, dim))]))
        queries.append(SubjectQuery(tokens.astype(np.float32), windows.astype(np.float32)))
    sims, found = index.nearest(queries)
    assert found.tolist() == [int(ids[t]) for t in targets]
    assert np.allclose(sims, [subject_similarity(q, keys).max() for q in queries], atol=1e-5)  # the exact score decides
    again = SubjectIndex(ids, keys)
    assert np.array_equal(again.projection, index.projection)  # the same keys, the same index


def test_init_with_subject_keys_records_the_familys_subject_block_and_a_mean_key_its_own(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.conftest import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    deep = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=24,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                                        eos_token_id=0, bos_token_id=0, pad_token_id=0))
    deep.save_pretrained(tmp_path / "deep")
    tokenizer.save_pretrained(tmp_path / "deep")
    subject = Sola(tmp_path / "subject").json("init", "--model", str(tmp_path / "deep"), "--key-function", "subject")["routing"]
    assert (subject["layer"], subject["key_layers"]) == (20, [4, 3])
    default = Sola(tmp_path / "default").json("init", "--model", str(tmp_path / "deep"))["routing"]
    assert {k: v for k, v in default.items()} == subject  # a Llama-family registry is subject-keyed by default
    mean = Sola(tmp_path / "mean").json("init", "--model", str(tmp_path / "deep"), "--key-function", "mean")["routing"]
    assert (mean["layer"], mean["key_function"], mean["threshold"]) == (8, "mean", 0.04)
    assert (subject["name_ends"], mean["name_ends"]) == (True, False)  # a query meets subject keys at name ends
    chosen = Sola(tmp_path / "chosen").json("init", "--model", str(tmp_path / "deep"), "--key-function", "subject", "--layer", "8")
    assert chosen["routing"]["layer"] == 8  # a given --layer is kept


@pytest.mark.parametrize("text, carries_on", [(" Bowie", True), ("ie", True), ("3", True), (" ", False), (" 737", True),
                                               ("'s", False), (",", False), (" plays", False), ("\n", False),
                                               ("<|endoftext|>", False), ("?", False), ("", False)])
def test_a_token_carries_a_name_on_when_it_is_inside_a_word_or_a_capitalised_or_numbered_next_word(text, carries_on):
    assert continues_name(text) is carries_on


def name_ends_pair(model, tokenizer):
    """The same tiny model routed twice, with name ends off and on (each on its own copy)."""
    config = RoutingConfig(layer=2, module=default_module_for(model), threshold=0.05, key_function="subject",
                           key_layers=(2, 1), start_token=start_token_for(tokenizer))
    on = RoutedModel(copy.deepcopy(model), tokenizer, dataclasses.replace(config, name_ends=True))
    return RoutedModel(model, tokenizer, config), on


def test_with_name_ends_a_name_inside_a_longer_one_no_longer_meets_its_key(tiny):
    kind, model, tokenizer = tiny
    off, on = name_ends_pair(model, tokenizer)
    longer = "Danielle Darrieux's mother tongue is"  # "Danielle" goes on as "Danielle Darrieux"
    key = routing_key(off, "Danielle plays the", "Danielle")
    assert torch.equal(key, routing_key(on, "Danielle plays the", "Danielle"))  # the stored key is the same
    bank = EditBank.from_tensors({"e": (torch.zeros(4, off.layer.in_features), torch.zeros(off.layer.out_features, 4), key[None])})
    # a causal model's states at "Danielle" are the same in both prompts: without name ends they meet
    assert off.prompt_logits(longer, bank)[1].distances[0] < 1e-5
    shut = on.prompt_logits(longer, bank)[1]
    assert shut.edits == [None] and shut.distances[0] > 0.05
    literal = on.prompt_logits("Danielle plays the", bank)[1]
    assert literal.edits == ["e"] and literal.distances[0] < 1e-5  # the edit's own prompt still fires it
    # every path decides alike: routing alone, teacher forcing (whose target follows the prompt:
    # " Darrieux" must not stop "Danielle" from ending the query) and generation
    on.set_bank(bank)
    for prompt in ("Who is Danielle", longer):
        ids = on.encode(prompt).input_ids[0].tolist()
        alone = on.route(ids)
        forced = on.score(prompt, " Darrieux")[2]
        _, generated = on.generate([prompt], max_new_tokens=1)
        assert alone.edits == forced.edits == generated.edits
        assert np.isclose(alone.distances[0], forced.distances[0], atol=1e-6) and np.isclose(alone.distances[0], generated.distances[0], atol=1e-6)


def test_a_subject_registry_recorded_before_name_ends_routes_by_every_window(tiny):
    recorded = {"layer": 2, "module": "mlp.up_proj", "rank": 4, "alpha": 4.0, "threshold": 0.2, "key_function": "subject",
                "duplicate_distance": 0.002, "radius_ratio": 0.5, "revoke_mode": "tombstone", "key_layers": [2, 1],
                "max_window": 8, "start_token": NEWLINE, "after_target": "refresh"}
    assert RoutingConfig.from_record(recorded).name_ends is False
    assert RoutingConfig.from_record({**recorded, "name_ends": True}).name_ends is True
    with pytest.raises(ValueError, match="name_ends"):
        RoutingConfig.from_dict({**recorded, "name_ends": "yes"})


def test_name_ends_judge_a_bare_space_by_what_follows_it_and_never_look_past_the_query():
    rows = [["\n", "Boeing", " ", "7", "3", " is"], ["\n", "K", "ANU", " ", "ar", "e"]]
    assert name_ends(rows, None).tolist() == [[False, False, False, False, True, True], [False, False, True, False, False, True]]
    # the same "Boeing" with the next tokens outside the query (a target being scored): it may end there
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    assert name_ends(rows, mask)[0, 1].item() is True


def test_own_code_routes_a_default_registry_through_the_scope_it_builds_and_a_bare_scope_is_refused(tmp_path, tiny_dirs):
    """docs/api.md, "Using the model in your own code", on a default (subject, name ends) registry."""
    from sola.layer import RoutingScope
    from sola.workspace import Workspace

    cli = Sola(tmp_path / "own")
    cli("init", "--model", str(tiny_dirs["llama"]), "--layer", "2", "--threshold", "0.05")
    made = cli.json("edit", "--prompt", PROMPT, "--target", "English", "--subject", SUBJECT, "--steps", "60")
    with Workspace.open(tmp_path / "own") as workspace:
        routed, _ = workspace.routed_at()
        model, tok = routed.model, routed.tokenizer
        ids = routed.encode(PROMPT).input_ids
        mask = torch.ones_like(ids)
        scope = routed.scope(ids, mask)
        with torch.no_grad(), routed.routing_call(scope):
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1, do_sample=False, pad_token_id=tok.eos_token_id)
        assert scope.decision.edits == [made["edit"]] and scope.decision.distances[0] < 1e-5
        with pytest.raises(RuntimeError, match="name_ends"), torch.no_grad(), routed.routing_call(RoutingScope(query_mask=mask)):
            model(input_ids=ids)


def test_token_texts_keep_the_leading_space_a_sentencepiece_decoder_strips_from_a_lone_token():
    """Llama 2 / Mistral tokenizers decode "▁Bowie" alone as "Bowie"; read inside a sequence it is
    " Bowie", the next word of a name, not a piece of "David"."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    from tests.conftest import CORPUS

    backend = Tokenizer(BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    backend.train_from_iterator(CORPUS * 20 + ["David Bowie plays the guitar."] * 20,
                                BpeTrainer(vocab_size=300, special_tokens=["<unk>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    ids = tokenizer("David Bowie plays", add_special_tokens=False)["input_ids"]
    texts = token_texts(tokenizer, ids)
    assert "".join(texts[i] for i in ids) == " David Bowie plays"
    first_of_bowie = next(i for i in ids if texts[i].startswith(" B"))
    assert not tokenizer.decode([first_of_bowie]).startswith(" ")  # what decoding it alone would have read
    ends = name_ends([[texts[i] for i in ids]], None)[0].tolist()
    david_ends_at = [k for k, i in enumerate(ids) if texts[i].startswith(" B")][0] - 1
    assert ends[david_ends_at] is False and ends[-1] is True


def test_a_subject_that_stops_inside_a_longer_name_is_refused_before_any_work(tmp_path, tiny_dirs):
    cli = Sola(tmp_path / "inside")
    cli("init", "--model", str(tiny_dirs["llama"]), "--layer", "2", "--threshold", "0.05")
    error = cli.fails("edit", "--prompt", "Manila Bay, in", "--target", "Italy", "--subject", "Manila")
    assert "ends inside a longer name" in error and "--no-name-ends" in error
    error = cli.fails("edit", "--prompt", "Manila is a twin city of", "--target", "Hamburg", "--subject", "Manila",
                      "--rephrase", "Manila Bay is a twin city of")
    assert "rephrase 1" in error and "ends inside a longer name" in error
    assert cli.json("log")[0]["op"] == "init"  # nothing was edited
    made = cli.json("edit", "--prompt", "Manila Bay, in", "--target", "Italy", "--subject", "Manila Bay", "--steps", "60")
    assert cli.json("generate", "Manila Bay, in", "--max-new-tokens", "1")["edit"] == made["edit"]
    lenient = Sola(tmp_path / "lenient")
    lenient("init", "--model", str(tiny_dirs["llama"]), "--layer", "2", "--threshold", "0.05", "--no-name-ends")
    lenient("edit", "--prompt", "Manila Bay, in", "--target", "Italy", "--subject", "Manila", "--steps", "60")
    assert "subject keys only" in Sola(tmp_path / "mean").fails("init", "--model", str(tiny_dirs["llama"]),
                                                                "--key-function", "mean", "--name-ends")
    assert "subject keys only" in Sola(tmp_path / "gpt2").fails("init", "--model", str(tiny_dirs["gpt2"]), "--name-ends")
    assert not (tmp_path / "mean").exists() and not (tmp_path / "gpt2").exists()
