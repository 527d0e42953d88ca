"""Model-family facts (sola.arch) on tiny models: what Gemma 3 needs beyond Llama's layout.

A tiny Gemma 3 (alternating sliding and full attention with different RoPE bases, a <bos>
tokenizer) shows the two facts only that family has: prompts start with <bos>, and each block's
attention kind is chosen by its position in the block list, which the cached-lower-blocks
training path must keep.
"""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from sola.cli import main
from sola.config import SUBJECT_ROUTING_DEFAULTS, RoutingConfig, TrainConfig
from sola.routed import RoutedModel
from sola.train import train_edit

PROMPT = "The capital of France is"
TRAIN = TrainConfig(max_steps=100, lr=0.1, stop_loss=2.0)


def load(directory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(directory)


def cli(registry, *args: str):
    result = CliRunner().invoke(main, ["--registry", str(registry), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_gemma_prompts_start_with_bos_and_llama_prompts_do_not(tiny_gemma_dir, tiny_dirs):
    model, tokenizer = load(tiny_gemma_dir)
    gemma = RoutedModel(model, tokenizer, RoutingConfig(layer=2))
    plain = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    assert gemma.encode(PROMPT).input_ids[0].tolist() == [tokenizer.bos_token_id] + plain
    assert gemma.encode(PROMPT, "Madrid").prompt_len == len(plain) + 1

    model, tokenizer = load(tiny_dirs["llama"])
    llama = RoutedModel(model, tokenizer, RoutingConfig(layer=2))
    assert llama.encode(PROMPT).input_ids[0].tolist() == tokenizer(PROMPT, add_special_tokens=False)["input_ids"]


def test_cached_lower_blocks_keep_each_gemma_block_at_its_position(tiny_gemma_dir):
    """Block 2 uses sliding attention and block 3 full: moved to positions 1 and 2 of a shorter
    list they would swap window and RoPE base, and train another LoRA than the full forward."""
    model, tokenizer = load(tiny_gemma_dir)
    routed = RoutedModel(model, tokenizer, RoutingConfig(layer=2, threshold=0.05))
    cached = train_edit(routed, PROMPT, "Madrid Madrid", config=TRAIN)
    full = train_edit(routed, PROMPT, "Madrid Madrid", config=TRAIN, cache_lower_blocks=False)
    assert cached.steps == full.steps and cached.steps > 0
    torch.testing.assert_close(cached.lora_b, full.lora_b, rtol=1e-4, atol=1e-5)
    assert len(routed.model.model.layers) == 4  # the original blocks are back


def test_init_records_the_family_and_its_defaults(tmp_path, tiny_gemma_dir, tiny_dirs):
    made = json.loads(cli(tmp_path / "gemma", "init", "--model", str(tiny_gemma_dir), "--json").output)["routing"]
    assert (made["family"], made["module"], made["block_path"]) == ("gemma3", "mlp.up_proj", "model.layers")
    assert made["layer"] == 2  # the family default is past this 4-block model: its middle block
    made = json.loads(cli(tmp_path / "gpt2", "init", "--model", str(tiny_dirs["gpt2"]), "--json").output)["routing"]
    assert (made["family"], made["module"], made["block_path"]) == ("gpt2", "mlp.c_fc", "transformer.h")


def test_a_gemma_registry_is_subject_keyed_at_gemmas_own_subject_threshold(tmp_path, tiny_gemma_dir, tiny_dirs):
    """Subject keys are Gemma 3's default too, but they lie closer together than on SmolLM2, so
    the family table's subject threshold replaces the shared one; a Llama subject registry keeps
    the shared one, and `--key-function mean` still gives Gemma's mean-key defaults."""
    from sola.arch import by_name

    gemma = json.loads(cli(tmp_path / "gemma", "init", "--model", str(tiny_gemma_dir), "--key-function", "subject",
                           "--json").output)["routing"]
    assert (gemma["threshold"], gemma["radius_ratio"]) == (0.04, 1.0) == tuple(by_name("gemma3").subject_routing_defaults.values())
    assert gemma["key_function"] == "subject" and gemma["start_token"] == -1  # its prompts already open with <bos>
    assert json.loads(cli(tmp_path / "gemma-default", "init", "--model", str(tiny_gemma_dir), "--json").output)["routing"] == gemma
    mean = json.loads(cli(tmp_path / "gemma-mean", "init", "--model", str(tiny_gemma_dir), "--key-function", "mean", "--json").output)
    assert mean["routing"]["threshold"] == 0.035 and mean["routing"]["key_function"] == "mean"
    llama = json.loads(cli(tmp_path / "llama", "init", "--model", str(tiny_dirs["llama"]), "--key-function", "subject",
                           "--json").output)["routing"]
    assert llama["threshold"] == SUBJECT_ROUTING_DEFAULTS["threshold"] == 0.14


def test_exported_gemma_edit_loads_with_stock_peft_and_matches_the_routed_model(tmp_path, tiny_gemma_dir):
    from peft import PeftModel

    from sola.workspace import Workspace

    registry = tmp_path / "reg"
    cli(registry, "init", "--model", str(tiny_gemma_dir), "--layer", "1")
    made = json.loads(cli(registry, "edit", "--prompt", PROMPT, "--target", "Madrid", "--steps", "100", "--json").output)
    cli(registry, "export-edit", made["edit"], str(tmp_path / "adapter"))
    with Workspace.open(registry) as workspace:
        routed, _ = workspace.routed_at()
        routed_logits, routing = routed.prompt_logits(PROMPT)
        ids = routed.encode(PROMPT).input_ids
        assert routing.edits == [made["edit"]]

    base, _ = load(tiny_gemma_dir)
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits[0, -1]
        peft_logits = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()(input_ids=ids).logits[0, -1]
    assert not torch.allclose(peft_logits, base_logits, atol=1e-3)
    torch.testing.assert_close(peft_logits, routed_logits, rtol=1e-4, atol=1e-5)


def test_a_subject_keyed_llama_registry_edits_the_familys_subject_block():
    from transformers import LlamaConfig, LlamaForCausalLM

    from sola.arch import by_name, routing_defaults

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=24, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=32)
    model = LlamaForCausalLM(config)
    llama = by_name("llama")
    assert routing_defaults(model, "mean")["layer"] == llama.routing_defaults["layer"] == 8  # the mean key's block
    subject = routing_defaults(model, "subject")
    assert subject["layer"] == llama.subject_routing_defaults["layer"] == 20
    assert routing_defaults(model) == subject  # the family's default key function is the subject key
    assert subject["key_function"] == "subject" and subject["threshold"] == SUBJECT_ROUTING_DEFAULTS["threshold"] == 0.14
    assert RoutingConfig.from_dict(subject | {"key_function": "subject"}).subject_layers == (4, 3)  # keys stay low
    small = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=6,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32))
    assert routing_defaults(small, "subject")["layer"] == 3  # past the model: its middle block
