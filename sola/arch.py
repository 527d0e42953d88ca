"""The one table of model-family facts sola needs: where the blocks are, which projection a
family edits by default, and how that projection stores its weight.

Everything that must know a family (attaching the routed layer, running the upper stack,
recording a registry's routing, exporting a PEFT adapter) asks this module; nothing sniffs the
model elsewhere. Importing it loads no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Architecture:
    name: str
    container: str  # attribute path from the causal LM to the module holding the block list
    blocks: str  # attribute of the container that is the nn.ModuleList of blocks
    default_module: str  # the MLP input projection (the key lives at its input)
    fan_in_fan_out: bool  # weight stored (in, out): GPT-2's Conv1D; PEFT needs to know

    @property
    def block_path(self) -> str:
        return f"{self.container}.{self.blocks}"


ARCHITECTURES = (
    Architecture("llama", "model", "layers", "mlp.up_proj", False),  # Llama, SmolLM2, Qwen, Mistral, Gemma 3 (text)
    Architecture("gpt2", "transformer", "h", "mlp.c_fc", True),
)


def _attribute(root: Any, path: str) -> Any:
    for name in path.split("."):
        root = getattr(root, name, None)
        if root is None:
            return None
    return root


def architecture_of(model: Any) -> Architecture:
    """The family of a loaded causal LM, by where its blocks live."""
    from torch import nn

    for arch in ARCHITECTURES:
        container = _attribute(model, arch.container)
        if container is not None and isinstance(getattr(container, arch.blocks, None), nn.ModuleList):
            return arch
    raise TypeError(f"unsupported model architecture {type(model).__name__}: "
                    f"no {' or '.join(a.block_path for a in ARCHITECTURES)}")


def by_block_path(block_path: str) -> Architecture:
    """The family a registry recorded (its routing record's `block_path`)."""
    for arch in ARCHITECTURES:
        if arch.block_path == block_path:
            return arch
    raise ValueError(f"unknown block path {block_path!r}")


def decoder_blocks(model: Any) -> Any:
    arch = architecture_of(model)
    return getattr(_attribute(model, arch.container), arch.blocks)


def replace_blocks(model: Any, blocks: Any) -> None:
    arch = architecture_of(model)
    setattr(_attribute(model, arch.container), arch.blocks, blocks)


__all__ = ["Architecture", "ARCHITECTURES", "architecture_of", "by_block_path", "decoder_blocks", "replace_blocks"]
