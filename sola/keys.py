"""Routing keys: one vector per prompt, read from the edited module's own input (mean, last)
or, for subject keys, from the inputs of the same module at two blocks at or below it.

The same function computes a stored key (at edit time) and a query (at inference), so the
two are comparable by construction. Vectors are L2-normalised so that inner product is
cosine similarity and `1 - ip` is the cosine distance the threshold is expressed in.
"""

from __future__ import annotations

import math

import torch

from registry.routing import SubjectQuery


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


# --- subject keys (docs/concepts.md, "Subject keys") ----------------------------------------------
def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.to(torch.float32), dim=-1)


def key_positions(mask_row: torch.Tensor) -> torch.Tensor:
    """The prompt positions a subject key or query may read: the masked ones minus the first.
    The first position's state is nearly the same for every prompt (every token attends to it
    as a sink), so a window that includes it looks like every other window; a one-token prompt
    keeps it, having nothing else."""
    positions = torch.nonzero(mask_row > 0).flatten()
    return positions[1:] if len(positions) > 1 else positions


def subject_span(positions: torch.Tensor, span: tuple[int, int] | None, max_window: int) -> tuple[int, int]:
    """The token span [start, end) a stored subject key is read from: the subject's tokens, at
    most the last `max_window` of them (a query's windows are no longer); without a subject the
    prompt's last `max_window` readable tokens stand in for it, so the literal prompt still
    fires its edit (at distance 0) while a paraphrase fires it only if it ends alike."""
    first, last = int(positions[0]), int(positions[-1]) + 1
    if span is None:
        start, end = max(first, last - max_window), last
    else:
        start, end = span
        if start < first < end:  # the subject begins at the excluded first position
            start = first
    return max(start, end - max_window), end


def subject_key(token_states: torch.Tensor, span_states: torch.Tensor, mask: torch.Tensor | None,
                span: tuple[int, int] | None, max_window: int) -> torch.Tensor:
    """The stored key of one prompt (states (1, tokens, d)): [last subject token at the token
    layer; mean of the subject span at the span layer], each unit length, over sqrt(2), so the
    key is unit length and its inner product with another is the mean of the two cosines."""
    row = mask[0] if mask is not None else torch.ones(token_states.shape[1], dtype=torch.long)
    start, end = subject_span(key_positions(row.cpu()), span, max_window)
    token_part = _unit(token_states[0, end - 1])
    span_part = _unit(span_states[0, start:end].to(torch.float32).mean(dim=0))
    return torch.cat([token_part, span_part]) / math.sqrt(2.0)


def continues_name(token_text: str) -> bool:
    """Whether text that follows a token carries on the name that token might end: a piece
    inside a word ("ie" of " Bow|ie", "3" of "A|310"), or a capitalised or numbered next word
    (" Bowie" after "David", " State" after "Moscow", " 737" after "Boeing"). Punctuation,
    possessives, line breaks, special tokens and lower-case words do not ("Robinson|'s",
    "Oslo|,", "Putin| speaks"); nor does a bare space with nothing after it."""
    if token_text.startswith(" "):
        rest = token_text[1:]
        return bool(rest) and (rest[0].isupper() or rest[0].isdigit())
    return bool(token_text) and token_text[0].isalnum()


def token_texts(tokenizer: object, ids: list[int]) -> dict[int, str]:
    """Each token's text as it reads inside a sequence, its leading space kept: decoded after an
    anchor token, with the anchor's own text cut off. Decoding a token alone is not enough:
    SentencePiece decoders (Llama 2, Mistral) strip the first space of what they decode, so
    " Bowie" alone would read "Bowie", a piece inside a word."""
    anchor = list(tokenizer("a", add_special_tokens=False)["input_ids"])[:1]
    lead = tokenizer.decode(anchor) if anchor else ""
    texts = {}
    for token in ids:
        joined = tokenizer.decode(anchor + [token]) if anchor else tokenizer.decode([token])
        texts[token] = joined[len(lead):] if joined.startswith(lead) else tokenizer.decode([token])
    return texts


def name_ends(token_texts: list[list[str]], query_mask: torch.Tensor | None) -> torch.Tensor:
    """(batch, tokens) bool: the positions where a subject may end, for routing with
    `name_ends` on (`token_texts`: each token of each row decoded on its own). A position may not
    end one when the query's next token carries the name on (continues_name); a tokenizer's bare
    space token is judged with the token after it ("Boeing| |7|3|7", but "KANU| |ar|e"). The
    query's last position, and one whose next token lies outside the query mask (a target, a chat
    template's closing tokens), may end one, so the decision never depends on what follows the
    prompt. A causal model's state at "David" is the same in "David Bowie plays" as in "David
    plays": only what comes next tells them apart."""
    batch, tokens = len(token_texts), len(token_texts[0]) if token_texts else 0
    inside = (query_mask.detach().cpu() > 0).tolist() if query_mask is not None else [[True] * tokens for _ in range(batch)]
    ends = torch.ones(batch, tokens, dtype=torch.bool)
    for b, texts in enumerate(token_texts):
        for t in range(tokens - 1):
            if not inside[b][t + 1]:
                continue
            following = texts[t + 1]
            if following == " " and t + 2 < tokens and inside[b][t + 2]:
                following += texts[t + 2]
            ends[b, t] = not continues_name(following)
    return ends


def subject_queries(token_states: torch.Tensor, span_states: torch.Tensor, query_mask: torch.Tensor | None,
                    max_window: int, ends: torch.Tensor | None = None) -> list[SubjectQuery]:
    """One SubjectQuery per sequence (states (batch, tokens, d)): each readable prompt token at
    the token layer, and every window of 1..max_window consecutive readable tokens (its mean
    at the span layer), unit length. The query does not know where the subject is: its best
    token and best window are what meet the key (registry.routing.subject_similarity).
    With `ends` (name_ends), only tokens and windows that end where a name may end take part."""
    batch, tokens, _ = token_states.shape
    mask = query_mask if query_mask is not None else torch.ones(batch, tokens, dtype=torch.long)
    if tuple(mask.shape) != (batch, tokens):
        raise ValueError(f"query mask shape {tuple(mask.shape)} does not match inputs {(batch, tokens)}")
    if ends is not None and tuple(ends.shape) != (batch, tokens):
        raise ValueError(f"name-end mask shape {tuple(ends.shape)} does not match inputs {(batch, tokens)}")
    found = []
    for b in range(batch):
        positions = key_positions(mask[b].cpu()).to(token_states.device)
        if len(positions) == 0:
            raise ValueError("a sequence has no prompt positions to build its routing query from")
        token_rows = _unit(token_states[b, positions].detach())
        span_rows = span_states[b, positions].detach().to(torch.float32)
        sums = torch.cat([torch.zeros(1, span_rows.shape[1], device=span_rows.device), span_rows.cumsum(dim=0)])
        widths = range(1, min(max_window, len(positions)) + 1)
        windows = torch.cat([(sums[w:] - sums[:-w]) / w for w in widths])
        if ends is None:
            found.append(SubjectQuery(token_rows.cpu().numpy(), _unit(windows).cpu().numpy()))
            continue
        may_end = ends[b].cpu()[positions.cpu()]  # never all False: the last readable position may end
        # window i of width w covers positions[i .. i + w - 1]: it may end where its last one may
        window_ends = torch.cat([may_end[w - 1:] for w in widths])
        lengths = torch.cat([torch.full((len(positions) - w + 1,), w, dtype=torch.long) for w in widths])
        keep = window_ends.to(windows.device)
        found.append(SubjectQuery(token_rows[may_end.to(token_rows.device)].cpu().numpy(), _unit(windows[keep]).cpu().numpy(),
                                  lengths[window_ends].numpy()))
    return found
