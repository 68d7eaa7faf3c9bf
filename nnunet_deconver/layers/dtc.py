"""Deformable transposed convolution (DTC): papers/dtc.md section 3, Fig. 3, eq. (1)-(2), 2-D and 3-D.

An upsampler by an integer stride per axis (anisotropic strides such as (1, 2, 2) included) made of
two summed paths:

(a) the ordinary upsampling: a transposed convolution with kernel = stride (nnU-Net's), or linear
    interpolation of a pointwise convolution (both change the channels);
(b) the deformable path: features X = PointwiseConv(x); a coordinate branch -- a transposed
    convolution with the same stride -- gives, per output voxel, one offset and one weight per axis;
    the sampling positions are

        P_new = P_grid + lambda * tanh(offset) * sigmoid(weight)        (eq. 1)

    and the output is grid_sample(X, P_new) (eq. 2), trilinear / bilinear.

Coordinates. P_grid is where plain linear interpolation samples: with ``align_corners=False`` the
centre of output voxel j along an axis of n_in input and n_out = s * n_in output voxels lies at
input coordinate (j + 0.5) / s - 0.5, i.e. at 2 (j + 0.5) / n_out - 1 in grid_sample's normalised
coordinates; with ``padding_mode="border"``, grid_sample at P_grid is exactly
``F.interpolate(X, scale_factor=s, mode="(bi|tri)linear", align_corners=False)``. lambda is given in
input voxels per axis and converted per axis: one input voxel is 2 / n_in normalised units. ``None``
lets offsets reach the whole image (2 normalised units, the paper's "unlimited" receptive field).
Coordinates and sampling run in float32 under autocast.

Initialisation. The coordinate branch starts at zero (offsets 0, weights 1/2): the deformable path
starts as interpolation of the pointwise features. Its parameters are plain ``nn.Parameter``s of
:class:`CoordinateBranch`, not an ``nn.ConvTranspose*d``, so nnU-Net's re-initialisation of every
convolution after building a network (``InitWeights_He``) leaves them as intended.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from torch import Tensor, nn

from nnunet_deconver.layers.compute import autocast_disabled, compute_dtype

BaseUpsampling = Literal["transposed", "linear"]
_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_TRANSPOSED = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_TRANSPOSED_FUNCTION = {2: F.conv_transpose2d, 3: F.conv_transpose3d}
_INTERPOLATION = {2: "bilinear", 3: "trilinear"}


class CoordinateBranch(nn.Module):
    """Transposed convolution (kernel = stride) from the input channels to one offset and one weight
    per spatial axis, zero-initialised (section 3.1)."""

    def __init__(self, in_channels: int, stride: Sequence[int]) -> None:
        super().__init__()
        self.spatial_dims = len(stride)
        self.stride = tuple(stride)
        self.weight = nn.Parameter(torch.zeros(in_channels, 2 * self.spatial_dims, *self.stride))
        self.bias = nn.Parameter(torch.zeros(2 * self.spatial_dims))

    def forward(self, x: Tensor) -> Tensor:
        return _TRANSPOSED_FUNCTION[self.spatial_dims](x, self.weight, self.bias, stride=self.stride)


def base_grid(output_size: Sequence[int], like: Tensor) -> Tensor:
    """(*output_size, d) normalised positions that linear interpolation samples, in grid_sample's
    (x, y[, z]) = (last axis first) order; dtype and device of ``like``."""
    axes = [(2 * torch.arange(n, device=like.device, dtype=like.dtype) + 1) / n - 1 for n in output_size]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    return grid.flip(-1)


def _checked_receptive_field(
    receptive_field: float | Sequence[float] | None, spatial_dims: int
) -> float | tuple[float, ...] | None:
    """lambda as given (scalar, one per axis, or ``None``) after refusing negative or misshaped values."""
    if receptive_field is None:
        return None
    values = [receptive_field] if isinstance(receptive_field, (int, float)) else list(receptive_field)
    if len(values) not in (1, spatial_dims) or any(
        isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 for v in values
    ):
        raise ValueError(
            f"receptive_field={receptive_field!r} is invalid: lambda must be a number of input voxels >= 0, one "
            f"or {spatial_dims} of them (one per axis), or null for unlimited; e.g. 1.0 or [1.0, 2.0, 2.0]."
        )
    return float(values[0]) if isinstance(receptive_field, (int, float)) else tuple(float(v) for v in values)


class DeformableTransposedConv(nn.Module):
    """DTC upsampler: ordinary upsampling + deformable sampling of pointwise features (eq. 1-2).

    Args:
        in_channels, out_channels: channels before / after upsampling.
        stride: upsampling factor per axis (2 or 3 axes).
        receptive_field: lambda in input voxels (scalar or per axis); ``None`` = unlimited.
        base_upsampling: "transposed" (nnU-Net's) or "linear" for path (a); or pass ``upsampling``.
        upsampling: an existing module for path (a) mapping in_channels -> out_channels at the
            stride (e.g. the transposed convolution of a built nnU-Net decoder, kept with its weights).
        use_weights: multiply offsets by the learned weights (Table 4).
        weight_activation: "sigmoid" or None (Table 4 "weights without sigmoid").
        offset_activation: "tanh" or None (Table 4 "offsets only").
        checkpointed: in training steps keep only the input for backward and recompute the rest
            (activation checkpointing; values and gradients unchanged). Settable on a built module.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int | Sequence[int],
        receptive_field: float | Sequence[float] | None = 1.0,
        base_upsampling: BaseUpsampling = "transposed",
        upsampling: nn.Module | None = None,
        use_weights: bool = True,
        weight_activation: Literal["sigmoid"] | None = "sigmoid",
        offset_activation: Literal["tanh"] | None = "tanh",
        checkpointed: bool = False,
    ) -> None:
        super().__init__()
        stride = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
        spatial_dims = len(stride)
        if spatial_dims not in _CONV:
            raise ValueError(f"DTC works in 2-D and 3-D; got a stride with {spatial_dims} axes: {stride}.")
        if base_upsampling not in ("transposed", "linear"):
            raise ValueError(f"base_upsampling must be 'transposed' or 'linear', got {base_upsampling!r}.")
        if weight_activation not in ("sigmoid", None) or offset_activation not in ("tanh", None):
            raise ValueError(
                f"weight_activation must be 'sigmoid' or None and offset_activation 'tanh' or None, got "
                f"{weight_activation!r} and {offset_activation!r}."
            )
        self.stride = stride
        self.spatial_dims = spatial_dims
        self.receptive_field = _checked_receptive_field(receptive_field, spatial_dims)
        self.base_upsampling = base_upsampling
        self.use_weights = use_weights
        self.weight_activation = weight_activation
        self.offset_activation = offset_activation
        if upsampling is not None:
            self.upsampling = upsampling
        elif base_upsampling == "transposed":
            self.upsampling = _TRANSPOSED[spatial_dims](in_channels, out_channels, kernel_size=stride, stride=stride)
        else:
            self.upsampling = _CONV[spatial_dims](in_channels, out_channels, kernel_size=1)
        self.features = _CONV[spatial_dims](in_channels, out_channels, kernel_size=1)
        self.coordinates = CoordinateBranch(in_channels, stride)
        self.checkpointed = checkpointed

    def _upsample_base(self, x: Tensor) -> Tensor:
        if self.base_upsampling == "transposed":
            return self.upsampling(x)
        return F.interpolate(self.upsampling(x), scale_factor=self.stride, mode=_INTERPOLATION[self.spatial_dims],
                             align_corners=False)

    def _lambda_normalised(self, input_size: Sequence[int]) -> list[float]:
        """lambda per axis (axis order) in normalised units: Python numbers, so no tensor is built on the host."""
        if self.receptive_field is None:
            return [2.0] * self.spatial_dims
        voxels = self.receptive_field
        voxels = [voxels] * self.spatial_dims if isinstance(voxels, (int, float)) else list(voxels)
        return [2.0 * v / n for v, n in zip(voxels, input_size)]

    def displacement(self, x: Tensor) -> Tensor:
        """lambda * offset * weight of eq. (1): (B, *output_size, d) in normalised units, grid order.

        Computed in float32 (float64 for float64 input), also under autocast.
        """
        with autocast_disabled(x):
            raw = self.coordinates(x.to(compute_dtype(x)))
        offsets, weights = raw[:, : self.spatial_dims], raw[:, self.spatial_dims:]
        if self.offset_activation == "tanh":
            offsets = torch.tanh(offsets)
        if self.use_weights:
            offsets = offsets * (torch.sigmoid(weights) if self.weight_activation == "sigmoid" else weights)
        # channel a of the branch moves along spatial axis a; grid_sample wants the last axis first
        scale = self._lambda_normalised(x.shape[2:])
        return torch.stack([offsets[:, axis] * scale[axis] for axis in reversed(range(self.spatial_dims))], dim=-1)

    def sampling_grid(self, x: Tensor) -> Tensor:
        """P_new of eq. (1): (B, *output_size, d), normalised, grid order."""
        output_size = [n * s for n, s in zip(x.shape[2:], self.stride)]
        displacement = self.displacement(x)
        return base_grid(output_size, displacement) + displacement

    def forward(self, x: Tensor) -> Tensor:
        if self.checkpointed and torch.is_grad_enabled():
            return checkpoint(self._upsample, x, use_reentrant=False)
        return self._upsample(x)

    def _upsample(self, x: Tensor) -> Tensor:
        base = self._upsample_base(x)
        features = self.features(x)
        grid = self.sampling_grid(x)
        with autocast_disabled(x):
            sampled = F.grid_sample(features.to(grid.dtype), grid, mode="bilinear", padding_mode="border",
                                    align_corners=False)
        return base + sampled.to(base.dtype)

    def extra_repr(self) -> str:
        field = "unlimited" if self.receptive_field is None else f"{self.receptive_field} voxel(s)"
        return f"stride={self.stride}, receptive_field={field}, base={self.base_upsampling}"
