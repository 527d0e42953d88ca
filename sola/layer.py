"""The routed LoRA layer: the edited projection decides, per sequence, which edit applies.

No router network: the layer pools its own input over the prompt into a query, finds the
nearest active key, and adds that edit's LoRA delta only when the cosine distance is under
the threshold. Sequences that match nothing get exactly `base(x)` (the same tensor the
unwrapped module returns), which is what makes revocation bit-exact.

The decision is made once per sequence: inside a `RoutingScope` (used by generation) the
first forward pass, the prefill, pins the decision and every later decoding step reuses it.
Subject keys read the inputs of the same projection at lower blocks: `tap` hooks on those
modules hand their prefill inputs to the scope, so the query comes from the one forward pass
the model makes anyway, and from blocks no edit changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from copy import deepcopy

import numpy as np
import torch
from torch import nn

from registry.routing import ExactKeySearch, KeySearch, Routing, RoutingRule, SubjectIndex, decide, isolation
from sola.arch import projection_dims
from sola.keys import pool_prompt, subject_queries
from sola.refresh import base_cache, write_row


LoraFetcher = Callable[[str], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class EditBank:
    """The edits of one snapshot as the layer sees them.

    `key_edit` maps a key id (as returned by `search`) to an edit id; LoRA tensors are
    fetched per edit on first use (`fetch`) and kept, so a snapshot with 100k edits only
    loads the adapters that actually fire. `revoked` names tombstoned edits: their keys
    route exactly as before the revoke, but an input they win gets the base model, so a
    revoke changes nothing except the inputs that routed to the revoked edit.
    """

    search: KeySearch
    key_edit: dict[int, str]
    fetch: LoraFetcher
    revoked: frozenset[str] = frozenset()
    answers: dict[str, tuple[str, str]] = field(default_factory=dict)  # edit -> (prompt, target), for `after_target`
    _loaded: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    _subject_index: SubjectIndex | None = None

    def lora(self, edit_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        if edit_id not in self._loaded:
            self._loaded[edit_id] = self.fetch(edit_id)
        return self._loaded[edit_id]

    @property
    def size(self) -> int:
        return len(self.key_edit)

    def isolation(self, key_id: int) -> float:
        """Distance from a key to the nearest key of another edit (registry.routing.isolation)."""
        return isolation(self.search, self.key_edit, key_id)

    def decide(self, queries: np.ndarray | list, threshold: float, radius_ratio: float) -> Routing:
        """The routing rule (registry.routing.decide) for pooled, normalised queries (n, dim)
        or subject queries (a list of registry.routing.SubjectQuery).
        Kept free of the model so a revoke can ask where a revoked prompt's key now lands."""
        index = None
        if isinstance(queries, list):  # subject queries: lay the keys out once per bank
            if self._subject_index is None:
                self._subject_index = SubjectIndex.of(self.search)
            index = self._subject_index
        return decide(self.search, self.key_edit, self.revoked, queries, RoutingRule(threshold, radius_ratio, 0.0), index)

    @classmethod
    def empty(cls) -> "EditBank":
        def no_lora(edit_id: str) -> tuple[torch.Tensor, torch.Tensor]:
            raise KeyError(edit_id)

        return cls(ExactKeySearch(np.zeros((0, 1), np.float32), np.zeros(0, np.int64)), {}, no_lora)

    @classmethod
    def from_tensors(cls, edits: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> "EditBank":
        """Build an in-memory bank from {edit id: (A, B, keys)}; keys are (n_keys, dim)."""
        keys, key_ids, key_edit = [], [], {}
        for edit_id, (_, _, edit_keys) in edits.items():
            for row in edit_keys.reshape(-1, edit_keys.shape[-1]):
                key_edit[len(key_ids)] = edit_id
                key_ids.append(len(key_ids))
                keys.append(row.detach().to(torch.float32).numpy())
        dim = next(iter(edits.values()))[2].shape[-1] if edits else 1
        matrix = np.stack(keys) if keys else np.zeros((0, dim), np.float32)
        loras = {e: (a, b) for e, (a, b, _) in edits.items()}
        return cls(ExactKeySearch(matrix, np.array(key_ids, dtype=np.int64)), key_edit, loras.__getitem__)


@dataclass
class RoutingScope:
    """One generation call: which prompt positions form the query, and the pinned decision."""

    query_mask: torch.Tensor | None = None
    decision: Routing | None = None
    # where a subject may end (sola.keys.name_ends), for a layer that routes with name ends on
    name_ends: torch.Tensor | None = None
    states: dict[int, torch.Tensor] = field(default_factory=dict)  # block -> module input, until decided
    # after_target "stop"/"refresh": token ids of each row's fired edit's target (None: keep the
    # LoRA on), filled at the decision by `target_ids`; the tokens fed after the prefill; rows
    # whose target is out
    target_ids: Callable[[str], list[int] | None] | None = None
    targets: list[list[int] | None] = field(default_factory=list)
    generated: list[list[int]] = field(default_factory=list)
    done: list[bool] = field(default_factory=list)
    # after_target "refresh": also recompute a done row's cached keys/values with the base model
    # (sola.refresh); each row's real prompt tokens, recorded at the prefill
    refresh: bool = False
    prompts: list[list[int]] | None = None

    def watch(self, new_tokens: torch.Tensor) -> list[int]:
        """Record one decoding step's input tokens (batch, n); a row whose generated tokens now
        end with its edit's target is done: its LoRA is off from this step on. Returns the rows
        that became done at this step."""
        finished = []
        for row, tokens in enumerate(new_tokens.tolist()):
            target = self.targets[row] if row < len(self.targets) else None
            if target is None or self.done[row]:
                continue
            self.generated[row].extend(tokens)
            if self.generated[row][-len(target):] == target:
                self.done[row] = True
                finished.append(row)
        return finished

    def remember_prompts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        """Keep each row's real prompt tokens (those the attention mask marks) from the prefill."""
        rows = input_ids.tolist()
        masks = attention_mask.tolist() if attention_mask is not None else [[1] * len(r) for r in rows]
        self.prompts = [[t for t, m in zip(r, mask) if m] for r, mask in zip(rows, masks)]

    def context(self, row: int, feeding: int) -> list[int]:
        """Row `row`'s tokens in the cache while `feeding` new tokens are fed: its prompt and
        the tokens fed after the prefill before these."""
        if self.prompts is None:
            raise RuntimeError("after_target 'refresh' needs the prefill's tokens")
        fed = self.generated[row]
        return self.prompts[row] + fed[: len(fed) - feeding]


@dataclass
class LayerCall:
    """What one forward call of the routed layer routes by: the snapshot's bank and the call's
    scope (prompt mask, pinned decision), or one trainable LoRA applied to every sequence."""

    bank: EditBank
    scope: RoutingScope
    trainable: tuple[torch.Tensor, torch.Tensor] | None = None


class RoutedLoRA(nn.Module):
    """Wraps one projection; adds at most one edit's LoRA per sequence, chosen by key distance.

    The layer keeps no routing state of its own: each call enters `routing_call(bank, scope)`
    (or `training_adapter`), which sets a context variable private to this layer, so calls at
    different revisions may run at the same time in different threads, each seeing its own
    bank. Outside any call the layer is the base projection."""

    def __init__(self, base: nn.Module, key_function: str, threshold: float, scale: float, radius_ratio: float = 0.0,
                 layer: int = 0, subject_layers: tuple[int, int] | None = None, max_window: int = 8,
                 name_ends: bool = False) -> None:
        super().__init__()
        self.base = base
        self.in_features, self.out_features = projection_dims(base)
        self.key_function = key_function
        self.threshold = threshold
        self.radius_ratio = radius_ratio
        self.scale = scale
        self.layer_index = layer
        self.subject_layers = subject_layers or (layer, layer)
        self.max_window = max_window
        self.name_ends = name_ends and key_function == "subject"
        self._call: ContextVar[LayerCall | None] = ContextVar(f"sola-routed-lora-{id(self)}", default=None)

    def __deepcopy__(self, memo: dict) -> "RoutedLoRA":
        copy = RoutedLoRA(deepcopy(self.base, memo), self.key_function, self.threshold, self.scale, self.radius_ratio,
                          self.layer_index, self.subject_layers, self.max_window, self.name_ends)
        copy.train(self.training)
        return copy

    def tap(self, block: int) -> Callable[[nn.Module, tuple], None]:
        """A forward pre-hook for the projection at `block` (at or below this one): keeps its
        input in the current call's scope until the routing decision is made (prefill only)."""
        def keep_input(_module: nn.Module, args: tuple) -> None:
            call = self._call.get()
            if call is not None and call.trainable is None and call.scope.decision is None:
                call.scope.states[block] = args[0]
        return keep_input

    def watch_tokens(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        """A forward pre-hook for the whole model: after the prefill, each decoding step's input
        tokens go to the scope, which turns a row's LoRA off once its target is generated; under
        after_target "refresh" the prefill's tokens are kept, and a row whose target is out has
        its cached keys/values recomputed by the base model before this step runs."""
        call = self._call.get()
        if call is None or call.trainable is not None:
            return
        scope = call.scope
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            return
        if scope.refresh and scope.prompts is None:  # the first pass of the call: the prefill
            scope.remember_prompts(ids, kwargs.get("attention_mask"))
            return
        if scope.decision is None or not scope.targets:
            return
        for row in scope.watch(ids):
            if scope.refresh:
                self._refresh_row(model, kwargs, row, scope.context(row, ids.shape[1]))

    def _refresh_row(self, model: nn.Module, kwargs: dict, row: int, tokens: list[int]) -> None:
        """Recompute row `row`'s cached keys/values (its `tokens`) with the base model and write
        them into this step's cache (sola.refresh). The nested forward runs with no call set on
        this layer: it is the base model, and this hook and the taps see no call (no recursion)."""
        core = "cache" in kwargs  # sola.core's forward takes `cache`, transformers' `past_key_values`
        cache = kwargs.get("cache") if core else kwargs.get("past_key_values")
        if cache is None:
            raise RuntimeError("after_target 'refresh' needs a decoding step's KV cache")
        token = self._call.set(None)
        try:
            fresh = base_cache(model, tokens, core)
        finally:
            self._call.reset(token)
        write_row(cache, row, fresh)

    # --- explicit modes, each entered and left by a context manager -------------------------
    @contextmanager
    def routing_call(self, bank: EditBank, scope: RoutingScope | None = None) -> Iterator[RoutingScope]:
        """Route every forward inside this block by `bank`; the first pass pins the decision."""
        scope = scope if scope is not None else RoutingScope()
        token = self._call.set(LayerCall(bank, scope))
        try:
            yield scope
        finally:
            self._call.reset(token)

    @contextmanager
    def training_adapter(self, lora_a: torch.Tensor, lora_b: torch.Tensor) -> Iterator[None]:
        """Apply trainable LoRA factors, bypassing routing (edit training): one LoRA to every
        sequence (A (r, in), B (out, r)), or one per sequence of the batch (A (n, r, in),
        B (n, out, r): sequence i gets LoRA i only, so edits trained together never mix)."""
        token = self._call.set(LayerCall(EditBank.empty(), RoutingScope(), (lora_a, lora_b)))
        try:
            yield
        finally:
            self._call.reset(token)

    # --- routing ---------------------------------------------------------------------------
    def queries(self, states: dict[int, torch.Tensor] | torch.Tensor, query_mask: torch.Tensor | None,
                name_ends: torch.Tensor | None = None) -> np.ndarray | list:
        """The routing queries of a batch from the module inputs it read ({block: (batch, tokens,
        dim)}; a bare tensor is this layer's own input). A layer routing with name ends needs
        the batch's `name_ends` (sola.keys.name_ends): without them it would route otherwise."""
        if isinstance(states, torch.Tensor):
            states = {self.layer_index: states}
        if self.key_function == "subject":
            if self.name_ends and name_ends is None:
                raise RuntimeError("this layer routes by name ends: the call must give the prompt's name_ends")
            token_layer, span_layer = self.subject_layers
            return subject_queries(states[token_layer], states[span_layer], query_mask, self.max_window,
                                   name_ends if self.name_ends else None)
        return pool_prompt(states[self.layer_index], query_mask, self.key_function).cpu().numpy()

    def route(self, bank: EditBank, states: dict[int, torch.Tensor] | torch.Tensor, query_mask: torch.Tensor | None,
              name_ends: torch.Tensor | None = None) -> Routing:
        if bank.size == 0:
            first = states if isinstance(states, torch.Tensor) else next(iter(states.values()))
            return Routing.unrouted(first.shape[0])
        return bank.decide(self.queries(states, query_mask, name_ends), self.threshold, self.radius_ratio)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        output = self.base(inputs)
        call = self._call.get()
        if call is None:
            return output
        if call.trainable is not None:
            lora_a, lora_b = call.trainable
            if lora_a.dim() == 3:  # per sequence
                return output + torch.bmm(torch.bmm(inputs, lora_a.transpose(1, 2)), lora_b.transpose(1, 2)) * self.scale
            return output + (inputs @ lora_a.T) @ lora_b.T * self.scale
        if call.bank.size == 0:
            return output
        routing = self._decision(call, inputs)
        done = call.scope.done
        rows = [i for i, edit in enumerate(routing.edits) if edit is not None and not (done and done[i])]
        if not rows:
            return output
        loras = [call.bank.lora(routing.edits[i]) for i in rows]
        stacked_a = torch.stack([a for a, _ in loras]).to(device=inputs.device, dtype=inputs.dtype)  # (n, r, in)
        stacked_b = torch.stack([b for _, b in loras]).to(device=inputs.device, dtype=inputs.dtype)  # (n, out, r)
        index = torch.tensor(rows, dtype=torch.long, device=inputs.device)
        selected = inputs.index_select(0, index)
        delta = torch.bmm(torch.bmm(selected, stacked_a.transpose(1, 2)), stacked_b.transpose(1, 2)) * self.scale
        return output.index_add(0, index, delta)

    def _decision(self, call: LayerCall, inputs: torch.Tensor) -> Routing:
        scope = call.scope
        if scope.decision is not None:
            if len(scope.decision.edits) != inputs.shape[0]:
                raise RuntimeError("batch size changed inside one routing scope")
        else:
            states = {**scope.states, self.layer_index: inputs}
            scope.decision = self.route(call.bank, states, scope.query_mask, scope.name_ends)
            scope.states = {}
        if scope.target_ids is not None and not scope.targets:  # once, at the prefill
            scope.targets = [scope.target_ids(edit) if edit is not None else None for edit in scope.decision.edits]
            scope.generated = [[] for _ in scope.targets]
            scope.done = [False for _ in scope.targets]
        return scope.decision
