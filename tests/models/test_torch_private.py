"""The private torch API behind models/_torch_private.py still answers as mmlo relies on (fails on an upgrade
that removes or changes it)."""

from __future__ import annotations

import torch

from mmlo.models._torch_private import is_functorch_wrapped


def test_wrapped_only_inside_a_torch_func_transform() -> None:
    # a plain tensor is not wrapped; the same tensor seen through vmap and through grad is
    x = torch.ones(3, 2)
    assert not is_functorch_wrapped(x)
    seen: list[bool] = []

    def probe(row: torch.Tensor) -> torch.Tensor:
        seen.append(is_functorch_wrapped(row))
        return (row * row).sum()

    torch.func.vmap(probe)(x)
    torch.func.grad(probe)(x[0])
    assert seen == [True, True]
