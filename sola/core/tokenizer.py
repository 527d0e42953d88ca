"""A model directory's tokenizer from its `tokenizer.json`, through the `tokenizers` library.

transformers' fast tokenizers are this same library underneath; for the tokenizer classes
that add nothing of their own (`unsupported` names the rest) the ids, offsets and decoded text
are the same (tests/test_core.py). Only what sola asks of a tokenizer is here: the ids of a
text without special tokens (with offsets for subject spans), decoding, the vocabulary and
the special token ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# tokenizer classes that transformers 5 builds straight from tokenizer.json, changing nothing
PLAIN_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def _config(directory: Path) -> dict[str, Any]:
    path = directory / "tokenizer_config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def unsupported(directory: Path) -> str | None:
    """Why this directory's tokenizer cannot be read here (None when it can)."""
    if not (directory / "tokenizer.json").is_file():
        return "no tokenizer.json"
    config = _config(directory)
    kind = config.get("tokenizer_class")
    if kind not in PLAIN_CLASSES:
        return f"tokenizer class {kind!r}"
    if config.get("clean_up_tokenization_spaces"):
        return "clean_up_tokenization_spaces"
    return None


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json records it: a string or a serialised AddedToken."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """The subset of a transformers tokenizer that sola's RoutedModel uses."""

    def __init__(self, directory: Path) -> None:
        from tokenizers import Tokenizer as Backend

        directory = Path(directory)
        reason = unsupported(directory)
        if reason is not None:
            raise ValueError(f"{directory}: the inference core cannot read this tokenizer ({reason})")
        self.backend = Backend.from_file(str(directory / "tokenizer.json"))
        config = _config(directory)
        self.bos_token_id = self._special(config.get("bos_token"))
        self.eos_token_id = self._special(config.get("eos_token"))
        self.pad_token_id = self._special(config.get("pad_token"))

    def _special(self, value: Any) -> int | None:
        text = _token_text(value)
        return None if text is None else self.backend.token_to_id(text)

    def __call__(self, text: str, add_special_tokens: bool = True, return_offsets_mapping: bool = False,
                 return_tensors: str | None = None) -> dict[str, Any]:
        """{"input_ids", "attention_mask"} (and "offset_mapping": [(start, end), ...]) of one
        text, as lists or, with return_tensors="pt", (1, n) tensors. Only
        `add_special_tokens=False` is implemented: sola adds its own prefix tokens."""
        if add_special_tokens:
            raise ValueError("the inference core's tokenizer encodes without special tokens only")
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors={return_tensors!r}: only 'pt' is implemented")
        encoding = self.backend.encode(text, add_special_tokens=False)
        found: dict[str, Any] = {"input_ids": list(encoding.ids), "attention_mask": [1] * len(encoding.ids)}
        if return_offsets_mapping:
            found["offset_mapping"] = [tuple(pair) for pair in encoding.offsets]
        if return_tensors == "pt":
            import torch

            found = {name: torch.tensor([value]) for name, value in found.items()}
        return found

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def get_vocab(self) -> dict[str, int]:
        return self.backend.get_vocab(with_added_tokens=True)

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)
