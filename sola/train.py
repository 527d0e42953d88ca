"""Fitting one edit: a fresh rank-r LoRA on the frozen base, never on top of other edits.

The blocks below the edited one never change, so their output for the edit sequence is
computed once and replayed; each step runs only the edited block and those above it.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from sola.config import TrainConfig
from sola.keys import pool_prompt, subject_key
from sola.routed import Encoded, RoutedModel


@dataclass
class TrainedEdit:
    """A fitted edit, its tensors on the CPU (as the registry stores them)."""

    lora_a: torch.Tensor  # (rank, in_features)
    lora_b: torch.Tensor  # (out_features, rank)
    keys: torch.Tensor  # (1 + paraphrases, in_features), L2-normalised; row 0 is the prompt's
    steps: int
    loss: float
    converged: bool
    seconds: float
    losses: list[float] = field(default_factory=list)  # the loss at every forward pass, in order


def routing_key(routed: RoutedModel, prompt: str, subject: str | None = None) -> torch.Tensor:
    """The key of a prompt: the edited module's input over the prompt tokens, pooled; for
    subject keys, read from the subject's tokens (sola.keys.subject_key; `subject` None: the
    prompt's last tokens stand in for it). ValueError when the prompt lacks the subject."""
    encoded = routed.encode(prompt)
    config = routed.config
    if config.key_function == "subject":
        states = routed.capture_keys(encoded.input_ids)
        token_layer, span_layer = config.subject_layers
        span = routed.subject_span(prompt, subject)
        return subject_key(states[token_layer], states[span_layer], None, span, config.max_window).cpu()
    _, module_input = routed.capture(encoded.input_ids)
    return pool_prompt(module_input, None, config.key_function)[0].cpu()  # compared with stored keys on the CPU


def rephrase_key(routed: RoutedModel, prompt: str, subject: str | None) -> torch.Tensor:
    """A rephrase's key: on the subject where the rephrase names it, else on its last tokens."""
    try:
        return routing_key(routed, prompt, subject)
    except ValueError:
        return routing_key(routed, prompt, None)


def edit_inputs(routed: RoutedModel, prompt: str, target: str, rephrases: list[str] | None = None,
                subject: str | None = None) -> tuple[Encoded, torch.Tensor, torch.Tensor]:
    """(the prompt + target sequence, the edited block's input for it, the edit's keys).

    None of these depend on the LoRA being fitted, so they are computed once per edit, before
    training, and a batched trainer computes them exactly as the one-at-a-time one does."""
    encoded = routed.encode(prompt, target)  # on the model's device
    block_input, module_input = routed.capture(encoded.input_ids)
    if routed.config.key_function == "subject":
        keys = [routing_key(routed, prompt, subject)]
    else:
        prompt_mask = torch.zeros_like(encoded.input_ids)
        prompt_mask[:, : encoded.prompt_len] = 1
        keys = [pool_prompt(module_input, prompt_mask, routed.config.key_function)[0].cpu()]
    keys += [rephrase_key(routed, text, subject) for text in rephrases or []]
    return encoded, block_input, torch.stack(keys)


def fresh_adapter(routed: RoutedModel, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, torch.optim.Optimizer]:
    """A new LoRA (A seeded from `config.seed`, B zero, so the edit starts as the base model)
    and its optimizer: every edit starts from the same point whatever was trained before."""
    generator = torch.Generator().manual_seed(config.seed)
    rank, layer = routed.config.rank, routed.layer
    device = routed.device  # drawn on the CPU generator, then moved: the same start on any device
    lora_a = (torch.randn(rank, layer.in_features, generator=generator) * config.init_std).to(device).requires_grad_(True)
    lora_b = torch.zeros(layer.out_features, rank, device=device).requires_grad_(True)
    if config.optimizer == "sgd":
        return lora_a, lora_b, torch.optim.SGD([lora_a, lora_b], lr=config.lr)
    return lora_a, lora_b, torch.optim.Adam([lora_a, lora_b], lr=config.lr)


def target_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The loss one edit minimises: cross-entropy of its target tokens (logits at their positions)."""
    return torch.nn.functional.cross_entropy(logits, targets)


def reached_target(loss_value: float, logits: torch.Tensor, targets: torch.Tensor, config: TrainConfig) -> bool:
    """The early stop: the loss is under `stop_loss` and every target token is the argmax."""
    return loss_value < config.stop_loss and bool((logits.argmax(dim=-1) == targets).all())


def train_edit(
    routed: RoutedModel,
    prompt: str,
    target: str,
    rephrases: list[str] | None = None,
    config: TrainConfig = TrainConfig(),
    cache_lower_blocks: bool = True,
    subject: str | None = None,
) -> TrainedEdit:
    """Fit the LoRA until every target token is the argmax and the loss is under `stop_loss`."""
    started = time.perf_counter()
    encoded, block_input, keys = edit_inputs(routed, prompt, target, rephrases, subject)
    lora_a, lora_b, optimizer = fresh_adapter(routed, config)
    start = encoded.prompt_len - 1
    targets = encoded.target_ids
    steps, loss_value, converged, losses = 0, float("inf"), False, []
    replay = routed.upper_stack(block_input) if cache_lower_blocks else nullcontext()
    with replay, routed.layer.training_adapter(lora_a, lora_b):
        while True:
            logits = routed.model(input_ids=encoded.input_ids, use_cache=False).logits[0, start : start + len(targets)]
            loss = target_loss(logits, targets)
            loss_value = float(loss.detach())
            losses.append(loss_value)
            if reached_target(loss_value, logits, targets, config):
                converged = True
                break
            if steps >= config.max_steps or not math.isfinite(loss_value):
                break  # a NaN or infinite loss never recovers: stop (the workspace refuses to commit it)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
    return TrainedEdit(
        lora_a=lora_a.detach().cpu().clone(),
        lora_b=lora_b.detach().cpu().clone(),
        keys=keys.cpu(),
        steps=steps,
        loss=loss_value,
        converged=converged,
        seconds=time.perf_counter() - started,
        losses=losses,
    )
