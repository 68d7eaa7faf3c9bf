"""Fixed orthonormal Haar DWT / IDWT on the strided axes: papers/segmentation-cnns-are-denoising-models.md.

The SUM (section 3.2, Fig. 1) down-samples with the DWT (filter banks W_L, W_H) and up-samples with
the IDWT (W~_L, W~_H). Here the Haar transform acts only on the axes whose stride is 2, as a
tensor product of the 1-D orthonormal Haar pair on blocks (2i, 2i+1) (no padding, even sizes):

    low  a[i] = (x[2i] + x[2i+1]) / sqrt(2),    detail  d[i] = (x[2i] - x[2i+1]) / sqrt(2),

which is PyWavelets' 'haar' with mode 'periodization', signs included. With k strided axes,
(B, C, *spatial) becomes (B, 2^k C, *spatial / stride), band-major: channel ``band * C + c``.
Band ``band`` reads, in binary with k digits, one digit per strided axis in axis order (most
significant first), 0 = low, 1 = detail; it is PyWavelets' ``dwtn`` key with 0 -> 'a', 1 -> 'd'.
In 2-D: bands (0, 1, 2, 3) = ('aa', 'ad', 'da', 'dd') = ``pywt.dwt2``'s (cA, cV, cH, cD).
Band 0, the first C channels, is the low band, so ``y[:, :C]`` goes down the U and ``y[:, C:]``
(the 2^k - 1 high bands) bypasses to the IDWT of the same level.

The transform is orthonormal, so the IDWT is both its inverse and its adjoint. The authors' code
uses the same filters up to the sign of one 2-D detail band (irrelevant where the high bands bypass)
on blocks (2i - 1, 2i) (it pads one sample at the start); that phase matters only for where an
impulse is placed. There are no parameters and no buffers: the 1-D step is a sum and a difference
of the even and odd samples. With every stride 1 the transform is the identity (one band).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

_SQRT_HALF = 2.0**-0.5


def _check_strides(strides: Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    strides = tuple(int(s) for s in strides)
    if len(strides) != spatial_dims:
        raise ValueError(f"Haar wavelet got {len(strides)} strides for {spatial_dims} spatial axes; give one per axis")
    for axis, stride in enumerate(strides):
        if stride not in (1, 2):
            raise ValueError(f"Haar wavelet supports strides 1 or 2, got {stride} on spatial axis {axis}; use 1 or 2")
    return strides


def _haar_step(x: Tensor, dim: int) -> Tensor:
    """The 1-D orthonormal Haar butterfly on a size-2 axis: (even, odd) -> (low, detail).

    Its matrix [[1, 1], [1, -1]] / sqrt(2) is symmetric and orthogonal, so it is its own inverse.
    """
    even, odd = x.unbind(dim)
    return torch.stack(((even + odd) * _SQRT_HALF, (even - odd) * _SQRT_HALF), dim)


def _haar_steps(x: Tensor, strides: tuple[int, ...]) -> Tensor:
    """The butterfly on every strided phase axis of (B, *phases, C, *spatial)."""
    for axis, stride in enumerate(strides):
        if stride == 2:
            x = _haar_step(x, 1 + axis)
    return x


def haar_dwt(x: Tensor, strides: Sequence[int]) -> Tensor:
    """(B, C, *spatial) -> (B, 2^k C, *spatial / strides), bands in the module docstring's order."""
    strides = _check_strides(strides, x.dim() - 2)
    batch, channels, *spatial = x.shape
    for axis, (size, stride) in enumerate(zip(spatial, strides)):
        if size % stride:
            raise ValueError(
                f"Haar DWT needs an even size on spatial axis {axis} (stride 2), got {size}; "
                "crop or pad the input to a multiple of the total stride"
            )
    coarse = [size // stride for size, stride in zip(spatial, strides)]
    split = x.reshape(batch, channels, *(n for pair in zip(coarse, strides) for n in pair))
    dims = len(strides)
    phases_first = split.permute(0, *(3 + 2 * i for i in range(dims)), 1, *(2 + 2 * i for i in range(dims)))
    return _haar_steps(phases_first, strides).reshape(batch, -1, *coarse)


def haar_idwt(y: Tensor, strides: Sequence[int]) -> Tensor:
    """(B, 2^k C, *coarse) -> (B, C, *coarse * strides): the inverse and the adjoint of :func:`haar_dwt`."""
    strides = _check_strides(strides, y.dim() - 2)
    batch, banded, *coarse = y.shape
    bands = math.prod(strides)
    if banded % bands:
        raise ValueError(
            f"Haar IDWT with strides {strides} needs a multiple of {bands} channels (bands x C), got {banded}"
        )
    phases_first = _haar_steps(y.reshape(batch, *strides, banded // bands, *coarse), strides)
    dims = len(strides)
    split = phases_first.permute(0, dims + 1, *(i for axis in range(dims) for i in (dims + 2 + axis, 1 + axis)))
    return split.reshape(batch, banded // bands, *(n * s for n, s in zip(coarse, strides)))


class _HaarTransform(nn.Module):
    """Holds a stage's stride from nnU-Net plans, e.g. (2, 2), (1, 2, 2), (2, 1, 1)."""

    def __init__(self, strides: Sequence[int]) -> None:
        super().__init__()
        self.strides = _check_strides(strides, len(strides))

    def extra_repr(self) -> str:
        return f"strides={self.strides}"


class HaarDWT(_HaarTransform):
    """:func:`haar_dwt` with fixed strides."""

    def forward(self, x: Tensor) -> Tensor:
        return haar_dwt(x, self.strides)


class HaarIDWT(_HaarTransform):
    """:func:`haar_idwt` with fixed strides: the inverse of :class:`HaarDWT` with the same strides."""

    def forward(self, y: Tensor) -> Tensor:
        return haar_idwt(y, self.strides)
