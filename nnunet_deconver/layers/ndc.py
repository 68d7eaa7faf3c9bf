"""Learnable nonnegative deconvolution (NDC) layer: papers/deconver.md, section III.F (eq. 7).

The operators of eq. (1), (3) and (7) are in :mod:`nnunet_deconver.layers.ndc_operators`; the
memory-lean update with its hand-written backward, the layer's default, is in
:mod:`nnunet_deconver.layers.ndc_lean`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nnunet_deconver.layers.compute import autocast_disabled
from nnunet_deconver.layers.ndc_layer_op import ndc_layer
from nnunet_deconver.layers.ndc_operators import CONVOLUTIONS, ndc_update

_POINTWISE_CONVOLUTIONS: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _as_odd_kernel(kernel_size: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    sizes = (kernel_size,) * spatial_dims if isinstance(kernel_size, int) else tuple(kernel_size)
    if len(sizes) != spatial_dims or any(size < 1 or size % 2 == 0 for size in sizes):
        raise ValueError(
            f"NDC kernel_size must be one odd positive size or {spatial_dims} of them (one per axis); "
            f"got {kernel_size!r}. Use e.g. 3, 5 or (1, 3, 3)."
        )
    return sizes


class NonnegativeDeconvolution(nn.Module):
    """Learnable NDC layer of section III.F, eq. (7).

    The input X (B, C, *spatial) must be nonnegative. The initial source is
    S^(0) = ReLU(PointwiseConv(X)) with R*C channels, the filter is V = ReLU(W) with W
    Kaiming-uniform initialised and shared by V and its adjoint V^-, and the output is the updated
    source S^(iterations) with R*C channels. Everything runs in float32 (float64 for a float64
    module), also inside autocast or for half-precision parameters, because the division of eq. (7)
    is not representable in half precision (eps = 1e-8 underflows). The products are ordered so that
    none overflows before the result does
    (:func:`~nnunet_deconver.layers.ndc_operators.source_times_ratio`): in float32 the output is
    finite for inputs from 0 to about 1e36 (beyond, X * V^- and S * V themselves overflow), and with
    ``lean`` the gradients are finite for inputs up to about 1e30.

    Args:
        channels: input channels C.
        spatial_dims: 1, 2 or 3.
        kernel_size: odd filter size, one for all axes or one per axis (anisotropic).
        ratio: source channel ratio R = E / C.
        groups: number of groups G; ``None`` means G = C (the paper's default).
        iterations: number of multiplicative updates (the paper uses 1).
        eps: the positive constant of eq. (7).
        lean: compute S0 and eq. (7) with :func:`~nnunet_deconver.layers.ndc_layer_op.ndc_layer`
            (hand-written backward that saves only X, in its own dtype, and the weights, recomputing
            S0; channels-last output for 2-D/3-D; one opaque operator under torch.compile) instead
            of the plain autograd graph of :func:`~nnunet_deconver.layers.ndc_operators.ndc_update`.
            Both give the same values and gradients.
    """

    def __init__(
        self,
        channels: int,
        spatial_dims: int,
        kernel_size: int | Sequence[int] = 3,
        ratio: int = 4,
        groups: int | None = None,
        iterations: int = 1,
        eps: float = 1e-8,
        lean: bool = True,
    ) -> None:
        super().__init__()
        if spatial_dims not in CONVOLUTIONS:
            raise ValueError(f"NDC supports 1, 2 or 3 spatial dimensions, got {spatial_dims}.")
        groups = channels if groups is None else groups
        if channels < 1 or groups < 1 or channels % groups != 0:
            raise ValueError(f"NDC groups ({groups}) must divide the number of channels ({channels}).")
        if ratio < 1 or iterations < 1 or eps <= 0:
            raise ValueError(
                f"NDC needs ratio >= 1, iterations >= 1 and eps > 0; got ratio={ratio}, "
                f"iterations={iterations}, eps={eps}."
            )
        self.channels = channels
        self.spatial_dims = spatial_dims
        self.kernel_size = _as_odd_kernel(kernel_size, spatial_dims)
        self.ratio = ratio
        self.groups = groups
        self.iterations = iterations
        self.eps = eps
        self.lean = lean
        source_channels = ratio * channels
        self.source_init = _POINTWISE_CONVOLUTIONS[spatial_dims](channels, source_channels, kernel_size=1)
        self.weight = nn.Parameter(torch.empty(channels, source_channels // groups, *self.kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    @property
    def out_channels(self) -> int:
        return self.ratio * self.channels

    def filters(self) -> Tensor:
        """The nonnegative filter V = ReLU(W)."""
        return F.relu(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        dtype = torch.promote_types(self.weight.dtype, torch.float32)  # float32, or float64 after .double()
        with autocast_disabled(x):
            weight, bias = self.source_init.weight.to(dtype), self.source_init.bias.to(dtype)
            filters = self.filters().to(dtype)
            if self.lean:  # x as it is (fp16 under autocast): the layer saves it and casts it itself
                return ndc_layer(x, weight, bias, filters, self.groups, self.iterations, self.eps)
            observation = x.to(dtype)
            source = F.relu(CONVOLUTIONS[self.spatial_dims](observation, weight, bias))
            return ndc_update(observation, source, filters, self.groups, self.iterations, self.eps)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, ratio={self.ratio}, groups={self.groups}, "
            f"kernel_size={self.kernel_size}, iterations={self.iterations}, eps={self.eps}, "
            f"lean={self.lean}"
        )
