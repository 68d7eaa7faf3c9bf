"""Layer normalization over the channels of each voxel (papers/factorizer.md eq. 4, "LayerNorm")."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ChannelLayerNorm(nn.LayerNorm):
    """nn.LayerNorm over the channel axis of (B, C, *spatial) tensors: every voxel's C features are
    normalized on their own, as a Transformer normalizes each token."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        moved = x.movedim(1, -1)
        return F.layer_norm(moved, self.normalized_shape, self.weight, self.bias, self.eps).movedim(-1, 1)
