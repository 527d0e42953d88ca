"""Routing keys: one vector per prompt, read from the edited module's own input.

The same function computes a stored key (at edit time) and a query (at inference), so the
two are comparable by construction. Vectors are L2-normalised so that inner product is
cosine similarity and `1 - ip` is the cosine distance the threshold is expressed in.
"""

from __future__ import annotations

import torch


def pool_prompt(inputs: torch.Tensor, query_mask: torch.Tensor | None, key_function: str) -> torch.Tensor:
    """Pool per-token module inputs (batch, tokens, dim) over the prompt positions.

    `query_mask` (batch, tokens) marks the positions that belong to the prompt (1) as opposed
    to padding or teacher-forced target tokens (0); `None` means every position. Returns
    float32 (batch, dim), L2-normalised.
    """
    x = inputs.detach().to(torch.float32)
    batch, tokens, _ = x.shape
    if query_mask is None:
        mask = torch.ones(batch, tokens, dtype=torch.float32, device=x.device)
    else:
        mask = query_mask.to(device=x.device, dtype=torch.float32)
        if mask.shape != (batch, tokens):
            raise ValueError(f"query mask shape {tuple(mask.shape)} does not match inputs {(batch, tokens)}")
    if bool((mask.sum(dim=1) == 0).any()):
        raise ValueError("a sequence has no prompt positions to build its routing query from")
    if key_function == "mean":
        pooled = (x * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True)
    elif key_function == "last":
        positions = torch.arange(tokens, device=x.device).expand(batch, tokens)
        last = torch.where(mask > 0, positions, torch.full_like(positions, -1)).max(dim=1).values
        pooled = x[torch.arange(batch, device=x.device), last]
    else:
        raise ValueError(f"unknown key function {key_function!r}")
    return torch.nn.functional.normalize(pooled, dim=-1)
