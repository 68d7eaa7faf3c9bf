"""Deconv Mixer: papers/deconver.md section III.E, eq. (6)."""

from __future__ import annotations

from collections.abc import Sequence

from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from nnunet_deconver.layers.compute import autocast_disabled, to_autocast_dtype
from nnunet_deconver.layers.ndc import NonnegativeDeconvolution


class DeconvMixer(nn.Module):
    """PointwiseConv -> ReLU -> NDC -> PointwiseConv, eq. (6).

    The NDC layer expands the channels to R*C; the last pointwise convolution maps them back to C,
    so the mixer's output has the shape of its input. Under autocast the NDC and the last
    projection compute in float32 (the NDC's output is not bounded by fp16's range); the output is
    returned in the autocast dtype, clamped to its finite range.

    Args:
        channels: C.
        conv_op: nn.Conv1d / nn.Conv2d / nn.Conv3d, which fixes the number of spatial axes.
        kernel_size: odd NDC filter size (scalar or per axis).
        ratio: NDC source channel ratio R.
        groups: NDC groups G (``None``: G = C).
        iterations: NDC multiplicative updates.
        input_bias: bias of the input projection, eq. (6)'s first PointwiseConv (the authors' code
            has none; the NDC's own source initialisation keeps its bias).
    """

    def __init__(
        self,
        channels: int,
        conv_op: type[_ConvNd],
        *,
        kernel_size: int | Sequence[int] = 3,
        ratio: int = 4,
        groups: int | None = None,
        iterations: int = 1,
        input_bias: bool = True,
    ) -> None:
        super().__init__()
        self.project_in = conv_op(channels, channels, kernel_size=1, bias=input_bias)
        self.activation = nn.ReLU()
        self.ndc = NonnegativeDeconvolution(
            channels,
            spatial_dims=convert_conv_op_to_dim(conv_op),
            kernel_size=kernel_size,
            ratio=ratio,
            groups=groups,
            iterations=iterations,
        )
        self.project_out = conv_op(self.ndc.out_channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        sources = self.ndc(self.activation(self.project_in(x)))
        # The NDC's float32 output can exceed fp16's range (65504) where eq. (7) amplifies: the output
        # projection stays in the float32 island instead of letting autocast cast its input to fp16, and
        # its result returns to the autocast dtype bounded by that dtype's range.
        with autocast_disabled(sources):
            out = self.project_out(sources)
        return to_autocast_dtype(out)
