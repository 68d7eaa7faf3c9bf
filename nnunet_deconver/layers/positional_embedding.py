"""Learnable positional embedding added in the bridge (papers/factorizer.md section 3.2, Fig. 1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


class PositionalEmbedding(nn.Module):
    """x + P with a learnable P of shape (1, C, *size), initialised from N(0, 1).

    ``size`` is the bridge's spatial size at the training patch size. Inputs of another size (a
    larger sliding-window tile, a different validation patch) get P resampled to their size by linear
    interpolation, so the network runs at any size its strides allow.
    """

    def __init__(self, channels: int, size: Sequence[int]) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(1, channels, *size))

    def forward(self, x: Tensor) -> Tensor:
        embedding = self.embedding
        if embedding.shape[2:] != x.shape[2:]:
            embedding = F.interpolate(
                embedding, size=x.shape[2:], mode=_INTERPOLATION[x.dim() - 2], align_corners=False
            )
        return x + embedding.to(x.dtype)

