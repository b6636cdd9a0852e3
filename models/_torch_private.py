"""The one private torch API mmlo uses, behind one function (tests/models/test_torch_private.py checks it).

Inside a caller's ``torch.func`` transform (transference's ``vmap(grad(...))``) tensors are functorch-wrapped:
they cannot change memory format, must not write module state, and only ``torch.func.grad`` composes with
them. torch has no public way to ask; if an upgrade removes the private one, the test fails loudly.
"""

from __future__ import annotations

import torch


def is_functorch_wrapped(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is being traced by a torch.func transform (vmap, grad) of a caller."""
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(tensor))
