"""Training's transposed linear layers (sola.linears): same results as nn.Linear, put back after."""

from __future__ import annotations

import torch
from torch import nn

from sola.linears import TransposedLinear, transposed_linears


def _frozen_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.SiLU(), nn.Linear(32, 8, bias=False))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def test_swapped_layers_compute_what_linear_computes_forward_and_backward() -> None:
    model = _frozen_mlp()
    inputs = torch.randn(3, 5, 16, requires_grad=True)
    expected = model(inputs)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), inputs)
    with transposed_linears([model], {}) as swapped:
        assert swapped == 2
        assert all(isinstance(model[i], TransposedLinear) for i in (0, 2))
        got = model(inputs)
        (got_grad,) = torch.autograd.grad(got.square().sum(), inputs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-5, atol=1e-6)


def test_layers_are_put_back_even_when_the_block_raises() -> None:
    model = _frozen_mlp()
    originals = [model[0], model[2]]
    try:
        with transposed_linears([model], {}):
            raise RuntimeError("a pass failed")
    except RuntimeError:
        pass
    assert [model[0], model[2]] == originals


def test_copies_are_reused_and_remade_after_the_weight_changes() -> None:
    model = _frozen_mlp()
    copies: dict = {}  # id(weight) -> TransposedLinear
    with transposed_linears([model], copies):
        first = model[0].transposed
    with transposed_linears([model], copies):
        assert model[0].transposed is first  # no second copy of an unchanged weight
    with torch.no_grad():
        model[0].weight.mul_(2.0)
    with transposed_linears([model], copies):
        torch.testing.assert_close(model[0].transposed, model[0].weight.t())
        assert model[0].transposed is not first


def test_trainable_or_hooked_layers_are_left_alone() -> None:
    model = _frozen_mlp()
    model[0].weight.requires_grad_(True)  # a weight being trained needs its own gradient
    seen: list[torch.Size] = []
    model[2].register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape))
    with transposed_linears([model], {}) as swapped:
        assert swapped == 0
        model(torch.randn(2, 16))
    assert seen == [torch.Size([2, 32])]
