"""Fitting one edit: a fresh rank-r LoRA on the frozen base, never on top of other edits.

The blocks below the edited one never change, so their output for the edit sequence is
computed once and replayed; each step runs only the edited block and those above it.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from sola.config import TrainConfig
from sola.keys import pool_prompt
from sola.layer import EditBank
from sola.routed import RoutedModel


@dataclass
class TrainedEdit:
    lora_a: torch.Tensor  # (rank, in_features)
    lora_b: torch.Tensor  # (out_features, rank)
    keys: torch.Tensor  # (1 + paraphrases, in_features), L2-normalised; row 0 is the prompt's
    steps: int
    loss: float
    converged: bool
    seconds: float


def routing_key(routed: RoutedModel, prompt: str) -> torch.Tensor:
    """The key of a prompt: the edited module's input over the prompt tokens, pooled."""
    encoded = routed.encode(prompt)
    _, module_input = routed.capture(encoded.input_ids)
    return pool_prompt(module_input, None, routed.config.key_function)[0]


def train_edit(
    routed: RoutedModel,
    prompt: str,
    target: str,
    rephrases: list[str] | None = None,
    config: TrainConfig = TrainConfig(),
    cache_lower_blocks: bool = True,
) -> TrainedEdit:
    """Fit the LoRA until every target token is the argmax and the loss is under `stop_loss`."""
    started = time.perf_counter()
    encoded = routed.encode(prompt, target)
    block_input, module_input = routed.capture(encoded.input_ids)
    prompt_mask = torch.zeros_like(encoded.input_ids)
    prompt_mask[:, : encoded.prompt_len] = 1
    keys = [pool_prompt(module_input, prompt_mask, routed.config.key_function)[0]]
    keys += [routing_key(routed, text) for text in rephrases or []]

    generator = torch.Generator().manual_seed(config.seed)
    rank, layer = routed.config.rank, routed.layer
    lora_a = (torch.randn(rank, layer.in_features, generator=generator) * config.init_std).requires_grad_(True)
    lora_b = torch.zeros(layer.out_features, rank).requires_grad_(True)
    if config.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD([lora_a, lora_b], lr=config.lr)
    else:
        optimizer = torch.optim.Adam([lora_a, lora_b], lr=config.lr)

    start = encoded.prompt_len - 1
    targets = encoded.target_ids
    steps, loss_value, converged = 0, float("inf"), False
    replay = routed.upper_stack(block_input) if cache_lower_blocks else nullcontext()
    with replay, layer.training_adapter(lora_a, lora_b):
        while True:
            logits = routed.model(input_ids=encoded.input_ids, use_cache=False).logits[0, start : start + len(targets)]
            loss = torch.nn.functional.cross_entropy(logits, targets)
            loss_value = float(loss.detach())
            if loss_value < config.stop_loss and bool((logits.argmax(dim=-1) == targets).all()):
                converged = True
                break
            if steps >= config.max_steps or not math.isfinite(loss_value):
                break  # a NaN or infinite loss never recovers: stop (the workspace refuses to commit it)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
    return TrainedEdit(
        lora_a=lora_a.detach().clone(),
        lora_b=lora_b.detach().clone(),
        keys=torch.stack(keys),
        steps=steps,
        loss=loss_value,
        converged=converged,
        seconds=time.perf_counter() - started,
    )
