"""Greedy decoding with a KV cache, step for step as transformers' `generate` does it.

Reproducing transformers' loop, not just its idea, is what keeps sola's routing the same:
the routed layer takes its decision in the first forward pass (the prefill, over the whole
prompt) and pins it in the call's RoutingScope; every later pass feeds one token per row, and
the model's forward pre-hook (RoutedLoRA.watch_tokens) sees those tokens (and the cache), so
`after_target` "stop" turns a row's LoRA off, and "refresh" also rewrites the row's cached keys
and values (KVCache.write_row), at the same step. So: one forward per new token, the last new
token never fed back; a row that produced an end-of-sequence token continues with padding;
decoding ends when every row has ended or `max_new_tokens` are produced. Positions follow
the attention mask (left padding takes no positions).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def eos_ids(config: Any) -> list[int]:
    """The end-of-sequence token ids of a config (`eos_token_id`: one id, a list, or none)."""
    found = getattr(config, "eos_token_id", None)
    if found is None:
        return []
    return [int(found)] if isinstance(found, int) else [int(i) for i in found]


@torch.no_grad()
def greedy(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, max_new_tokens: int,
           pad_token_id: int | None, eos_token_ids: list[int] | None = None, streamer: Any = None) -> torch.Tensor:
    """The prompt rows (batch, width), left padded, followed by up to `max_new_tokens` greedy
    tokens each; `model(input_ids=..., attention_mask=..., position_ids=..., cache=...,
    use_cache=True, logits_to_keep=1)` is called once per new token but the last."""
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    stops = eos_ids(model.config) if eos_token_ids is None else eos_token_ids
    pad = pad_token_id if pad_token_id is not None else (stops[0] if stops else 0)
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    stop_ids = torch.tensor(stops, dtype=input_ids.dtype, device=input_ids.device)
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    sequences = input_ids
    if streamer is not None:
        streamer.put(input_ids.cpu())
    output = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache = output.cache
    for step in range(max_new_tokens):
        chosen = output.logits[:, -1].to(torch.float32).argmax(dim=-1)
        chosen = torch.where(unfinished, chosen, torch.full_like(chosen, pad))
        sequences = torch.cat([sequences, chosen[:, None]], dim=-1)
        if streamer is not None:
            streamer.put(chosen.cpu())
        unfinished = unfinished & ~torch.isin(chosen, stop_ids)
        if step == max_new_tokens - 1 or not bool(unfinished.any()):
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
        positions = positions[:, -1:] + 1
        output = model(input_ids=chosen[:, None], attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                       logits_to_keep=1)
    if streamer is not None:
        streamer.end()
    return sequences
