"""Channel MLP made of pointwise convolutions: papers/deconver.md eq. (5)."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd


class PointwiseMLP(nn.Module):
    """PointwiseConv(C -> alpha*C) -> GELU -> PointwiseConv(alpha*C -> C), eq. (5).

    Args:
        channels: C.
        conv_op: the convolution class matching the data (nn.Conv2d or nn.Conv3d).
        expansion: the expansion factor alpha (the paper uses 4).
    """

    def __init__(self, channels: int, conv_op: type[_ConvNd], *, expansion: int = 4) -> None:
        super().__init__()
        hidden = expansion * channels
        self.expand = conv_op(channels, hidden, kernel_size=1)
        self.activation = nn.GELU()
        self.project = conv_op(hidden, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.activation(self.expand(x)))
