"""Reference operators of nonnegative deconvolution: papers/deconver.md, eq. (1), (3) and (7).

The observation model is the grouped cross-correlation X ~ S * V of eq. (1) with zero 'same'
padding; its adjoint X * V^- is the cross-correlation with V transposed per group and spatially
flipped. :func:`ndc_update` applies the multiplicative update of eq. (7) with plain autograd; the
memory-lean variant with a hand-written backward is :mod:`nnunet_deconver.layers.ndc_lean`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

CONVOLUTIONS: dict[int, Callable[..., Tensor]] = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
"""The cross-correlation of eq. (1) per number of spatial dimensions."""


def _same_padding(filters: Tensor) -> list[int]:
    return [size // 2 for size in filters.shape[2:]]


def ndc_forward_model(source: Tensor, filters: Tensor, groups: int) -> Tensor:
    """Return S * V of eq. (1): grouped cross-correlation with zero 'same' padding.

    Args:
        source: (B, E, *spatial) source image S.
        filters: (C, E / groups, *kernel) filter tensor V, odd kernel sizes.
        groups: number of channel groups G (eq. 7 applies eq. 3 to each group independently).

    Returns:
        (B, C, *spatial) reconstruction of the observation.
    """
    return CONVOLUTIONS[filters.dim() - 2](source, filters, padding=_same_padding(filters), groups=groups)


def adjoint_filters(filters: Tensor, groups: int) -> Tensor:
    """Return the adjoint filter V^- of eq. (3), V^-[d, c, m, n] = V[c, d, 2M - m, 2N - n], per group.

    Args:
        filters: (C, E / groups, *kernel) filter tensor V.
        groups: number of channel groups G.

    Returns:
        (E, C / groups, *kernel): within each group, input and output channels swapped and the
        kernel flipped along every spatial axis.
    """
    channels, group_sources, *kernel = filters.shape
    per_group = filters.reshape(groups, channels // groups, group_sources, *kernel).transpose(1, 2)
    return per_group.reshape(groups * group_sources, channels // groups, *kernel).flip(
        list(range(2, filters.dim()))
    )


def ndc_adjoint(observation: Tensor, filters: Tensor, groups: int) -> Tensor:
    """Return X * V^-, the adjoint of :func:`ndc_forward_model` (V^- as defined under eq. 3).

    Satisfies <S * V, X> = <S, X * V^-> for every S and X of matching shapes. Computed as a
    cross-correlation with :func:`adjoint_filters`, which on CPU is several times faster than the
    equivalent grouped transposed convolution.
    """
    return ndc_forward_model(observation, adjoint_filters(filters, groups), groups)


def source_times_ratio(source: Tensor, numerator: Tensor, denominator: Tensor, out: Tensor | None = None) -> Tensor:
    """S * N / D of eq. (7), evaluated as max(S, N) * (min(S, N) / D) so that no intermediate overflows.

    For S >= 0, N >= 0 and D >= eps > 0, min(S, N) / D overflows only if min(S, N) > eps * (float
    max), which is >= 1 for eps >= 1 / (float max); the exact S * N / D >= min(S, N) * min(S, N) / D
    then exceeds the float max as well. So the result is finite wherever S * N / D is representable,
    whereas S * N overflows float32 from about 1e19 each, and N / D where S and so D are near zero
    while N is large (then 0 * inf = NaN). It is exact to round-off wherever min(S, N) / D is a
    normal float (below, it loses precision towards 0). As max * min = S * N, the value and the
    gradient equal those of S * N / D up to round-off.

    Args:
        source: S.
        numerator: N = X * V^- + eps.
        denominator: D = (S * V) * V^- + eps.
        out: optional tensor to write the result into (no autograd).
    """
    smaller = torch.minimum(source, numerator).div_(denominator)
    return torch.mul(torch.maximum(source, numerator), smaller, out=out)


def ndc_update(
    observation: Tensor, source: Tensor, filters: Tensor, groups: int, iterations: int, eps: float
) -> Tensor:
    """Apply ``iterations`` multiplicative updates of eq. (7) (eq. 3 when ``eps`` is 0).

    S <- S * (X * V^- + eps) / ((S * V) * V^- + eps), with the product ordered by
    :func:`source_times_ratio`. For nonnegative X, S and V and eps = 0 the reconstruction error
    ||X - S * V||^2 never increases (Theorem 1).
    """
    numerator = ndc_adjoint(observation, filters, groups) + eps
    for _ in range(iterations):
        denominator = ndc_adjoint(ndc_forward_model(source, filters, groups), filters, groups) + eps
        source = source_times_ratio(source, numerator, denominator)
    return source
