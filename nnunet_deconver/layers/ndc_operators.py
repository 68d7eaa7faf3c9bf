"""Reference operators of nonnegative deconvolution: papers/deconver.md, eq. (1), (3) and (7).

The observation model is the grouped cross-correlation X ~ S * V of eq. (1) with zero 'same'
padding; its adjoint X * V^- is the cross-correlation with V transposed per group and spatially
flipped. :func:`ndc_update` applies the multiplicative update of eq. (7) with autograd, its
pointwise product S * N / D ordered so that no intermediate overflows; the memory-lean variant with
a hand-written backward is :mod:`nnunet_deconver.layers.ndc_lean`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx

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
    normal float (below, it loses precision towards 0).

    Args:
        source: S.
        numerator: N = X * V^- + eps.
        denominator: D = (S * V) * V^- + eps.
        out: optional tensor to write the result into (no autograd).
    """
    # out= forms rather than div_ / mul_: FLOP counters see one division and one multiplication, as
    # for S * N / D (min and max are not counted).
    smaller = torch.minimum(source, numerator, out=out)
    torch.div(smaller, denominator, out=smaller)
    return torch.mul(smaller, torch.maximum(source, numerator), out=smaller)


def _saturate_(tensor: Tensor) -> Tensor:
    limit = torch.finfo(tensor.dtype).max
    return tensor.clamp_(-limit, limit)


def source_times_ratio_grads(
    grad: Tensor, source: Tensor, numerator: Tensor, denominator: Tensor, out: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """(dL/dS, dL/dN, dL/dD) of S1 = S * N / D for g = dL/dS1: g * (N / D), g * (S / D), -(dL/dN / D) * N.

    ``out``, if given, receives dL/dS (no autograd); otherwise all three are new tensors and the
    computation is differentiable (double backward).

    Each is saturated at +-(float max) instead of overflowing to +-inf. They exceed the float range
    only where the true derivatives do: g * N / D where S and so D are near zero while N is large,
    and dL/dN, dL/dD ~ g * S / eps for a source whose filters are all zero (then N = D = eps). In
    eq. (7) those values only meet the zero S of the previous update or the zero filters, which
    gives 0 (inf * 0 would be NaN and spread to every gradient), and the ReLUs of
    S0 = ReLU(PointwiseConv(X)) and V = ReLU(W) discard what is left of them (dL/dS0 where S0 = 0,
    dL/dV of all-zero filters). S / D <= 1 / sum(V^2) is bounded by the filters
    (D >= S sum(V^2) + eps, summed over the taps inside the volume) and exactly 0 where S = 0, so
    dL/dN and dL/dD are formed from it and not from N / D. Otherwise the values equal autograd's
    up to round-off.
    """
    grad_source = _saturate_(torch.div(numerator, denominator, out=out).mul_(grad))
    grad_numerator = _saturate_(torch.div(source, denominator).mul_(grad))
    grad_denominator = _saturate_(torch.div(grad_numerator, denominator).mul_(numerator)).neg_()
    return grad_source, grad_numerator, grad_denominator


class _SourceTimesRatio(torch.autograd.Function):
    """:func:`source_times_ratio` with the backward of :func:`source_times_ratio_grads` (saves S, N, D)."""

    @staticmethod
    def forward(ctx: FunctionCtx, source: Tensor, numerator: Tensor, denominator: Tensor) -> Tensor:
        ctx.save_for_backward(source, numerator, denominator)
        return source_times_ratio(source, numerator, denominator)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return source_times_ratio_grads(grad, *ctx.saved_tensors)


def ndc_update(
    observation: Tensor, source: Tensor, filters: Tensor, groups: int, iterations: int, eps: float
) -> Tensor:
    """Apply ``iterations`` multiplicative updates of eq. (7) (eq. 3 when ``eps`` is 0).

    S <- S * (X * V^- + eps) / ((S * V) * V^- + eps). Autograd differentiates the convolutions; the
    product is :func:`source_times_ratio` with the derivatives of :func:`source_times_ratio_grads`
    (written with differentiable operations, so double backward works). For nonnegative X, S and V
    and eps = 0 the reconstruction error ||X - S * V||^2 never increases (Theorem 1).
    """
    numerator = ndc_adjoint(observation, filters, groups) + eps
    for _ in range(iterations):
        denominator = ndc_adjoint(ndc_forward_model(source, filters, groups), filters, groups) + eps
        source = _SourceTimesRatio.apply(source, numerator, denominator)
    return source
