"""Reading a Hugging Face model directory (config.json, *.safetensors, tokenizer.json) into the
inference core, with the `safetensors` and `tokenizers` packages only.

`unsupported` says up front whether the core can run a directory exactly as transformers
would (the model's config, its generation settings and its tokenizer); sola.modelio falls
back to transformers when it cannot. The weights are only ever read from safetensors files.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from sola.core import llama, tokenizer as tokenization

# generation_config.json fields greedy decoding either implements (the special token ids) or
# ignores as transformers does (sampling settings, the length that max_new_tokens replaces)
GENERATION_FIELDS = frozenset({"_from_model_config", "transformers_version", "bos_token_id", "eos_token_id", "pad_token_id", "use_cache",
                     "output_attentions", "output_hidden_states", "return_dict_in_generate", "max_length", "do_sample",
                     "temperature", "top_p", "top_k"})


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def unsupported(directory: Path) -> str | None:
    """Why the core cannot serve this model directory as transformers would (None when it can)."""
    directory = Path(directory)
    config = _json(directory / "config.json")
    reason = llama.unsupported(config) or tokenization.unsupported(directory)
    if reason is not None:
        return reason
    extra = set(_json(directory / "generation_config.json")) - GENERATION_FIELDS
    if extra:
        return f"generation settings {sorted(extra)}"
    return None


def read_config(directory: Path) -> llama.LlamaConfig:
    """The model's config; generation stops at generation_config.json's end tokens when it names
    them (transformers' `generate` reads them from there first)."""
    config = llama.LlamaConfig.from_dict(_json(directory / "config.json"))
    generation = _json(directory / "generation_config.json")
    if "eos_token_id" in generation:
        config = dataclasses.replace(config, eos_token_id=generation["eos_token_id"])
    return config


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the directory's safetensors files, as float32 (sola runs models in float32)."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in sorted(Path(directory).glob("*.safetensors")):
        state.update(load_file(str(path)))
    return {name: tensor.to(torch.float32) for name, tensor in state.items()}


def build(config: llama.LlamaConfig, state: dict[str, torch.Tensor]) -> llama.LlamaForCausalLM:
    """The model holding exactly `state` (a weight missing or left over is an error). Built on
    the meta device so no weight is initialised only to be overwritten."""
    if config.tie_word_embeddings:
        state = {name: tensor for name, tensor in state.items() if name != "lm_head.weight"}
    with torch.device("meta"):
        model = llama.LlamaForCausalLM(config)
    expected = {name for name, _ in model.named_parameters()}
    if config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"weights do not fit a Llama of this config: missing {missing[:4]}, unexpected {unexpected[:4]}")
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    return model.eval()


def load_llama(directory: Path) -> tuple[llama.LlamaForCausalLM, tokenization.Tokenizer]:
    """(model in float32 eval mode, tokenizer) of a Llama model directory."""
    directory = Path(directory)
    reason = unsupported(directory)
    if reason is not None:
        raise ValueError(f"{directory}: the inference core cannot run this model ({reason})")
    return build(read_config(directory), read_weights(directory)), tokenization.Tokenizer(directory)
