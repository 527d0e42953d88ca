"""Frozen linear layers laid out for training's short sequences on a CPU.

An edit trains on one prompt of 8-25 tokens, so every matrix product of its passes multiplies a
few rows by a large frozen weight. On the CPU, `F.linear` hands BLAS the weight as stored
(out, in) and asks for its transpose; for so few rows that product alone runs at about half the
speed of the same product against a weight stored (in, out). A whole training pass, which also
streams every weight from memory and runs many small operations, gets about 8% faster
(docs/results.md, "Edit time: where it goes"). `TransposedLinear` keeps such a copy next to the
layer's own weight and uses it forward; the backward pass needs only the gradient of the input
(the base model is frozen), `grad @ W`, which already reads the stored layout.

It is used inside `transposed_linears`, which swaps a block's `nn.Linear` children for the time
of a training pass and puts them back: nothing outside training sees it, and the copies are
kept by the caller (sola.routed.RoutedModel) so later edits do not rebuild them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn


class _FrozenMatmul(torch.autograd.Function):
    """x @ W^T computed as x @ transposed; the backward returns the input's gradient only."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, inputs: torch.Tensor, transposed: torch.Tensor,
                weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return inputs @ transposed

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (weight,) = ctx.saved_tensors
        return grad @ weight, None, None


class TransposedLinear(nn.Module):
    """A frozen `nn.Linear` computing with a contiguous (in, out) copy of its weight.

    `weight` and `bias` are the wrapped layer's own tensors (anything that reads a layer's
    dtype or shape sees the original); the result equals `F.linear` up to the rounding of a
    different summation order."""

    def __init__(self, linear: nn.Linear, transposed: torch.Tensor) -> None:
        super().__init__()
        self.linear = linear
        self.weight = linear.weight
        self.bias = linear.bias
        self.transposed = transposed
        self.version = linear.weight._version  # the weight's version counter when copied
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        output = _FrozenMatmul.apply(inputs, self.transposed, self.weight.detach())
        return output if self.bias is None else output + self.bias


def _swappable(module: nn.Module) -> bool:
    """A frozen CPU `nn.Linear` with no hooks of its own (a hook would be lost with the swap)."""
    return (type(module) is nn.Linear and module.weight.device.type == "cpu" and not module.weight.requires_grad
            and not (module.bias is not None and module.bias.requires_grad)
            and not (module._forward_hooks or module._forward_pre_hooks))


@contextmanager
def transposed_linears(roots: Iterable[nn.Module], held: dict[int, TransposedLinear]) -> Iterator[int]:
    """Within the block, every swappable `nn.Linear` under `roots` computes as a
    TransposedLinear; yields how many were swapped. `held` maps id(weight) to its
    TransposedLinear: made on first use and reused while the weight is unchanged (an in-place
    write bumps its version counter and the copy is made again), so the caller decides how long
    the copies live and a training pass only swaps modules."""
    swapped: list[tuple[nn.Module, str, nn.Linear]] = []
    try:
        for root in roots:
            for parent in list(root.modules()):
                for name, child in list(parent.named_children()):
                    if not _swappable(child):
                        continue
                    wrapper = held.get(id(child.weight))
                    if wrapper is None or wrapper.linear is not child or wrapper.version != child.weight._version:
                        wrapper = held[id(child.weight)] = TransposedLinear(child, child.weight.detach().t().contiguous())
                    parent._modules[name] = wrapper  # what setattr does for a module, without its checks
                    swapped.append((parent, name, child))
        yield len(swapped)
    finally:
        for parent, name, child in reversed(swapped):
            parent._modules[name] = child
