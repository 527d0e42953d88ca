"""The Llama decoder (Llama 2/3, SmolLM2) for inference, in plain torch.

It computes what transformers' `LlamaForCausalLM` computes (tests/test_core.py holds the
logits to it) with the same module names, so a saved state dict loads as it is and sola's
routed layer finds `model.layers.N.mlp.up_proj` where the architecture table says it lives:
RMSNorm, rotary position embeddings (the config's `default`, `linear` or `llama3` RoPE),
grouped-query attention with a KV cache, a SwiGLU MLP, embeddings tied to the output layer
when the config says so. Anything else a config asks for is refused by `unsupported`, and the
caller loads the model through transformers instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class LlamaConfig:
    """The fields of a Llama `config.json` the core needs, with transformers' defaults for
    the ones a saved config leaves out (save_pretrained writes only non-default values)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048
    rope: dict[str, Any] = field(default_factory=lambda: {"rope_type": "default", "rope_theta": 10000.0})
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None
    model_type: str = "llama"  # what sola.arch recognises the family by

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "LlamaConfig":
        heads = int(raw["num_attention_heads"])
        return cls(
            vocab_size=int(raw.get("vocab_size", 32000)), hidden_size=int(raw.get("hidden_size", 4096)),
            intermediate_size=int(raw.get("intermediate_size", 11008)), num_hidden_layers=int(raw.get("num_hidden_layers", 32)),
            num_attention_heads=heads, num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or int(raw.get("hidden_size", 4096)) // heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)), max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            rope=rope_parameters(raw), tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            attention_bias=bool(raw.get("attention_bias", False)), mlp_bias=bool(raw.get("mlp_bias", False)),
            bos_token_id=raw.get("bos_token_id", 1), eos_token_id=raw.get("eos_token_id", 2), pad_token_id=raw.get("pad_token_id"),
        )


def rope_parameters(raw: dict[str, Any]) -> dict[str, Any]:
    """The RoPE settings of a config, in transformers 5's `rope_parameters` form, also from the
    older `rope_theta` plus `rope_scaling` fields."""
    found = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    if "type" in found and "rope_type" not in found:
        found["rope_type"] = found.pop("type")
    found.setdefault("rope_type", "default")
    found.setdefault("rope_theta", float(raw.get("rope_theta", 10000.0)))
    return found


def unsupported(raw: dict[str, Any]) -> str | None:
    """Why the core cannot run this config (None when it can): a family or setting it does
    not implement. The caller then loads the model through transformers."""
    if raw.get("model_type") != "llama":
        return f"model type {raw.get('model_type')!r} is not llama"
    if raw.get("hidden_act", "silu") != "silu":
        return f"activation {raw.get('hidden_act')!r}"
    if "quantization_config" in raw:
        return "a quantised checkpoint"
    rope = rope_parameters(raw)
    if rope["rope_type"] not in ROPE_TYPES:
        return f"RoPE type {rope['rope_type']!r}"
    if float(rope.get("partial_rotary_factor", 1.0)) != 1.0:
        return "partial rotary embeddings"
    return None


def inverse_frequencies(config: LlamaConfig) -> torch.Tensor:
    """RoPE's inverse frequencies (head_dim / 2,), as transformers computes them per rope type;
    on the CPU even while the model is built on the meta device (they are computed, not loaded)."""
    rope, dim = config.rope, config.head_dim
    positions = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").to(torch.float)
    inv_freq = 1.0 / (float(rope["rope_theta"]) ** (positions / dim))
    kind = rope["rope_type"]
    if kind == "linear":
        return inv_freq / float(rope["factor"])
    if kind == "llama3":  # Llama 3.1: long wavelengths slowed by `factor`, a smooth blend between
        factor, low, high = float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
        old_context = float(rope["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_context / low, old_context / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_context / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)
    return inv_freq


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.variance_epsilon = eps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        dtype = hidden.dtype
        x = hidden.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """cos and sin of each position's angles; the frequencies are a buffer, not weights."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.register_buffer("inv_freq", inverse_frequencies(config), persistent=False)

    def forward(self, like: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=like.device, dtype=torch.float)
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos().to(like.dtype), angles.sin().to(like.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class KVCache:
    """Keys and values of every block for the positions seen so far (batch, kv heads, seq, dim)."""

    def __init__(self) -> None:
        self.layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def length(self) -> int:
        return next(iter(self.layers.values()))[0].shape[2] if self.layers else 0

    def update(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer in self.layers:
            old_keys, old_values = self.layers[layer]
            keys, values = torch.cat([old_keys, keys], dim=2), torch.cat([old_values, values], dim=2)
        self.layers[layer] = (keys, values)
        return keys, values

    def write_row(self, row: int, fresh: "KVCache") -> None:
        """Overwrite batch row `row`'s last slots, in every block, in place, with `fresh`'s one
        row (the cache of a forward over that row's tokens alone): after_target "refresh"
        (sola.refresh). Left padding puts a row's real tokens last; other rows are untouched."""
        for layer, (keys, values) in fresh.layers.items():
            held_keys, held_values = self.layers[layer]
            count = keys.shape[2]
            if count > held_keys.shape[2]:
                raise ValueError(f"a refreshed row has {count} positions, the cache holds {held_keys.shape[2]}")
            held_keys[row, :, -count:] = keys[0]
            held_values[row, :, -count:] = values[0]


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.head_dim = config.head_dim
        self.groups = config.num_attention_heads // config.num_key_value_heads
        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * config.head_dim, bias=config.attention_bias)
        self.k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * config.head_dim, bias=config.attention_bias)
        self.v_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * config.head_dim, bias=config.attention_bias)
        self.o_proj = nn.Linear(config.num_attention_heads * config.head_dim, config.hidden_size, bias=config.attention_bias)

    def forward(self, hidden: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                cache: KVCache | None) -> torch.Tensor:
        batch, length, _ = hidden.shape
        shape = (batch, length, -1, self.head_dim)
        query = self.q_proj(hidden).view(shape).transpose(1, 2)
        key = self.k_proj(hidden).view(shape).transpose(1, 2)
        value = self.v_proj(hidden).view(shape).transpose(1, 2)
        cos, sin = rotary[0].unsqueeze(1), rotary[1].unsqueeze(1)
        query, key = query * cos + _rotate_half(query) * sin, key * cos + _rotate_half(key) * sin
        if cache is not None:
            key, value = cache.update(self.layer, key, value)
        key, value = _repeat_kv(key, self.groups), _repeat_kv(value, self.groups)
        causal = mask is None and length > 1  # an unpadded prefill; one new token attends to everything
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=causal, scale=self.head_dim ** -0.5)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


def _repeat_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
    """Each key/value head shared by `groups` query heads (grouped-query attention)."""
    if groups == 1:
        return states
    batch, heads, length, dim = states.shape
    return states[:, :, None].expand(batch, heads, groups, length, dim).reshape(batch, heads * groups, length, dim)


class MLP(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig, layer: int) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), rotary, mask, cache)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class LlamaModel(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        # given an empty weight, the embedding skips its random init: on the meta device (where
        # sola.core.load builds the model) normal_ runs through torch's decompositions, whose
        # import (torch._dynamo) costs more than the rest of the load
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size,
                                         _weight=torch.empty(config.vocab_size, config.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)


@dataclass
class CausalLMOutput:
    logits: torch.Tensor  # (batch, kept positions, vocab)
    cache: KVCache | None


class LlamaForCausalLM(nn.Module):
    """The causal LM: `model(input_ids=...)` gives `.logits`, as transformers' model does for
    the arguments sola passes (attention_mask, position_ids, use_cache, logits_to_keep)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def tie_weights(self) -> None:
        """The output layer reads the input embeddings (configs with tie_word_embeddings)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                cache: KVCache | None = None, use_cache: bool = False, logits_to_keep: int = 0) -> CausalLMOutput:
        """Logits of the last `logits_to_keep` positions (0: all). `attention_mask` (batch, past +
        new) marks real tokens (1) and left padding (0); `cache` holds the past positions."""
        if use_cache and cache is None:
            cache = KVCache()
        past = cache.length() if cache is not None else 0
        length = input_ids.shape[1]
        if position_ids is None:
            position_ids = torch.arange(past, past + length, device=input_ids.device).unsqueeze(0)
        hidden = self.model.embed_tokens(input_ids)
        rotary = self.model.rotary_emb(hidden, position_ids)
        mask = _attention_mask(attention_mask, length, past, hidden.dtype)
        for block in self.model.layers:
            hidden = block(hidden, rotary, mask, cache)
        hidden = self.model.norm(hidden)
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        return CausalLMOutput(logits, cache if use_cache else None)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, max_new_tokens: int = 16,
                 pad_token_id: int | None = None, eos_token_id: int | list[int] | None = None, streamer: Any = None,
                 do_sample: bool = False, **sampling: Any) -> torch.Tensor:
        """Greedy decoding (sola.core.generate.greedy), called as RoutedModel calls transformers'
        `generate`: the prompt rows followed by the new tokens; `eos_token_id` replaces the
        config's end tokens. Sampling is not implemented."""
        from sola.core.generate import greedy

        if do_sample or sampling:
            raise ValueError("the inference core decodes greedily only; sampling needs the transformers model")
        stops = None if eos_token_id is None else ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
        return greedy(self, input_ids, attention_mask, max_new_tokens, pad_token_id, stops, streamer=streamer)


def _attention_mask(padding: torch.Tensor | None, length: int, past: int, dtype: torch.dtype) -> torch.Tensor | None:
    """An additive mask (batch, 1, new, past + new) for a batch with left padding, else None
    (causal attention, or one new token that sees every past one). Masked scores get the
    dtype's minimum, not -inf, so a padding row that sees nothing stays finite."""
    if padding is None or bool(padding.all()):
        if past == 0 or length == 1:
            return None
        padding = torch.ones(1, past + length, dtype=torch.long, device=None if padding is None else padding.device)
    total = past + length
    keys = torch.arange(total, device=padding.device)
    queries = torch.arange(past, total, device=padding.device)
    allowed = (keys[None, :] <= queries[:, None])[None, None] & padding[:, None, None, :].bool()
    return torch.zeros(allowed.shape, dtype=dtype, device=padding.device).masked_fill(~allowed, torch.finfo(dtype).min)
