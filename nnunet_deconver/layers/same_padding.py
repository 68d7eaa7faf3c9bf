"""'Same' padding for odd kernels that keeps nothing for backward.

PyTorch's replicate padding (``F.pad(mode='replicate')``, also inside ``nn.Conv*d(padding_mode=
'replicate')``) saves its whole input for backward, so a convolution after it costs two activations
instead of one. Here replicate padding concatenates broadcast copies of the edge samples (autograd keeps
only sizes for concatenation, slicing and broadcasting), and zero padding is a constant pad (which keeps
nothing either). Reflect and circular padding use ``F.pad``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

PADDING_MODES = ("replicate", "zeros", "reflect", "circular")


def _replicate(x: Tensor, halves: Sequence[int]) -> Tensor:
    for axis, half in enumerate(halves, start=2):
        if half:
            shape = list(x.shape)
            shape[axis] = half
            first, last = x.narrow(axis, 0, 1).expand(shape), x.narrow(axis, x.shape[axis] - 1, 1).expand(shape)
            x = torch.cat((first, x, last), dim=axis)
    return x


def same_padding(x: Tensor, kernel_size: Sequence[int], mode: str) -> Tensor:
    """Pad the spatial axes of (B, C, *spatial) by ``k // 2`` on both sides for odd kernels ``k``.

    Args:
        mode: 'replicate' (repeat the edge sample), 'zeros', 'reflect' or 'circular'.
    """
    if mode not in PADDING_MODES:
        raise ValueError(f"padding mode {mode!r} is not one of {PADDING_MODES}")
    halves = [k // 2 for k in kernel_size]
    if mode == "replicate":
        return _replicate(x, halves)
    pads = [p for half in reversed(halves) for p in (half, half)]
    return F.pad(x, pads, mode="constant" if mode == "zeros" else mode)
