"""Impulse response of an exactly linear operator: papers/segmentation-cnns-are-denoising-models.md,
Appendix B (eq. 22-24), with the protocol the authors used for their published numbers
(the SUM facts sheet, sum-facts.md next to DESIGN.md: "Impulse response protocol").

The operator is any callable that maps a ``(1, 1, *spatial)`` tensor to one of the same shape and
is exactly linear (e.g. a SUM's encoder-decoder at alpha = 0, eval mode). A network that decimates
is not shift-invariant, so where the unit delta sits within the stride grid matters. The protocol
puts it at index ``g = P - 1 (mod P)`` on every axis, ``P`` the product of the strides on that axis:
the last sample of a ``P``-aligned block, where the authors' Haar (blocks ``(2i - 1, 2i)``) puts it
when read on the standard grid ``(2i, 2i + 1)`` (the paper itself only says "a Dirac delta"; this
follows the facts sheet). The input is zero beyond a margin of ``radius + P`` samples around the
delta (``radius`` the one-sided receptive field, :func:`receptive_field`), so neither the response
nor any intermediate map reaches the border, whatever the padding mode of the convolutions; the
response is then cropped back to ``size`` samples ``[g - N // 2, g - N // 2 + N)``, the delta at
``N // 2``. The paper's 2-D numbers use ``N = 128`` inside a 384 x 384 input; with zero borders
the smaller input here gives the same crop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from nnunet_deconver.analysis.response_metrics import ArrayLike, magnitude_spectrum

PerAxis = int | Sequence[int]
LinearOperator = Callable[[Tensor], Tensor]


def _per_stage(**named: Sequence[PerAxis]) -> list[np.ndarray]:
    """Per-stage values (an int or one int per axis) as integer arrays (stages, axes), broadcast together."""
    lengths = {name: len(values) for name, values in named.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"One entry per stage is needed in each of {lengths}; the counts differ.")
    rows = [np.atleast_1d(np.asarray(v, dtype=np.int64)) for values in named.values() for v in values]
    try:
        return np.split(np.stack(np.broadcast_arrays(*rows)), len(named))
    except ValueError:
        raise ValueError(f"Every stage needs the same number of axes in {named}.") from None


def total_strides(strides: Sequence[PerAxis]) -> tuple[int, ...]:
    """``P`` per axis: the product of the per-stage ``strides`` (nnU-Net's plans layout)."""
    (per_stage,) = _per_stage(strides=strides)
    return tuple(int(p) for p in per_stage.prod(axis=0))


def receptive_field(
    kernel_sizes: Sequence[PerAxis],
    strides: Sequence[PerAxis],
    *,
    convs_per_stage: int = 2,
    convs_per_decoder_stage: int = 2,
) -> tuple[int, ...]:
    """One-sided receptive-field radius per axis of a U-shaped encoder-decoder (the SUM's topology).

    Topology (nnU-Net's plans layout, stage ``s = 0 .. S - 1``): the encoder resamples by
    ``strides[s]`` with non-overlapping blocks (kernel = stride: the Haar DWT, pooling), then applies
    ``convs_per_stage`` convolutions of kernel ``kernel_sizes[s]`` (the last stage is the bottleneck);
    the decoder stage ``s < S - 1`` resamples back up by ``strides[s + 1]`` with the same blocks (IDWT,
    transposed convolution of kernel = stride) and applies ``convs_per_decoder_stage`` convolutions of
    kernel ``kernel_sizes[s]``. Skip connections only add shorter paths. With ``J_s`` the product of
    ``strides[0 .. s]`` and ``P = J_{S-1}``:

        radius = sum_s (convs_per_stage + convs_per_decoder_stage [s < S - 1]) * (k_s - 1) / 2 * J_s + P - 1

    Each convolution widens the support by ``(k_s - 1) / 2`` samples of its stage on both sides; a
    block resampling down and back up at stage ``s`` widens it by up to ``(strides[s] - 1) J_{s-1}``
    input samples on each side, depending on where the support's end falls in its block; these add up
    to ``P - 1``. The radius is the largest extent on either side over every phase of the delta in the
    stride grid (one phase reaches it on the left, another on the right); the tests check it by brute
    force. For the paper's SUM (depth 4, 3 x 3) it is 107; the facts sheet's "about 122" is an
    over-estimate (it is what a third convolution per decoder stage would give). The paper's
    128-sample padding exceeds both.

    Raises:
        ValueError: an even kernel size, a first stage that is strided, or per-stage lists that do not match.
    """
    kernels, stride = _per_stage(kernel_sizes=kernel_sizes, strides=strides)
    if np.any(kernels % 2 == 0):
        raise ValueError(f"Kernel sizes must be odd (centred 'same' convolutions); got {kernel_sizes}.")
    if np.any(stride[0] != 1):
        raise ValueError(f"The first stage must keep the input resolution (stride 1); got strides {strides}.")
    jumps = stride.cumprod(axis=0)
    convs = np.full(len(kernels), convs_per_stage + convs_per_decoder_stage)
    convs[-1] = convs_per_stage
    radius = (convs[:, None] * ((kernels - 1) // 2) * jumps).sum(axis=0) + jumps[-1] - 1
    return tuple(int(r) for r in radius)


def _broadcast(values: PerAxis, ndim: int, name: str) -> np.ndarray:
    array = np.atleast_1d(np.asarray(values, dtype=np.int64))
    if array.shape not in {(1,), (ndim,)}:
        raise ValueError(f"{name} needs one value or one per axis ({ndim}); got {values}.")
    return np.broadcast_to(array, (ndim,))


@torch.no_grad()
def impulse_response(
    operator: LinearOperator,
    *,
    size: Sequence[int],
    strides: Sequence[PerAxis],
    radius: PerAxis,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Tensor:
    """The impulse response ``r`` (eq. 24) of the exactly linear ``operator``, cropped to ``size``.

    Args:
        operator: maps a ``(1, 1, *spatial)`` tensor to one of the same shape; linear.
        size: the crop ``N`` per axis (the paper: 128 x 128); the delta ends up at ``N // 2``.
        strides: the operator's per-stage strides (nnU-Net's plans layout); their product per axis
            is the period ``P`` of the delta's phase ``P - 1``.
        radius: the operator's one-sided receptive field (an int or one per axis), e.g.
            :func:`receptive_field`; the input extends ``radius + P`` samples beyond the delta.
        dtype, device: of the input delta (the operator's parameters must accept them).

    Returns:
        ``r`` of shape ``size``, on the operator's output device and dtype.

    Raises:
        ValueError: the operator returns another shape, or its response reaches beyond ``radius``
            (the radius is too small for this operator: pass its receptive field).
    """
    ndim = len(size)
    crop = _broadcast(size, ndim, "size")
    period = _broadcast(total_strides(strides), ndim, "strides")
    reach = _broadcast(radius, ndim, "radius")
    before = np.maximum(crop // 2, reach + period)
    delta = before + (period - 1 - before) % period
    after = np.maximum(crop - crop // 2 - 1, reach + period)
    length = -(-(delta + after + 1) // period) * period
    x = torch.zeros((1, 1, *length.tolist()), dtype=dtype, device=device)
    x[(0, 0, *delta.tolist())] = 1
    y = operator(x)
    if y.shape != x.shape:
        raise ValueError(f"The operator must return the shape of its input {tuple(x.shape)}; got {tuple(y.shape)}.")
    outside = y[0, 0].abs()
    outside[_window(delta - reach, 2 * reach + 1)] = 0
    if outside.max() > 100 * torch.finfo(y.dtype).eps * y.abs().max():  # rounding of the operator's dtype
        raise ValueError(f"The impulse response reaches beyond radius {radius}: pass the operator's receptive "
                         f"field (nnunet_deconver.analysis.impulse.receptive_field).")
    return y[(0, 0, *_window(delta - crop // 2, crop))]


def _window(start: np.ndarray, size: np.ndarray) -> tuple[slice, ...]:
    """The index of the box ``[start, start + size)`` per axis."""
    return tuple(slice(a, a + n) for a, n in zip(start.tolist(), size.tolist()))


def log_magnitude_spectrum(response: ArrayLike, *, floor_db: float = -120.0) -> np.ndarray:
    """``20 log10 f`` in decibels, ``f`` the :func:`magnitude_spectrum` (a unit delta gives 0 dB).

    For display (the paper plots ``f`` itself; the metrics use ``f``): bins below ``floor_db`` are
    clipped to it so that zeros of the spectrum stay finite.
    """
    return 20.0 * np.log10(np.maximum(magnitude_spectrum(response), 10.0 ** (floor_db / 20.0)))
