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
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from sola.config import MAX_BATCH, TrainConfig
from sola.routed import RoutedModel
from sola.train import FitRows, TrainedEdit, edit_inputs, edit_loss, fit_rows, fresh_adapter

@dataclass(frozen=True)
class EditJob:
    """What one edit is fitted to: a prompt, its new target, and the rephrases keyed with it."""

    prompt: str
    target: str
    rephrases: tuple[str, ...] = ()
    subject: str | None = None  # what a subject key is read from (sola.train.routing_key)
    prompt_key: torch.Tensor | None = field(default=None, compare=False)  # its routing_key, if already computed


@dataclass
class _Slot:
    """One edit while it trains: its fixed rows and its own adapter and optimizer."""

    index: int
    rows: FitRows
    keys: torch.Tensor
    lora_a: torch.Tensor
    lora_b: torch.Tensor
    optimizer: torch.optim.Optimizer
    started: float
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    reference: list[torch.Tensor] | None = None  # the held rows' base log-probabilities, from step 0

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


def _padded(slots: list[_Slot], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, attention mask, block inputs, positions to keep) of every slot's rows stacked
    in order, right-padded to the longest: a real token attends only to earlier real tokens, as
    when alone. The kept positions are those the slots' losses read, in row order."""
    rows = [(ids, hidden, positions) for s in slots for ids, hidden, positions in zip(s.rows.ids, s.rows.block_inputs, s.rows.positions)]
    width = max(int(ids.shape[0]) for ids, _, _ in rows)
    first = rows[0][1]
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=first.device)
    attention = torch.zeros((len(rows), width), dtype=torch.long, device=first.device)
    hidden = torch.zeros((len(rows), width, first.shape[-1]), dtype=first.dtype, device=first.device)
    keep = torch.zeros((len(rows), width), dtype=torch.bool, device=first.device)
    for row, (row_ids, row_hidden, positions) in enumerate(rows):
        length = int(row_ids.shape[0])
        ids[row, :length] = row_ids
        attention[row, :length] = 1
        hidden[row, :length] = row_hidden
        keep[row, positions] = True
    return ids, attention, hidden, keep


def pad_token_id(routed: RoutedModel) -> int:
    tokenizer = routed.tokenizer
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if candidate is not None:
            return int(candidate)
    return 0


def _new_slot(routed: RoutedModel, index: int, job: EditJob, config: TrainConfig) -> _Slot:
    started = time.perf_counter()
    encoded, block_input, keys = edit_inputs(routed, job.prompt, job.target, list(job.rephrases), job.subject, job.prompt_key)
    rows = fit_rows(routed, encoded, block_input, job.prompt, job.target, job.subject, config)
    lora_a, lora_b, optimizer = fresh_adapter(routed, config)
    return _Slot(index, rows, keys, lora_a, lora_b, optimizer, started)


def train_edits(routed: RoutedModel, jobs: Sequence[EditJob], config: TrainConfig = TrainConfig(),
                batch_size: int = 16, cache_lower_blocks: bool = True) -> Iterator[tuple[int, TrainedEdit]]:
    """Fit every job, at most `batch_size` at a time; yields (job index, trained edit) as each
    finishes (about queue order: an edit that needs more steps finishes after later ones).
    `cache_lower_blocks` False runs every block each step (the reference the replay is tested on)."""
    if not 1 <= batch_size <= MAX_BATCH:
        raise ValueError(f"batch size must be from 1 to {MAX_BATCH}, got {batch_size}")
    queue = deque(enumerate(jobs))
    slots: list[_Slot] = []
    pad = pad_token_id(routed)
    layer = routed.layer
    while queue or slots:
        while queue and len(slots) < batch_size:
            index, job = queue.popleft()
            slots.append(_new_slot(routed, index, job, config))
        ids, attention, hidden, keep = _padded(slots, pad)
        # every row of an edit gets that edit's LoRA (the same leaf tensors, so gradients add up)
        owner = torch.tensor([n for n, s in enumerate(slots) for _ in s.rows.ids], device=ids.device)
        stacked_a = torch.stack([s.lora_a for s in slots]).index_select(0, owner)
        stacked_b = torch.stack([s.lora_b for s in slots]).index_select(0, owner)
        replay = routed.upper_stack(hidden) if cache_lower_blocks else nullcontext()
        with replay, routed.training_linears(), layer.training_adapter(stacked_a, stacked_b):
            # the model's own head (any final norm, soft-capping) on those positions only: the
            # vocabulary projection of every other position is never read (rows flattened in order)
            logits = routed.model(input_ids=ids, attention_mask=attention, use_cache=False, logits_to_keep=keep).logits
            per_row = iter(torch.split(logits.reshape(-1, logits.shape[-1]), [len(p) for s in slots for p in s.rows.positions]))
            training: list[tuple[_Slot, torch.Tensor]] = []
            finished: list[tuple[_Slot, float, bool]] = []
            for slot in slots:
                own = [next(per_row) for _ in slot.rows.ids]
                step, slot.reference = edit_loss(slot.rows, own, slot.reference, config)
                value = float(step.loss.detach())
                slot.losses.append(value)
                if step.reached:
                    finished.append((slot, value, True))
                elif slot.steps >= config.max_steps or not math.isfinite(value):
                    finished.append((slot, value, False))  # a NaN loss never recovers; the workspace refuses it
                else:
                    training.append((slot, step.loss))
            if training:
                for slot, _ in training:
                    slot.optimizer.zero_grad()
                # each LoRA touches only its own rows, so d(sum)/d(LoRA i) = d(loss i)/d(LoRA i)
                torch.stack([loss for _, loss in training]).sum().backward()
                for slot, _ in training:
                    slot.optimizer.step()
                    slot.steps += 1
        done = {id(slot) for slot, _, _ in finished}
        slots = [slot for slot in slots if id(slot) not in done]
        for slot, value, converged in finished:
            yield slot.index, slot.result(value, converged)
