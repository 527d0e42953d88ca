"""after_target "refresh": a row's cached keys and values recomputed by the base model.

Under "stop" a row's LoRA goes off once its edit's target is out, but the keys and values the
generation's cache holds for the prompt and target positions were computed with the LoRA on
(in the edited block and every block above it), so the base model writes on from an edited
context. "refresh" recomputes them at that moment: one forward pass of the base model over the
row's own tokens (unpadded, positions 0..n-1, which is what left padding gives the row in the
batch) whose keys and values are written over that row's slots of the batch cache. From then
on the row decodes as the base model continuing prompt + target does (up to float rounding),
for one extra prefill per fired row; the other rows' slots are not touched.

Two cache kinds, each with one place that writes a row: transformers' DynamicCache (its
`generate`; full and sliding-window layers), `write_dynamic_row` here, and sola's own
sola.core.llama.KVCache (the core's greedy loop), `KVCache.write_row`. Nothing here imports
transformers: the core runs without it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sola.core.llama import KVCache


def base_cache(model: nn.Module, tokens: list[int], core: bool) -> Any:
    """The cache of one forward pass of `model` over `tokens` alone (batch 1, positions
    0..n-1). The caller makes sure no routing call is active, so this is the base model."""
    device = next(model.parameters()).device
    output = model(input_ids=torch.tensor([tokens], dtype=torch.long, device=device), use_cache=True, logits_to_keep=1)
    return output.cache if core else output.past_key_values


def write_row(cache: Any, row: int, fresh: Any) -> None:
    """Write `fresh` (the cache of a forward over one row's tokens alone) into row `row` of the
    generation's `cache`, whichever kind it is."""
    if isinstance(cache, KVCache):
        cache.write_row(row, fresh)
    else:
        write_dynamic_row(cache, row, fresh)


def write_dynamic_row(cache: Any, row: int, fresh: Any) -> None:
    """Row `row` of a transformers DynamicCache from `fresh` (a DynamicCache of batch 1), layer
    by layer, in place. Left padding puts a row's real tokens in the last slots of every layer.
    A sliding-window layer (Gemma 3) holds only the latest positions, in both caches ending at
    the same one, so the last min(held, fresh) slots are written: exactly the positions the
    layer holds of this row (earlier ones are gone from both, or are this row's padding)."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    if len(cache.layers) != len(fresh.layers):
        raise ValueError(f"cannot refresh a cache of {len(cache.layers)} layers from one of {len(fresh.layers)}")
    for mine, theirs in zip(cache.layers, fresh.layers):
        if type(mine) not in (DynamicLayer, DynamicSlidingWindowLayer) or type(theirs) is not type(mine):
            raise NotImplementedError(f"after_target 'refresh' cannot write into a {type(mine).__name__} cache layer")
        sliding = type(mine) is DynamicSlidingWindowLayer
        for target, source in ((mine.keys, theirs.keys), (mine.values, theirs.values)):
            held, computed = target.shape[-2], source.shape[-2]
            if computed > held and not sliding:
                raise ValueError(f"a refreshed row has {computed} positions, the cache holds {held}")
            count = min(held, computed)
            target[row, :, held - count:] = source[0, :, computed - count:]
