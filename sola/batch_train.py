"""Training many edits at once: each its own LoRA, optimizer and early stop, one batched forward.

An edit fitted here is the edit `sola.train.train_edit` fits alone: the same inputs and keys
(`edit_inputs`), the same start (`fresh_adapter`), the same loss and stop (`target_loss`,
`reached_target`). What is shared is only the forward pass through the blocks from the edited
one upward: the edits' sequences are stacked (right-padded, so under the causal mask a real
token never sees a pad) and the routed layer applies LoRA i to sequence i alone
(`RoutedLoRA.training_adapter` with per-sequence factors). The batch loss is the sum of the
edits' losses, so the gradient reaching edit i's LoRA is the gradient of its own loss: no edit
is influenced by another, and each steps its own optimizer. An edit that converges (or runs
out of steps) leaves the batch at once and the next edit of the queue takes its slot, so the
batch stays full and edits finish in about the order they were queued.

The only difference from training alone is floating-point: a matrix product over a stacked
batch may round differently from the same product over one sequence (a few ulps), which
tests/test_batch_training.py bounds on the loss curves.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from sola.config import MAX_BATCH, TrainConfig
from sola.routed import Encoded, RoutedModel
from sola.train import TrainedEdit, edit_inputs, fresh_adapter, reached_target, target_loss

@dataclass(frozen=True)
class EditJob:
    """What one edit is fitted to: a prompt, its new target, and the rephrases keyed with it."""

    prompt: str
    target: str
    rephrases: tuple[str, ...] = ()
    subject: str | None = None  # what a subject key is read from (sola.train.routing_key)


@dataclass
class _Slot:
    """One edit while it trains: its fixed inputs and its own adapter and optimizer."""

    index: int
    encoded: Encoded
    block_input: torch.Tensor  # (1, tokens, hidden): the edited block's input, never changes
    keys: torch.Tensor
    lora_a: torch.Tensor
    lora_b: torch.Tensor
    optimizer: torch.optim.Optimizer
    started: float
    steps: int = 0
    losses: list[float] = field(default_factory=list)

    @property
    def start(self) -> int:
        return self.encoded.prompt_len - 1

    def result(self, loss: float, converged: bool) -> TrainedEdit:
        return TrainedEdit(
            lora_a=self.lora_a.detach().cpu().clone(),
            lora_b=self.lora_b.detach().cpu().clone(),
            keys=self.keys.cpu(),
            steps=self.steps,
            loss=loss,
            converged=converged,
            seconds=time.perf_counter() - self.started,
            losses=list(self.losses),
        )


def _padded(slots: list[_Slot], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, attention mask, block inputs) of the slots stacked, right-padded to the
    longest sequence: a real token attends only to earlier real tokens, as when alone."""
    width = max(int(s.encoded.input_ids.shape[1]) for s in slots)
    first = slots[0].block_input
    ids = torch.full((len(slots), width), pad_id, dtype=torch.long, device=first.device)
    attention = torch.zeros((len(slots), width), dtype=torch.long, device=first.device)
    hidden = torch.zeros((len(slots), width, first.shape[-1]), dtype=first.dtype, device=first.device)
    for row, slot in enumerate(slots):
        length = int(slot.encoded.input_ids.shape[1])
        ids[row, :length] = slot.encoded.input_ids[0]
        attention[row, :length] = 1
        hidden[row, :length] = slot.block_input[0]
    return ids, attention, hidden


def pad_token_id(routed: RoutedModel) -> int:
    tokenizer = routed.tokenizer
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if candidate is not None:
            return int(candidate)
    return 0


def train_edits(routed: RoutedModel, jobs: Sequence[EditJob], config: TrainConfig = TrainConfig(),
                batch_size: int = 16) -> Iterator[tuple[int, TrainedEdit]]:
    """Fit every job, at most `batch_size` at a time; yields (job index, trained edit) as each
    finishes (about queue order: an edit that needs more steps finishes after later ones)."""
    if not 1 <= batch_size <= MAX_BATCH:
        raise ValueError(f"batch size must be from 1 to {MAX_BATCH}, got {batch_size}")
    queue = deque(enumerate(jobs))
    slots: list[_Slot] = []
    pad = pad_token_id(routed)
    layer = routed.layer
    while queue or slots:
        while queue and len(slots) < batch_size:
            index, job = queue.popleft()
            started = time.perf_counter()
            encoded, block_input, keys = edit_inputs(routed, job.prompt, job.target, list(job.rephrases), job.subject)
            lora_a, lora_b, optimizer = fresh_adapter(routed, config)
            slots.append(_Slot(index, encoded, block_input, keys, lora_a, lora_b, optimizer, started))
        ids, attention, hidden = _padded(slots, pad)
        stacked_a = torch.stack([s.lora_a for s in slots])
        stacked_b = torch.stack([s.lora_b for s in slots])
        keep = torch.zeros_like(attention, dtype=torch.bool)  # the positions whose logits a loss reads
        for row, slot in enumerate(slots):
            keep[row, slot.start : slot.start + len(slot.encoded.target_ids)] = True
        with routed.upper_stack(hidden), layer.training_adapter(stacked_a, stacked_b):
            # the model's own head (any final norm, soft-capping) on those positions only: the
            # vocabulary projection of every other position is never read (rows flattened in order)
            logits = routed.model(input_ids=ids, attention_mask=attention, use_cache=False, logits_to_keep=keep).logits
            per_slot = torch.split(logits.reshape(-1, logits.shape[-1]), [len(s.encoded.target_ids) for s in slots])
            training: list[tuple[_Slot, torch.Tensor]] = []
            finished: list[tuple[_Slot, float, bool]] = []
            for slot, own in zip(slots, per_slot):
                targets = slot.encoded.target_ids
                loss = target_loss(own, targets)
                value = float(loss.detach())
                slot.losses.append(value)
                if reached_target(value, own, targets, config):
                    finished.append((slot, value, True))
                elif slot.steps >= config.max_steps or not math.isfinite(value):
                    finished.append((slot, value, False))  # a NaN loss never recovers; the workspace refuses it
                else:
                    training.append((slot, loss))
            if training:
                for slot, _ in training:
                    slot.optimizer.zero_grad()
                # each LoRA touches only its own row, so d(sum)/d(LoRA i) = d(loss i)/d(LoRA i)
                torch.stack([loss for _, loss in training]).sum().backward()
                for slot, _ in training:
                    slot.optimizer.step()
                    slot.steps += 1
        done = {id(slot) for slot, _, _ in finished}
        slots = [slot for slot in slots if id(slot) not in done]
        for slot, value, converged in finished:
            yield slot.index, slot.result(value, converged)
