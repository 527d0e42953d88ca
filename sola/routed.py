"""A causal LM with one routed LoRA layer: tokenisation, teacher-forced scoring, generation.

`RoutedModel` owns the wrapped model and tokenizer. It is the only place that knows how a
prompt and a target are joined into token ids, so training, evaluation and generation all
see the same sequences.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from registry.routing import join_target
from sola.arch import architecture_of, decoder_blocks, prompt_prefix, replace_blocks
from sola.config import RoutingConfig
from sola.keys import name_ends as name_end_mask, token_texts
from sola.layer import EditBank, RoutedLoRA, Routing, RoutingScope
from sola.linears import TransposedLinear, transposed_linears


def default_module_for(model: nn.Module) -> str:
    """The MLP input projection of the model's family (the key lives at its input)."""
    return architecture_of(model).default_module


def start_token_for(tokenizer: object) -> int:
    """The fixed token a subject-keyed registry puts before every prompt (so that a subject at
    the prompt's start keeps all its tokens: position 0 is never read): the newline where the
    tokenizer writes it as one token, else the document separator, else BOS, else EOS; -1 when
    it has none of them. A newline routes CounterFact paraphrases as well as `<|endoftext|>` did
    (0.967 against 0.953 on SmolLM2) while a LoRA fitted after it carries its target to far more
    of them; `<|im_start|>` does the latter but routes worse (docs/results.md, "The start token")."""
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"] if callable(tokenizer) else []
    if len(newline) == 1:
        return int(newline[0])
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    if "<|endoftext|>" in vocab:
        return int(vocab["<|endoftext|>"])
    for name in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return -1


def subject_start_token(model: nn.Module, tokenizer: object) -> int:
    """The start token `sola init` records for a subject-keyed registry of this model: none (-1)
    for a family whose prompts already open with a fixed prefix (Gemma's `<bos>`), else
    `start_token_for(tokenizer)`."""
    return -1 if prompt_prefix(model, tokenizer) else start_token_for(tokenizer)


def attach(model: nn.Module, config: RoutingConfig) -> RoutedLoRA:
    """Replace `blocks[layer].<module>` with a RoutedLoRA around it (idempotent)."""
    blocks = decoder_blocks(model)
    if not 0 <= config.layer < len(blocks):
        raise ValueError(f"layer {config.layer} out of range: the model has {len(blocks)} blocks")
    parent = blocks[config.layer]
    *path, leaf = config.module.split(".")
    for name in path:
        parent = getattr(parent, name)
    current = getattr(parent, leaf, None)
    if current is None:
        raise ValueError(f"block {config.layer} has no module {config.module!r}")
    if isinstance(current, RoutedLoRA):
        return current
    routed = RoutedLoRA(current, config.key_function, config.threshold, config.scale, config.radius_ratio,
                        config.layer, config.subject_layers, config.max_window, config.name_ends)
    setattr(parent, leaf, routed)
    for block in config.read_layers:
        if block != config.layer:
            blocks[block].get_submodule(config.module).register_forward_pre_hook(routed.tap(block))
    model.register_forward_pre_hook(routed.watch_tokens, with_kwargs=True)
    return routed


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the needed activations are captured."""


class _ReplayInput(nn.Module):
    """Stands in for the first frozen lower block: returns the cached input of the edited block."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return self.hidden


class _PassThrough(nn.Module):
    """Stands in for the other frozen lower blocks: hands its input on unchanged."""

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return hidden_states


class SubjectInsideName(ValueError):
    """A subject that stops inside a longer name of its prompt, under name ends (subject_span)."""


@dataclass
class Encoded:
    input_ids: torch.Tensor  # (1, prompt + target)
    prompt_len: int
    target_ids: torch.Tensor  # (target,)


class RoutedModel:
    """A frozen causal LM plus its routed layer, with the operations sola needs."""

    def __init__(self, model: nn.Module, tokenizer: object, config: RoutingConfig) -> None:
        self.model = model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.tokenizer = tokenizer
        self.config = config
        self.layer = attach(model, config)
        self.prefix = prompt_prefix(model, tokenizer)  # e.g. Gemma's <bos>
        # the bank of callers that pass none (a single-user command, an eval): the server passes
        # each request's snapshot bank instead, so this default is never shared between revisions
        self.bank = EditBank.empty()
        # transposed copies of the upper blocks' frozen weights, made at the first edit trained
        # on the CPU and kept for the next (sola.linears): about the upper blocks' size again
        self._transposed: dict[int, TransposedLinear] = {}
        # token id -> its text decoded on its own (for sola.keys.name_ends), filled as ids are seen
        self._token_texts: dict[int, str] = {}

    # --- tokenisation ----------------------------------------------------------------------
    @property
    def start_ids(self) -> list[int]:
        """The recorded start token put before every prompt (none unless the config has one)."""
        return [self.config.start_token] if self.config.start_token >= 0 else []

    def prompt_ids(self, text: str) -> list[int]:
        """A prompt's token ids as the model reads them: the family's prefix (Gemma's <bos>), the
        registry's start token (subject keys), then the text's own tokens (no other special
        tokens). Empty when the text has no tokens."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.prefix + self.start_ids + ids if ids else []

    def encode(self, prompt: str, target: str | None = None) -> Encoded:
        prompt_ids = self.prompt_ids(prompt)
        if not prompt_ids:
            raise ValueError("prompt encodes to no tokens")
        target_ids: list[int] = []
        if target is not None:
            target_ids = self.tokenizer(join_target(prompt, target), add_special_tokens=False)["input_ids"]
            if not target_ids:
                raise ValueError("target encodes to no tokens")
        device = self.device  # every forward pass of sola runs where the model is
        ids = torch.tensor([prompt_ids + target_ids], dtype=torch.long, device=device)
        return Encoded(ids, len(prompt_ids), torch.tensor(target_ids, dtype=torch.long, device=device))

    def subject_span(self, prompt: str, subject: str | None) -> tuple[int, int] | None:
        """Token positions [start, end) of `subject` in `encode(prompt)` (its first occurrence,
        exact case first, else ignoring case); None without a subject. ValueError when the
        prompt does not contain it: a subject key can only be read from the subject's tokens;
        with name ends, also when the subject stops inside a longer name ("Boeing" in "Boeing 747
        is"): no query would end there, so not even its own prompt would meet the key."""
        if subject is None or not subject.strip():
            return None
        needle = subject.strip()
        at = prompt.find(needle)
        if at < 0:
            at = prompt.lower().find(needle.lower())
        if at < 0:
            raise ValueError(f"subject {subject[:80]!r} does not occur in the prompt {prompt[:80]!r}")
        offsets = self.tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        inside = [i for i, (lo, hi) in enumerate(offsets) if lo < at + len(needle) and hi > at]
        shift = len(self.prefix) + len(self.start_ids)
        span = inside[0] + shift, inside[-1] + 1 + shift
        if self.layer.name_ends:  # a query never ends a name there, so the key could never be met
            ids = self.encode(prompt).input_ids
            if not bool(self.name_ends(ids, None)[0, span[1] - 1]):
                raise SubjectInsideName(f"subject {subject[:80]!r} ends inside a longer name in {prompt[:80]!r} (the next word goes "
                                 f"on with it): name the whole of it, or use a registry made with --no-name-ends")
        return span

    # --- routing scopes ----------------------------------------------------------------------
    def name_ends(self, input_ids: torch.Tensor, query_mask: torch.Tensor | None) -> torch.Tensor | None:
        """Where a subject may end in each row of `input_ids` (sola.keys.name_ends), for a
        registry that routes by name ends; None for one that does not."""
        if not self.layer.name_ends:
            return None
        rows = input_ids.tolist()
        unseen = {token for row in rows for token in row} - self._token_texts.keys()
        self._token_texts.update(token_texts(self.tokenizer, sorted(unseen)))
        return name_end_mask([[self._token_texts[token] for token in row] for row in rows], query_mask)

    def scope(self, input_ids: torch.Tensor, query_mask: torch.Tensor | None = None, decision: Routing | None = None) -> RoutingScope:
        """The routing scope of one forward or generation call over `input_ids` (batch, tokens):
        its query mask, a pinned decision if any, and what the key function needs of the tokens."""
        return RoutingScope(query_mask=query_mask, decision=decision, name_ends=self.name_ends(input_ids, query_mask))

    # --- bank ------------------------------------------------------------------------------
    def set_bank(self, bank: EditBank) -> None:
        self.bank = bank

    @contextmanager
    def bank_override(self, bank: EditBank) -> Iterator[None]:
        previous = self.bank
        self.bank = bank
        try:
            yield
        finally:
            self.bank = previous

    def routing_call(self, scope: RoutingScope | None = None, bank: EditBank | None = None):
        """The context every forward pass runs in: routed by `bank` (default: this model's).
        With `after_target` "stop" or "refresh", a generated row's LoRA goes off once its edit's
        target tokens have been generated (sola.layer.RoutingScope.watch); "refresh" also
        recomputes that row's cached keys/values with the base model then (sola.refresh)."""
        bank = bank if bank is not None else self.bank
        scope = scope if scope is not None else RoutingScope()
        if self.config.after_target in ("stop", "refresh") and bank.answers and scope.target_ids is None:
            scope.target_ids = lambda edit: self.target_ids(bank, edit)
            scope.refresh = self.config.after_target == "refresh"
        return self.layer.routing_call(bank, scope)

    def target_ids(self, bank: EditBank, edit: str) -> list[int] | None:
        """The token ids an edit was trained to produce after its prompt (None if unknown)."""
        answer = bank.answers.get(edit)
        if answer is None:
            return None
        prompt, target = answer
        ids = self.tokenizer(join_target(prompt, target), add_special_tokens=False)["input_ids"]
        return list(ids) or None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --- forward passes --------------------------------------------------------------------
    @torch.no_grad()
    def score(self, prompt: str, target: str, bank: EditBank | None = None) -> tuple[torch.Tensor, Encoded, Routing]:
        """Teacher-forced logits at the target positions; routing uses the prompt tokens only.

        The output layer runs only at the positions that predict a target token (and the last
        one, dropped): Gemma's 262k-word output layer costs more than all its blocks per position."""
        encoded = self.encode(prompt, target)
        mask = torch.zeros_like(encoded.input_ids)
        mask[:, : encoded.prompt_len] = 1
        scope = self.scope(encoded.input_ids, mask)
        targets = len(encoded.target_ids)
        with self.routing_call(scope, bank):
            logits = self.model(input_ids=encoded.input_ids.to(self.device), use_cache=False, logits_to_keep=targets + 1).logits[0]
        decision = scope.decision or Routing.unrouted(1)
        return logits[:targets], encoded, decision

    @torch.no_grad()
    def prompt_logits(self, prompt: str, bank: EditBank | None = None) -> tuple[torch.Tensor, Routing]:
        """Next-token logits after the prompt (the quantity rollback fidelity compares)."""
        encoded = self.encode(prompt)
        scope = self.scope(encoded.input_ids)
        with self.routing_call(scope, bank):
            logits = self.model(input_ids=encoded.input_ids.to(self.device), use_cache=False).logits[0, -1]
        return logits, scope.decision or Routing.unrouted(1)

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int = 16, bank: EditBank | None = None,
                 query_masks: list[list[int]] | None = None, token_ids: list[list[int]] | None = None,
                 temperature: float = 0.0, seed: int | None = None, streamer: object | None = None) -> tuple[list[str], Routing]:
        """Decoding with a KV cache; routing decided at prefill and pinned for all steps.

        Greedy (deterministic) at temperature 0, else sampled (`seed` makes it repeatable).
        `token_ids` gives pre-tokenised prompts (a chat template) and `query_masks` the
        positions of each prompt that form its routing query (a chat turn routes by its user
        message only); by default a prompt's own tokens, all of them."""
        rows = token_ids if token_ids is not None else [self.encode(p).input_ids[0].tolist() for p in prompts]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id or 0
        masks = query_masks if query_masks is not None else [[1] * len(r) for r in rows]
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long, device=self.device)
        attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long, device=self.device)
        query = torch.tensor([[0] * (width - len(m)) + m for m in masks], dtype=torch.long, device=self.device)
        scope = self.scope(input_ids, query)
        sampling = {"do_sample": True, "temperature": float(temperature)} if temperature > 0 else {"do_sample": False}
        if temperature > 0 and seed is not None:
            torch.manual_seed(seed)
        with self.routing_call(scope, bank):
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                streamer=streamer,
                **sampling,
            )
        texts = [self.tokenizer.decode(row[width:], skip_special_tokens=True) for row in output]
        return texts, scope.decision or Routing.unrouted(len(prompts))

    @torch.no_grad()
    def capture(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(input of the edited block, input of the edited module) for one unpadded sequence.

        Both are unaffected by any edit (edits live at or above the edited module's output),
        so the forward pass stops as soon as the edited module receives its input.
        """
        block = decoder_blocks(self.model)[self.config.layer]
        seen: dict[str, torch.Tensor] = {}

        def keep_block_input(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            seen["block"] = (args[0] if args else kwargs["hidden_states"]).detach()

        module_input = self._forward_to_edited_module(input_ids, [block.register_forward_pre_hook(keep_block_input, with_kwargs=True)])
        return seen["block"], module_input

    def _forward_to_edited_module(self, input_ids: torch.Tensor, hooks: list) -> torch.Tensor:
        """Run the model until the edited module receives its input, which is returned; `hooks`
        (handles already registered by the caller) see the lower blocks on the way and are
        removed afterwards, with the stop hook."""
        seen: dict[str, torch.Tensor] = {}

        def keep_module_input_and_stop(_module: nn.Module, args: tuple) -> None:
            seen["module"] = args[0].detach()
            raise _StopForward

        handles = [*hooks, self.layer.register_forward_pre_hook(keep_module_input_and_stop)]
        try:
            self.model(input_ids=input_ids, use_cache=False)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return seen["module"]

    @torch.no_grad()
    def capture_keys(self, input_ids: torch.Tensor) -> dict[int, torch.Tensor]:
        """{block: input of the edited projection at that block} for the blocks a key reads
        (sola.config.RoutingConfig.read_layers), from one forward pass that stops at the edited
        module: the activations a routing query is made of, outside any routing call."""
        blocks = decoder_blocks(self.model)
        seen: dict[int, torch.Tensor] = {}
        wanted = [b for b in self.config.read_layers if b != self.config.layer]

        def keeper(block: int):
            def keep(_module: nn.Module, args: tuple) -> None:
                seen[block] = args[0].detach()
            return keep

        hooks = [blocks[b].get_submodule(self.config.module).register_forward_pre_hook(keeper(b)) for b in wanted]
        seen[self.config.layer] = self._forward_to_edited_module(input_ids, hooks)
        return seen

    def route(self, input_ids: list[int], query_mask: list[int] | None = None, bank: EditBank | None = None) -> Routing:
        """The routing decision for one pre-tokenised sequence, without generating (a chat turn
        routes by its user message alone, then generates with the decision pinned)."""
        ids = torch.tensor([input_ids], dtype=torch.long, device=self.device)
        states = self.capture_keys(ids)
        mask = None if query_mask is None else torch.tensor([query_mask], device=self.device)
        return self.layer.route(bank if bank is not None else self.bank, states, mask, self.name_ends(ids, mask))

    def query_of(self, prompt: str):
        """The routing query a prompt makes at prefill: a pooled vector (numpy, (dim,)), or a
        registry.routing.SubjectQuery for subject keys."""
        ids = self.encode(prompt).input_ids
        return self.layer.queries(self.capture_keys(ids), None, self.name_ends(ids, None))[0]

    @property
    def key_dim(self) -> int:
        """Width of a stored key: the projection's input, twice over for a two-part subject key."""
        return self.layer.in_features * (2 if self.config.key_function == "subject" else 1)

    @contextmanager
    def training_linears(self) -> Iterator[int]:
        """The frozen linear layers of the blocks from the edited one upward compute against
        transposed copies of their weights (sola.linears: on a CPU, a training pass about 8%
        faster; on other devices nothing is swapped). Yields how many were swapped."""
        upper = list(decoder_blocks(self.model))[self.config.layer:]
        with transposed_linears(upper, self._transposed) as swapped:
            yield swapped

    @contextmanager
    def upper_stack(self, block_input: torch.Tensor) -> Iterator[None]:
        """Run only the blocks from the edited one upward, feeding them the cached block input.

        The block list keeps its length: block 0 replays the cached input and the rest of the
        lower blocks pass it through, so every upper block keeps its position (Gemma 3 picks each
        block's attention kind and RoPE base by position in the list)."""
        layer = self.config.layer
        if layer == 0:  # nothing below the edited block: the model computes its input anyway
            yield
            return
        blocks = decoder_blocks(self.model)
        original = list(blocks)
        replaced = [_ReplayInput(block_input), *[_PassThrough() for _ in range(layer - 1)], *original[layer:]]
        replace_blocks(self.model, nn.ModuleList(replaced))
        try:
            yield
        finally:
            replace_blocks(self.model, blocks)
