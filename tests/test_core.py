"""The inference core (sola/core) computes what transformers computes: the same logits, greedy
tokens, token ids and routed generations, and `sola generate` runs it without transformers."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from sola.cli import main
from sola.config import RoutingConfig, TrainConfig
from sola.core.load import load_llama, unsupported
from sola.layer import EditBank
from sola.modelio import ModelError, load_for_inference
from sola.routed import RoutedModel
from sola.train import train_edit

PROMPT = "The capital of France is"
PROMPTS = [PROMPT, "Toko Yasuda plays the", "Apple was founded by", "What is the twin city of Lyon? It is"]
TEXTS = ["The capital of France is Paris.", "  two  spaces\tand a tab\nnewline", "Ünïcødé — “quotes” and ☃ 🎉 日本語",
         "Danielle Darrieux's mother tongue", "<|endoftext|> inside", "", "x" * 50]


def hf_pair(directory: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(directory)


@pytest.fixture(scope="module")
def tied_llama3_dir(tmp_path_factory: pytest.TempPathFactory, tiny_dirs: dict[str, Path]) -> Path:
    """A tiny Llama with the settings the default fixture leaves at their defaults: tied
    embeddings, Llama 3.1 RoPE scaling, attention biases, one key/value head for four queries."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=1, max_position_embeddings=128, initializer_range=0.2, tie_word_embeddings=True,
                         attention_bias=True, eos_token_id=0, bos_token_id=0, pad_token_id=0,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    directory = tmp_path_factory.mktemp("tiny-llama-tied")
    LlamaForCausalLM(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(params=["llama", "tied-llama3"])
def llama_dir(request: pytest.FixtureRequest, tiny_dirs: dict[str, Path]) -> Path:
    return tiny_dirs["llama"] if request.param == "llama" else request.getfixturevalue("tied_llama3_dir")


def padded(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def test_core_logits_equal_transformers_with_and_without_left_padding(llama_dir):
    reference, tokenizer = hf_pair(llama_dir)
    core, _ = load_llama(llama_dir)
    assert type(core).__module__ == "sola.core.llama"
    assert {n for n, _ in core.named_parameters()} <= {n for n, _ in reference.named_parameters()}
    ids, mask = padded(tokenizer, PROMPTS)
    with torch.no_grad():
        single = torch.tensor([tokenizer(PROMPTS[-1], add_special_tokens=False)["input_ids"]])
        torch.testing.assert_close(core(input_ids=single).logits, reference(input_ids=single).logits, rtol=1e-5, atol=1e-5)
        expected = reference(input_ids=ids, attention_mask=mask).logits
        found = core(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(found[real], expected[real], rtol=1e-5, atol=1e-5)


def test_core_greedy_tokens_equal_transformers_generate(llama_dir):
    reference, tokenizer = hf_pair(llama_dir)
    core, _ = load_llama(llama_dir)
    ids, mask = padded(tokenizer, PROMPTS)
    with torch.no_grad():
        expected = reference.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, pad_token_id=0, do_sample=False)
        found = core.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, pad_token_id=0, do_sample=False)
        one = torch.tensor([tokenizer(PROMPT, add_special_tokens=False)["input_ids"]])
        expected_one = reference.generate(input_ids=one, attention_mask=torch.ones_like(one), max_new_tokens=12, pad_token_id=0, do_sample=False)
        found_one = core.generate(input_ids=one, attention_mask=torch.ones_like(one), max_new_tokens=12, pad_token_id=0)
    assert found.tolist() == expected.tolist()
    assert found_one.tolist() == expected_one.tolist()
    # rows that end at different steps: an ended row continues with padding, all ended stops
    width = ids.shape[1]
    stop = [expected[row, width + 1 + row].item() for row in range(len(PROMPTS))]
    with torch.no_grad():
        expected = reference.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, pad_token_id=0, eos_token_id=stop, do_sample=False)
        found = core.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, pad_token_id=0, eos_token_id=stop)
    assert found.tolist() == expected.tolist()
    assert found.shape[1] < width + 12 and 0 in found[:, width:].tolist()[0]
    with pytest.raises(ValueError, match="greedily"):
        core.generate(input_ids=one, max_new_tokens=2, do_sample=True, temperature=0.7)


def test_core_tokenizer_gives_transformers_ids_offsets_decoding_and_special_ids(tiny_dirs):
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    _, tokenizer = load_llama(tiny_dirs["llama"])
    for text in TEXTS:
        expected = reference(text, add_special_tokens=False, return_offsets_mapping=True)
        found = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        assert found["input_ids"] == expected["input_ids"], text
        assert [tuple(o) for o in found["offset_mapping"]] == [tuple(o) for o in expected["offset_mapping"]], text
        ids = found["input_ids"] + [reference.eos_token_id]
        for skip in (True, False):
            assert tokenizer.decode(ids, skip_special_tokens=skip) == reference.decode(ids, skip_special_tokens=skip), text
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == \
        (reference.bos_token_id, reference.eos_token_id, reference.pad_token_id)
    assert tokenizer.get_vocab() == reference.get_vocab() and len(tokenizer) == len(reference)
    as_tensors, expected = tokenizer(PROMPT, add_special_tokens=False, return_tensors="pt"), reference(PROMPT, add_special_tokens=False, return_tensors="pt")
    assert {k: v.tolist() for k, v in as_tensors.items()} == {k: v.tolist() for k, v in expected.items()}
    with pytest.raises(ValueError, match="without special tokens"):
        tokenizer(PROMPT)


def layer_calls(routed: RoutedModel, bank: EditBank, prompts: list[str]) -> tuple[list[str], list[str | None], list[bool]]:
    """Generated texts, the edit each row routed to, and per forward pass whether the routed
    layer added a delta to any row."""
    seen: list[bool] = []

    def record(module, args, output):
        seen.append(not torch.equal(output, module.base(args[0])))

    handle = routed.layer.register_forward_hook(record)
    try:
        texts, routing = routed.generate(prompts, max_new_tokens=8, bank=bank)
    finally:
        handle.remove()
    return texts, routing.edits, seen


@pytest.mark.parametrize("key_function", ["mean", "subject"])
@pytest.mark.parametrize("after_target", ["refresh", "stop", "keep"])
def test_an_edit_trained_on_transformers_fires_and_generates_the_same_in_the_core(tiny_dirs, key_function, after_target):
    reference, tokenizer = hf_pair(tiny_dirs["llama"])
    settings = {"key_layers": (2, 1), "start_token": 0, "threshold": 0.2} if key_function == "subject" else {"threshold": 0.05}
    config = RoutingConfig(layer=2, module="mlp.up_proj", key_function=key_function, after_target=after_target, **settings)
    trained_on = RoutedModel(reference, tokenizer, config)
    trained = train_edit(trained_on, PROMPT, "Madrid", config=TrainConfig(max_steps=100, lr=0.1, stop_loss=2.0),
                         subject="France" if key_function == "subject" else None)
    bank = dataclasses.replace(EditBank.from_tensors({"e": (trained.lora_a, trained.lora_b, trained.keys)}), answers={"e": (PROMPT, "Madrid")})
    core = RoutedModel(*load_llama(tiny_dirs["llama"]), config)
    for prompts in ([PROMPT], PROMPTS):
        expected, found = layer_calls(trained_on, bank, prompts), layer_calls(core, bank, prompts)
        assert expected[1][0] == "e" and expected[0][0].startswith(" Madrid")
        assert found == expected
    if after_target != "keep":  # the LoRA went off once " Madrid" was generated, in both
        assert not all(expected[2])


def test_load_for_inference_keeps_the_identity_check_and_other_families_on_transformers(tiny_dirs):
    from sola.modelio import identify

    identity, _ = identify(str(tiny_dirs["llama"]))
    model, _, found = load_for_inference(str(tiny_dirs["llama"]), expected_sha256=identity.sha256)
    assert type(model).__module__ == "sola.core.llama" and found == identity
    with pytest.raises(ModelError, match="edits were made on"):
        load_for_inference(str(tiny_dirs["llama"]), expected_sha256="0" * 64)
    assert unsupported(tiny_dirs["gpt2"]) == "model type 'gpt2' is not llama"
    gpt2, _, _ = load_for_inference(str(tiny_dirs["gpt2"]))
    assert type(gpt2).__module__.startswith("transformers.")


def test_a_llama_with_settings_the_core_lacks_loads_through_transformers(tmp_path, tiny_dirs):
    import shutil

    directory = tmp_path / "llama"
    shutil.copytree(tiny_dirs["llama"], directory)
    settings = json.loads((directory / "generation_config.json").read_text())
    (directory / "generation_config.json").write_text(json.dumps(dict(settings, repetition_penalty=1.3)))
    assert unsupported(directory) == "generation settings ['repetition_penalty']"
    model, _, _ = load_for_inference(str(directory))
    assert type(model).__module__.startswith("transformers.")
    (directory / "generation_config.json").write_text(json.dumps(settings))
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(dict(config, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0})))
    assert unsupported(directory) == "RoPE type 'yarn'"


FRESH_PROCESS = """
import gc, json, sys
sys.argv = ['sola', *json.loads(sys.argv[1])]
from sola.cli import entry
try:
    entry()
except SystemExit as done:
    assert not done.code, done.code
print(json.dumps({'transformers': sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'),
                  'torch._dynamo': 'torch._dynamo' in sys.modules, 'frozen': gc.get_freeze_count() > 0}), file=sys.stderr)
"""


def fresh_process(args: list[str]) -> dict:
    """The --json output of one sola command run as the `sola` executable runs it (sola.cli.entry)
    in a new interpreter, which must have imported neither transformers nor torch._dynamo
    (building the core on the meta device can pull it in), and which leaves the garbage
    collector frozen for a quick exit."""
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, json.dumps([*args, "--json"])], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-1500:]
    assert json.loads(result.stderr.strip().splitlines()[-1]) == {"transformers": [], "torch._dynamo": False, "frozen": True}
    return json.loads(result.stdout)


def test_read_only_commands_run_without_transformers_and_answer_as_the_transformers_model(tmp_path, tiny_dirs):
    """`generate` (on a registry, and on an exported snapshot) and `blame --generate` load the
    core; their answers are the transformers model's."""
    from sola.workspace import Workspace

    registry = str(tmp_path / "r")
    runner = CliRunner()
    for args in (["init", "--model", str(tiny_dirs["llama"]), "--threshold", "0.001"],
                 ["edit", "--prompt", PROMPT, "--target", "Madrid", "--steps", "100"], ["export", "main", str(tmp_path / "snap")]):
        assert runner.invoke(main, ["--registry", registry, *args], catch_exceptions=False).exit_code == 0
    generated = fresh_process(["--registry", registry, "generate", PROMPT, "--max-new-tokens", "6"])
    from_snapshot = fresh_process(["generate", PROMPT, "--snapshot", str(tmp_path / "snap"), "--max-new-tokens", "6"])
    [blamed] = fresh_process(["--registry", registry, "blame", PROMPT, "--generate", "--max-new-tokens", "6"])
    with Workspace.open(Path(registry)) as workspace:
        assert type(workspace.serving_model().model).__module__ == "sola.core.llama"
        trained_on = workspace.model()  # the transformers model, as training loads it
        assert workspace.routed_at()[0] is trained_on  # once loaded, inference uses it too
        [expected] = workspace.generate([PROMPT], max_new_tokens=6)
    assert expected.edit is not None and expected.text.startswith(" Madrid")
    assert (generated["edit"], generated["text"]) == (from_snapshot["edit"], from_snapshot["text"]) == (expected.edit, expected.text)
    assert (blamed["edit"], blamed["text"]) == (expected.edit, expected.text)


@pytest.mark.slow
def test_default_model_generates_through_the_core_as_through_transformers_with_an_edit(tmp_path):
    """SmolLM2-135M-Instruct: `sola generate` (the core, a fresh process) and the transformers
    model give the same text for an edited prompt, a paraphrase and an unrelated prompt."""
    from sola.workspace import Workspace

    registry = tmp_path / "r"
    runner = CliRunner()
    fact = "The Eiffel Tower is located in the city of"
    for args in (["init"], ["edit", "--prompt", fact, "--target", "Rome", "--reason", "core test"]):
        assert runner.invoke(main, ["--registry", str(registry), *args], catch_exceptions=False).exit_code == 0
    prompts = [fact, "The Eiffel Tower stands in the city of", "The capital of Japan is"]
    found = [fresh_process(["--registry", str(registry), "generate", prompt, "--max-new-tokens", "6"]) for prompt in prompts]
    with Workspace.open(registry) as workspace:
        workspace.model()
        expected = [workspace.generate([prompt], max_new_tokens=6)[0] for prompt in prompts]
    assert found[0]["edit"] is not None and "Rome" in found[0]["text"]
    assert [(g["text"], g["edit"]) for g in found] == [(e.text, e.edit) for e in expected]
