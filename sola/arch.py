"""The one table of model-family facts sola needs: where the blocks are, which projection a
family edits by default and how that projection stores its weight, whether its prompts begin
with a BOS token, how long a context it has, and the routing defaults chosen for it.

Everything that must know a family (attaching the routed layer, tokenising prompts, running
the upper stack, choosing `init`'s defaults, recording a registry's routing, exporting a PEFT
adapter) asks this module; nothing sniffs the model elsewhere. Importing it loads no torch.

A family is recognised by its `config.model_type`; a model of another type is matched by where
its blocks live (a Qwen or Mistral model is a Llama for sola), with the structural family's
facts and no routing defaults of its own beyond the module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Architecture:
    name: str
    model_types: tuple[str, ...]  # config.model_type values that are this family
    container: str  # attribute path from the causal LM to the module holding the block list
    blocks: str  # attribute of the container that is the nn.ModuleList of blocks
    default_module: str  # the MLP input projection (the key lives at its input)
    fan_in_fan_out: bool  # weight stored (in, out): GPT-2's Conv1D; PEFT needs to know
    starts_with_bos: bool = False  # trained with <bos> first: without it the output degenerates
    context_attribute: str = "max_position_embeddings"  # the config field holding the position limit
    # routing settings chosen by a routing study on this family's model (docs/results.md); what
    # is not named here takes RoutingConfig's default. Read-only.
    routing_defaults: dict[str, Any] = field(default_factory=dict)
    # what a subject-keyed registry (`--key-function subject`) takes instead: its keys read blocks
    # 4 and 3 whatever block is edited, so the edited block is free to be the one whose LoRA
    # carries the target to paraphrases best (the value-side layer study, docs/results.md)
    subject_routing_defaults: dict[str, Any] = field(default_factory=dict)
    # the key function a new registry on this family takes when none is given: "subject" where
    # a study on the family's model measured it (paraphrase reach against relation specificity,
    # docs/results.md "One default for every kind of fact"), else "mean"
    default_key_function: str = "mean"
    studied_on: str | None = None  # the model the routing defaults were measured on

    @property
    def block_path(self) -> str:
        return f"{self.container}.{self.blocks}"


ARCHITECTURES = (
    # Gemma 3 text (gemma-3-270m): same block layout as Llama, but prompts need <bos>
    # ("The capital of France is" -> " France. The The The ..." without it) and each block's
    # attention kind (sliding or full, with its own RoPE base) is looked up by block position.
    # Defaults: the routing studies on gemma-3-270m (docs/results.md, section 8). Subject keys are
    # its default as on Llama (100-edit streams: CounterFact generalisation 0.04 -> 0.58, zsRE
    # 0.42 -> 0.80), but they sit closer together than SmolLM2's: at SmolLM2's subject threshold
    # (0.14) a third of unrelated CounterFact prompts fire, at 0.04 under 1% in every bank.
    Architecture("gemma3", ("gemma3_text", "gemma3"), "model", "layers", "mlp.up_proj", False, starts_with_bos=True,
                 routing_defaults={"layer": 12, "threshold": 0.035, "radius_ratio": 0.5},
                 subject_routing_defaults={"threshold": 0.04, "radius_ratio": 1.0}, default_key_function="subject",
                 studied_on="gemma-3-270m"),
    # Llama, SmolLM2, Qwen, Mistral. Defaults: the routing study on SmolLM2-135M (results.md, section 3).
    Architecture("llama", ("llama",), "model", "layers", "mlp.up_proj", False,
                 routing_defaults={"layer": 8, "threshold": 0.04, "radius_ratio": 0.5},
                 subject_routing_defaults={"layer": 20}, default_key_function="subject", studied_on="SmolLM2-135M-Instruct"),
    Architecture("gpt2", ("gpt2",), "transformer", "h", "mlp.c_fc", True, context_attribute="n_positions"),
)


def _attribute(root: Any, path: str) -> Any:
    for name in path.split("."):
        root = getattr(root, name, None)
        if root is None:
            return None
    return root


def by_name(name: str) -> Architecture:
    for arch in ARCHITECTURES:
        if arch.name == name:
            return arch
    raise ValueError(f"unknown model family {name!r}")


def architecture_of(model: Any) -> Architecture:
    """The family of a loaded causal LM: by its config's model type, else by where its blocks live."""
    from torch import nn

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for arch in ARCHITECTURES:
        if model_type in arch.model_types:
            return arch
    for arch in ARCHITECTURES:
        container = _attribute(model, arch.container)
        if container is not None and isinstance(getattr(container, arch.blocks, None), nn.ModuleList):
            return arch
    raise TypeError(f"unsupported model architecture {type(model).__name__}: "
                    f"no {' or '.join(a.block_path for a in ARCHITECTURES)}")


def of_routing(routing: dict[str, Any]) -> Architecture:
    """The family a registry recorded: its routing record's `family` (registries made before it
    was recorded name only the `block_path`, which gives the structural family)."""
    if routing.get("family"):
        return by_name(routing["family"])
    for arch in ARCHITECTURES:
        if arch.block_path == routing.get("block_path"):
            return arch
    raise ValueError(f"unknown block path {routing.get('block_path')!r}")


def decoder_blocks(model: Any) -> Any:
    arch = architecture_of(model)
    return getattr(_attribute(model, arch.container), arch.blocks)


def replace_blocks(model: Any, blocks: Any) -> None:
    arch = architecture_of(model)
    setattr(_attribute(model, arch.container), arch.blocks, blocks)


def context_length(model: Any) -> int:
    """Tokens the model attends over (its position limit)."""
    return int(getattr(model.config, architecture_of(model).context_attribute, None) or 2048)


def prompt_prefix(model: Any, tokenizer: Any) -> list[int]:
    """Token ids every prompt starts with: the BOS token for families trained with it, else none."""
    if architecture_of(model).starts_with_bos and tokenizer.bos_token_id is not None:
        return [int(tokenizer.bos_token_id)]
    return []


def routing_defaults(model: Any, key_function: str | None = None) -> dict[str, Any]:
    """`init`'s defaults for this model and key function (None: the family's default key
    function, which the result names): the family's module and studied settings; with a
    subject key, the subject threshold and radius ratio every family shares
    (sola.config.SUBJECT_ROUTING_DEFAULTS) and the family's subject settings over them. A default
    layer the model does not have (a small model of the family) becomes its middle block."""
    from sola.config import SUBJECT_ROUTING_DEFAULTS, RoutingConfig

    arch = architecture_of(model)
    key_function = key_function or arch.default_key_function
    defaults = {"module": arch.default_module, "key_function": key_function, **arch.routing_defaults}
    if key_function == "subject":
        defaults.update({**SUBJECT_ROUTING_DEFAULTS, **arch.subject_routing_defaults})
    blocks = len(decoder_blocks(model))

    layer = defaults.get("layer", RoutingConfig.layer)
    defaults["layer"] = layer if layer < blocks else blocks // 2
    return defaults


def projection_dims(module: Any) -> tuple[int, int]:
    """(in_features, out_features) of an editable projection: nn.Linear (weight (out, in)) or
    GPT-2's Conv1D (weight stored (in, out), the families with `fan_in_fan_out`)."""
    from torch import nn

    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        return int(module.weight.shape[0]), int(module.weight.shape[1])
    raise TypeError(f"cannot edit a {type(module).__name__}; supported: nn.Linear, Conv1D")


__all__ = ["Architecture", "ARCHITECTURES", "architecture_of", "by_name", "of_routing", "decoder_blocks", "replace_blocks",
           "context_length", "prompt_prefix", "routing_defaults", "projection_dims"]
