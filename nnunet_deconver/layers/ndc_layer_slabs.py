"""The lean NDC layer slab by slab, S0 included: no source-sized tensor but the output (papers/deconver.md eq. 7).

One update of eq. (7) on S0 = ReLU(W0 X + b0) (:func:`~nnunet_deconver.layers.ndc_lean.initial_source_channels_last`)
needs, for the planes [start, stop) of a slab along the first spatial axis, X on [start - h, stop + h] for
N = A(X) + eps and S0 on [start - 2h, stop + 2h] for D = A(Y) + eps, Y = F(S0) on [start - h, stop + h]
(h = half the kernel along that axis; S0 and Y are zero outside the volume, as the 'same' zero padding of
eq. 1 has them). So each slab recomputes S0 on its planes and halos from X, and only slab-sized
temporaries exist: X's float32 copy, S0, N, D and their gradients are never whole tensors (the unfused
path holds S0, its gradient and X's float32 copy in full: about 9U more at R = 4, U = numel(X)).

Backward (formulas of :mod:`~nnunet_deconver.layers.ndc_lean`): dL/dS0 = g N / D + A(F(dL/dD)). Everything
after S0 is linear in dL/dS0 for the fixed ReLU mask, so the two terms are taken through
S0 = ReLU(W0 X + b0) separately: the first in the same slab pass that forms dL/dN and dL/dD (scattering
F(dL/dN) into dL/dX and F(dL/dD) into the X-sized G), the second in a pass over G. Used for one update
(``iterations`` = 1, the paper's setting) on every path but the fused CPU kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nnunet_deconver.layers.compute import compute_memory_format
from nnunet_deconver.layers.ndc_lean import (
    _halo,
    _initial_source_backward,
    _Operators,
    _slab,
    _SlabIndex,
    _slabs,
    _strategy,
    initial_source_channels_last,
)
from nnunet_deconver.layers.ndc_operators import source_times_ratio, source_times_ratio_grads


def _planes_with_zeros(tensor: Tensor, index: _SlabIndex, halo: int, dtype: torch.dtype) -> tuple[Tensor, int, int]:
    """Planes start - halo .. stop + halo of the slab's batch elements in ``dtype``, zeros beyond the borders;
    also how many of the first and last planes are such zeros."""
    b0, b1, start, stop = index
    depth = tensor.shape[2]
    low, high = max(0, start - halo), min(depth, stop + halo)
    below, above = low - (start - halo), stop + halo - high
    planes = tensor[b0:b1, :, low:high].to(dtype)
    if below or above:
        planes = F.pad(planes, [0, 0] * (tensor.dim() - 3) + [below, above])
    return planes, below, above


def _zero_outside(tensor: Tensor, below: int, above: int) -> Tensor:
    """Zero the first ``below`` and the last ``above`` planes (those outside the volume) in place."""
    if below:
        tensor[:, :, :below] = 0
    if above:
        tensor[:, :, tensor.shape[2] - above :] = 0
    return tensor


class _SlabTerms:
    """X, S0, Y, N and D of one slab, recomputed from X (see the module docstring)."""

    def __init__(self, ops: _Operators, x: Tensor, weight: Tensor, bias: Tensor, index: _SlabIndex) -> None:
        h = ops.halo
        x_planes, below, above = _planes_with_zeros(x, index, 2 * h, weight.dtype)  # X on [start - 2h, stop + 2h]
        s0 = _zero_outside(initial_source_channels_last(x_planes, weight, bias), below, above)
        self.y = _zero_outside(ops.forward_model(s0), max(below - h, 0), max(above - h, 0))  # [start - h, stop + h]
        inner = slice(2 * h, s0.shape[2] - 2 * h)
        self.source = s0[:, :, inner]
        self.observation = x_planes[:, :, inner]
        self.observation_halo = x_planes[:, :, h : x_planes.shape[2] - h]
        self.numerator = ops.adjoint((self.observation_halo, 0), add_eps=True)
        self.denominator = ops.adjoint((self.y, 0), add_eps=True)


def slab_layer_forward(
    x: Tensor, weight: Tensor, bias: Tensor, filters: Tensor, groups: int, eps: float, dtype: torch.dtype
) -> Tensor:
    """S1 of eq. (7) on S0 = ReLU(W0 x + b0), one update, slab by slab; channels-last, in ``dtype``."""
    ops = _Operators(filters.to(dtype), groups, eps, track_filter_grad=False, strategy=_strategy(x))
    shape = (x.shape[0], weight.shape[0], *x.shape[2:])
    out = torch.empty(shape, dtype=dtype, device=x.device, memory_format=compute_memory_format(x))
    weight, bias = weight.to(dtype), bias.to(dtype)
    for index in _slabs(out):
        terms = _SlabTerms(ops, x, weight, bias, index)
        source_times_ratio(terms.source, terms.numerator, terms.denominator, out=_slab(out, index))
    return out


def slab_layer_backward(
    grad: Tensor, x: Tensor, weight: Tensor, bias: Tensor, filters: Tensor, groups: int, eps: float,
    dtype: torch.dtype, need_filters: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """(dL/dx, dL/dW0, dL/db0, dL/dV) in ``dtype`` of :func:`slab_layer_forward` for dL/dS1 = ``grad``."""
    ops = _Operators(filters.to(dtype), groups, eps, track_filter_grad=need_filters, strategy=_strategy(x))
    weight, bias = weight.to(dtype), bias.to(dtype)
    grad_x = torch.empty(x.shape, dtype=dtype, device=x.device, memory_format=compute_memory_format(x)).zero_()
    forward_of_grad_denominator = torch.zeros_like(grad_x)  # G = F(dL/dD), X-sized
    grad_weight, grad_bias = torch.zeros_like(weight), torch.zeros_like(bias)
    source_indices = list(_slabs(grad))

    def through_initial_source(grad_source: Tensor, terms_source: Tensor, observation: Tensor, index: _SlabIndex):
        slab_grad_x, slab_grad_weight, slab_grad_bias = _initial_source_backward(
            grad_source, observation, terms_source, weight)
        _slab(grad_x, index).add_(slab_grad_x)
        grad_weight.add_(slab_grad_weight)
        grad_bias.add_(slab_grad_bias)

    for index in source_indices:
        terms = _SlabTerms(ops, x, weight, bias, index)
        grad_source, grad_numerator, grad_denominator = source_times_ratio_grads(
            _slab(grad, index).to(dtype), terms.source, terms.numerator, terms.denominator
        )
        ops.scatter_forward_model(grad_x, index, grad_numerator)  # dL/dX += F(dL/dN)
        ops.accumulate_filter_grad((terms.observation_halo, 0), grad_numerator)  # + K(dL/dN, X)
        ops.scatter_forward_model(forward_of_grad_denominator, index, grad_denominator)
        ops.accumulate_filter_grad((terms.y, 0), grad_denominator)  # + K(dL/dD, Y)
        through_initial_source(grad_source, terms.source, terms.observation, index)  # g N / D through S0
    for index in source_indices:
        planes = _halo(forward_of_grad_denominator, index, ops.halo)
        observation = _slab(x, index).to(dtype)
        source = initial_source_channels_last(observation, weight, bias)
        ops.accumulate_filter_grad(planes, source)  # + K(S0, F(dL/dD))
        through_initial_source(ops.adjoint(planes, add_eps=False), source, observation, index)  # A(F(dL/dD))
    return grad_x, grad_weight, grad_bias, ops.filter_grad() if need_filters else None
