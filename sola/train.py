"""Fitting one edit: a fresh rank-r LoRA on the frozen base, never on top of other edits.

The blocks below the edited one never change, so their output for the edit sequence is
computed once and replayed; each step runs only the edited block and those above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sola.config import TrainConfig
from sola.keys import pool_prompt, subject_key
from sola.probes import training_prompts
from sola.routed import Encoded, RoutedModel

# Generic opening sentences an edit is also fitted after (TrainConfig.contexts): a paraphrase
# often puts unrelated text before the subject ("One Minute Stories, selected and translated by
# Judith Sollosy. Noise Unit, that originated in"), and a LoRA fitted on the bare prompt alone
# learns the prompt's opening as much as its subject. Fixed and short, so edits are reproducible
# and cheap; neither benchmark's paraphrases are among them.
TRAINING_CONTEXTS = (
    "Here is a fact.",
    "I learned something new today.",
    "Let me tell you something.",
    "This is well known.",
    "Read the following sentence.",
    "Some background first.",
    "Everyone agrees on this.",
    "A short note.",
)


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
                subject: str | None = None, prompt_key: torch.Tensor | None = None) -> tuple[Encoded, torch.Tensor, torch.Tensor]:
    """(the prompt + target sequence, the edited block's input for it, the edit's keys).

    None of these depend on the LoRA being fitted, so they are computed once per edit, before
    training, and a batched trainer computes them exactly as the one-at-a-time one does.
    `prompt_key`: the prompt's `routing_key`, when the caller already has it (the workspace
    checks it for collisions first); a subject key is read from the prompt alone, so it is the
    same tensor and its forward pass is not repeated. A mean key is pooled from the training
    sequence's own capture, which costs nothing more."""
    encoded = routed.encode(prompt, target)  # on the model's device
    block_input, module_input = routed.capture(encoded.input_ids)
    if routed.config.key_function == "subject":
        keys = [prompt_key if prompt_key is not None else routing_key(routed, prompt, subject)]
    else:
        prompt_mask = torch.zeros_like(encoded.input_ids)
        prompt_mask[:, : encoded.prompt_len] = 1
        keys = [pool_prompt(module_input, prompt_mask, routed.config.key_function)[0].cpu()]
    keys += [rephrase_key(routed, text, subject) for text in rephrases or []]
    return encoded, block_input, torch.stack(keys)


@dataclass
class FitRows:
    """The sequences one edit's LoRA is fitted on, fixed before training: rows [0, fitted) end in
    the target (the prompt, then the prompt after each training context), the rest are
    other-relation prompts of the subject whose next-token distribution is held to the base's."""

    ids: list[torch.Tensor]  # each (tokens,)
    block_inputs: list[torch.Tensor]  # each (tokens, hidden): the edited block's input, never changes
    starts: list[int]  # the first position whose logits a row's loss reads
    targets: torch.Tensor  # the target's token ids (the same after every context)
    fitted: int

    @property
    def positions(self) -> list[list[int]]:
        """Per row, the positions whose logits its loss reads: the target's on fitted rows, the
        last on held ones."""
        width = len(self.targets)
        return [list(range(s, s + width)) if row < self.fitted else [s] for row, s in enumerate(self.starts)]


def fit_rows(routed: RoutedModel, encoded: Encoded, block_input: torch.Tensor, prompt: str, target: str,
             subject: str | None, config: TrainConfig) -> FitRows:
    """The rows of one edit under `config`: the prompt + target (already captured), the same after
    `config.contexts` generic contexts, and `config.relation_prompts` held prompts of the subject."""
    ids, inputs, starts = [encoded.input_ids[0]], [block_input[0]], [encoded.prompt_len - 1]
    for context in TRAINING_CONTEXTS[: config.contexts]:
        row = routed.encode(f"{context} {prompt}", target)
        ids.append(row.input_ids[0])
        inputs.append(routed.capture(row.input_ids)[0][0])
        starts.append(row.prompt_len - 1)
    fitted = len(ids)
    if config.relation_kl > 0:
        for held in training_prompts(prompt, subject, config.relation_prompts, config.seed):
            row = routed.encode(held)
            ids.append(row.input_ids[0])
            inputs.append(routed.capture(row.input_ids)[0][0])
            starts.append(row.prompt_len - 1)
    return FitRows(ids, inputs, starts, encoded.target_ids, fitted)


def fresh_adapter(routed: RoutedModel, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, torch.optim.Optimizer]:
    """A new LoRA (A seeded from `config.seed`, B zero, so the edit starts as the base model)
    and its optimizer: every edit starts from the same point whatever was trained before.
    The factors are fitted in the edited module's precision, float32 at least (a float64 model,
    as the equivalence tests use, fits float64 factors from the same float32 draw)."""
    generator = torch.Generator().manual_seed(config.seed)
    rank, layer = routed.config.rank, routed.layer
    device = routed.device  # drawn on the CPU generator, then moved: the same start on any device
    dtype = torch.promote_types(layer.base.weight.dtype, torch.float32)
    lora_a = (torch.randn(rank, layer.in_features, generator=generator) * config.init_std).to(device, dtype).requires_grad_(True)
    lora_b = torch.zeros(layer.out_features, rank, device=device, dtype=dtype).requires_grad_(True)
    if config.optimizer == "sgd":
        return lora_a, lora_b, torch.optim.SGD([lora_a, lora_b], lr=config.lr)
    return lora_a, lora_b, torch.optim.Adam([lora_a, lora_b], lr=config.lr)


def target_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The loss one edit minimises: cross-entropy of its target tokens (logits at their positions)."""
    return torch.nn.functional.cross_entropy(logits, targets)


def reached_target(loss_value: float, logits: torch.Tensor, targets: torch.Tensor, config: TrainConfig) -> bool:
    """The early stop: the loss is under `stop_loss` and every target token is the argmax."""
    return loss_value < config.stop_loss and bool((logits.argmax(dim=-1) == targets).all())


@dataclass
class EditLoss:
    """One edit's loss at one step, from the logits at its rows' positions."""

    loss: torch.Tensor
    fit_loss: float  # the target's cross-entropy, mean over fitted rows: what the early stop reads
    reached: bool


def edit_loss(rows: FitRows, logits: list[torch.Tensor], reference: list[torch.Tensor] | None,
              config: TrainConfig) -> tuple[EditLoss, list[torch.Tensor]]:
    """The target's cross-entropy averaged over the fitted rows, plus `relation_kl` times the
    mean KL(base || edited) of the held rows' next token. `reference`: the held rows' base
    log-probabilities, None at the first step, whose logits are the base model's (B starts at
    zero) and become the reference returned. The edit has reached its target when every fitted
    row has (reached_target)."""
    fitted = logits[: rows.fitted]
    losses = [target_loss(row, rows.targets) for row in fitted]
    fit = torch.stack(losses).mean()
    reached = all(reached_target(float(l.detach()), row, rows.targets, config) for l, row in zip(losses, fitted))
    held = [row[0].log_softmax(-1) for row in logits[rows.fitted:]]
    if reference is None:
        reference = [h.detach() for h in held]
    loss = fit
    if held and config.relation_kl > 0:
        kl = torch.stack([torch.nn.functional.kl_div(h, r, log_target=True, reduction="sum") for h, r in zip(held, reference)])
        loss = fit + config.relation_kl * kl.mean()
        # held to the base means its answer too: the next-token argmax of every held prompt is the base's
        reached = reached and all(int(h.argmax()) == int(r.argmax()) for h, r in zip(held, reference))
    return EditLoss(loss, float(fit.detach()), reached), reference


def train_edit(
    routed: RoutedModel,
    prompt: str,
    target: str,
    rephrases: list[str] | None = None,
    config: TrainConfig = TrainConfig(),
    cache_lower_blocks: bool = True,
    subject: str | None = None,
    prompt_key: torch.Tensor | None = None,
) -> TrainedEdit:
    """Fit one edit's LoRA until every target token is the argmax and the loss is under
    `stop_loss`: the batched trainer with a batch of one, so an edit trains the same alone or
    beside others (sola.batch_train). `prompt_key`: the prompt's routing_key, if already known."""
    from sola.batch_train import EditJob, train_edits

    job = EditJob(prompt, target, tuple(rephrases or ()), subject, prompt_key)
    [(_, trained)] = list(train_edits(routed, [job], config, batch_size=1, cache_lower_blocks=cache_lower_blocks))
    return trained
