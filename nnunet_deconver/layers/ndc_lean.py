"""Memory-lean NDC update, eq. (7) of papers/deconver.md section III.F, with a hand-written backward.

Notation (per group, section III.B): F(S) = S * V is the forward model of eq. (1), A(X) = X * V^- its
adjoint (A^T = F, F^T = A). One update of eq. (7) is

    N = A(X) + eps,   Y = F(S),   D = A(Y) + eps,   S1 = S * N / D,

with the product evaluated by :func:`~nnunet_deconver.layers.ndc_operators.source_times_ratio`.

Backward. For g = dL/dS1 the chain rule gives dL/dN = g * S / D and dL/dD = -g * S1 / D, so

    dL/dS = g * N / D + A(F(dL/dD)),     dL/dX = F(dL/dN),
    dL/dV = K(dL/dN, X) + K(dL/dD, Y) + K(S, F(dL/dD)),

where K(H, Z)[c, e, o] = sum_p H[e, p + o] Z[c, p] (c and e in the same group) is the filter
gradient of both F and A: d<G, F_V(S)>/dV = K(S, G) and d<H, A_V(Z)>/dV = K(H, Z). All three K
terms are therefore evaluated as weight gradients of the adjoint convolution. With
``iterations`` > 1 the step is applied per iteration in reverse order; N is shared by all
iterations, so their dL/dX and K(., X) terms add up.

Overflow. The pointwise parts are those of the reference, ``source_times_ratio`` for S * N / D
and ``source_times_ratio_grads`` for g * N / D, dL/dN and dL/dD (ordered and saturated so that
neither inf nor NaN arises where the gradients are finite; see there).

Memory. Only X, S0 and V are saved for backward (the NDC layer, :mod:`ndc_layer_op`, saves only X
and recomputes S0 too), instead of about 13U (U = numel(X)) for the autograd graph of
:func:`ndc_update`. Everything else (N, Y, D, S1) is recomputed in backward; for
``iterations`` > 1 the intermediate sources are recomputed too and held, (iterations - 1) * RU,
only while this layer's backward runs. Double backward is not supported (``once_differentiable``).

Speed (CPU). Everything runs in channels-last layout, where oneDNN's grouped kernels are an
order of magnitude faster than in NC(D)HW, and slab by slab along the first spatial axis (with
halos of half the kernel), so the elementwise part of eq. (7) and of its backward works on
cache-sized temporaries and the only source-sized allocations are the results. For G = C the
forward model is a depthwise convolution over the R*C source channels followed by the sum over
the R sources of each channel (a matrix-vector product); the adjoint convolution merges groups
into block-diagonal groups of up to 4 input channels, which suits oneDNN's blocked kernels better
than groups of 1 input channel. The inputs of :func:`ndc_update_lean` may have any layout; its
output is channels-last for 2-D and 3-D inputs.

Other devices (CUDA): the 'device' strategy (:func:`ndc_strategy`) runs whole-batch slabs of about
``_DEVICE_SLAB_BYTES``, the grouped convolutions as they are, and for a source that is one slab a
backward without scatters (:func:`_update_step_backward_whole`): few, large kernels.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from nnunet_deconver.layers import ndc_cpu_kernel
from nnunet_deconver.layers.compute import (
    autocast_disabled,
    compute_layout,
    compute_memory_format,
    ndc_convolution_precision,
)
from nnunet_deconver.layers.ndc_operators import (
    CONVOLUTIONS,
    adjoint_filters,
    ndc_update,
    source_times_ratio,
    source_times_ratio_grads,
)

_SLAB_BYTES = 16 * 2**20
"""CPU target size of one slab of a source-sized tensor (R*C channels), one batch element at a time. It
keeps slab temporaries mostly in the last-level cache and below glibc's largest mmap threshold (32 MiB),
so their memory is recycled instead of being page-faulted anew for every slab."""

_DEVICE_SLAB_BYTES = 256 * 2**20
"""Target size of one slab on other devices (CUDA), whole batch per slab: large kernels, and temporaries of a
few source-sized slabs (at 128^3 plans 256 MiB gave the lowest estimated fp16 peak; 512 MiB about 2 GiB more
for about 30 % fewer kernel launches, docs/benchmarks.md)."""

_MERGED_GROUP_INPUTS = 4
"""Merge groups of the adjoint convolution until a merged group has up to this many inputs."""


def _empty_incompute_layout(like: Tensor, channels: int) -> Tensor:
    """Uninitialised (B, channels, *spatial) tensor shaped after ``like``, in the compute layout."""
    shape = (like.shape[0], channels, *like.shape[2:])
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=compute_memory_format(like))


def initial_source_channels_last(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """S0 = ReLU(PointwiseConv(x)) of section III.F, in channels-last layout, without copying ``x``.

    The 1x1 convolution is computed as ``bias + x^T W^T`` per batch element: autograd saves only
    a view of ``x`` (not a channels-last copy), and the result already has the layout
    :func:`ndc_update_lean` works in. The ReLU runs in place (the product saves its inputs, not
    its output) and saves S0 itself, the tensor :func:`ndc_update_lean` saves as well.

    Args:
        x: (B, C, *spatial) input, any layout.
        weight: (E, C, 1, ...) weight of the pointwise convolution.
        bias: (E,) bias.

    Returns:
        (B, E, *spatial), channels-last for 2-D and 3-D inputs. For 1-D inputs (no channels-last
        layout) and on the meta device (profiling: FLOP counters then see a convolution) it is
        ReLU(conv(x)) as in the plain layer.
    """
    if x.dim() == 3 or x.is_meta:
        return F.relu(CONVOLUTIONS[x.dim() - 2](x, weight, bias))
    batch, channels, *spatial = x.shape
    columns = x.flatten(2).transpose(1, 2)  # (B, P, C) view of x
    weight_t = weight.flatten(1).t().expand(batch, channels, weight.shape[0])
    out = torch.baddbmm(bias, columns, weight_t).relu_()  # (B, P, E), contiguous
    return out.unflatten(1, spatial).movedim(-1, 1)


Strategy = Literal["cpu", "device"]
_forced_strategy: list[Strategy] = []

_SlabIndex = tuple[int, int, int, int]  # first and one-past-last batch element, first and one-past-last plane
_Planes = tuple[Tensor, int]  # a slab with its halo, and the depth padding its convolutions add (see _halo)


@contextmanager
def ndc_strategy(strategy: Strategy) -> Iterator[None]:
    """Run the lean NDC with the slab strategy of ``strategy`` whatever the device.

    ``cpu``: slabs of about ``_SLAB_BYTES``, one batch element each (the CPU default); ``device``: slabs of
    about ``_DEVICE_SLAB_BYTES`` over the whole batch (every other device). Profiling uses it to count the
    kernel launches of the CUDA path on CPU tensors.
    """
    if strategy not in ("cpu", "device"):
        raise ValueError(f"NDC strategy must be 'cpu' or 'device', got {strategy!r}.")
    _forced_strategy.append(strategy)
    try:
        yield
    finally:
        _forced_strategy.pop()


def _strategy(tensor: Tensor) -> Strategy:
    if _forced_strategy:
        return _forced_strategy[-1]
    return "cpu" if tensor.device.type == "cpu" else "device"


def _slabs(tensor: Tensor) -> Iterator[_SlabIndex]:
    """Split (B, E, depth, ...) into slabs of whole planes of about the strategy's slab size each."""
    return slabs_of(tuple(tensor.shape), tensor.element_size(), _strategy(tensor))


def slabs_of(shape: tuple[int, ...], element_size: int, strategy: Strategy) -> Iterator[_SlabIndex]:
    """The slabs :func:`_slabs` makes of a tensor of ``shape`` and ``element_size`` under ``strategy``."""
    batch, channels, depth, *rest = shape
    per_batch_element = strategy == "cpu"
    batch_step = 1 if per_batch_element else batch
    plane_bytes = batch_step * channels * math.prod(rest) * element_size
    budget = _SLAB_BYTES if per_batch_element else _DEVICE_SLAB_BYTES
    planes = max(1, min(depth, budget // max(1, plane_bytes)))
    for b in range(0, batch, batch_step):
        for start in range(0, depth, planes):
            yield b, b + batch_step, start, min(depth, start + planes)


def _slab(tensor: Tensor, index: _SlabIndex) -> Tensor:
    b0, b1, start, stop = index
    return tensor[b0:b1, :, start:stop]


def _halo(tensor: Tensor, index: _SlabIndex, halo: int) -> tuple[Tensor, int]:
    """Planes ``start - halo`` .. ``stop + halo`` of the slab's batch elements, zero beyond the borders.

    Returns (planes, depth padding): a slab spanning the whole depth is returned as a view with
    depth padding ``halo`` (the convolution pads it, nothing is copied); any other slab is read with
    its halo, zero-padded where it meets a border, and depth padding 0.
    """
    b0, b1, start, stop = index
    depth = tensor.shape[2]
    if start == 0 and stop == depth:
        return tensor[b0:b1], halo
    low, high = max(0, start - halo), min(depth, stop + halo)
    slab = tensor[b0:b1, :, low:high]
    if low > start - halo or high < stop + halo:
        slab = F.pad(slab, [0, 0] * (tensor.dim() - 3) + [low - (start - halo), stop + halo - high])
    return slab, 0


def _merge_factor(groups: int, inputs_per_group: int) -> int:
    """Largest divisor of ``groups`` with ``factor * inputs_per_group <= _MERGED_GROUP_INPUTS``."""
    limit = max(1, _MERGED_GROUP_INPUTS // inputs_per_group)
    return max(f for f in range(1, min(groups, limit) + 1) if groups % f == 0)


def _merge_groups(weight: Tensor, groups: int, factor: int) -> Tensor:
    """Grouped-conv weight with ``factor`` consecutive groups merged into block-diagonal groups.

    The merged convolution (``groups // factor`` groups) computes the same result: the added
    weights are zeros.
    """
    if factor == 1:
        return weight
    out_channels, inputs, *kernel = weight.shape
    blocks = weight.reshape(groups // factor, factor, out_channels // groups, inputs, *kernel)
    merged = weight.new_zeros(groups // factor, factor, out_channels // groups, factor, inputs, *kernel)
    merged.diagonal(dim1=1, dim2=3).copy_(blocks.movedim(1, -1))
    return merged.reshape(out_channels, factor * inputs, *kernel)


def _split_groups(merged: Tensor, groups: int, factor: int) -> Tensor:
    """Inverse of :func:`_merge_groups`: the diagonal blocks (used to map weight gradients back)."""
    if factor == 1:
        return merged
    out_channels, merged_inputs, *kernel = merged.shape
    blocks = merged.reshape(groups // factor, factor, out_channels // groups, factor, merged_inputs // factor, *kernel)
    return blocks.diagonal(dim1=1, dim2=3).movedim(-1, 1).reshape(out_channels, merged_inputs // factor, *kernel)


class _Operators:
    """F (forward model), A (adjoint) and the filter gradient K of one call, on slabs.

    Args:
        filters: (C, E / G, *kernel) filter tensor V in the compute dtype.
        groups: number of groups G.
        eps: the constant of eq. (7), added to A's output as a convolution bias.
        track_filter_grad: whether :meth:`accumulate_filter_grad` should accumulate dL/dV.
        strategy: 'cpu' uses the depthwise form of F and merged groups of A (faster in oneDNN);
            'device' the grouped convolutions as they are (fewest kernels, cuDNN's own grouping).
    """

    def __init__(self, filters: Tensor, groups: int, eps: float, track_filter_grad: bool, strategy: Strategy) -> None:
        channels, group_sources, *kernel = filters.shape
        self.channels = channels
        self.groups = groups
        self.halo = kernel[0] // 2
        self.padding_rest = [size // 2 for size in kernel[1:]]
        self.convolution = CONVOLUTIONS[filters.dim() - 2]
        # F: for G = C in channels-last layout, a depthwise convolution over the E source channels
        # followed by a sum over the R sources of each channel; otherwise the grouped convolution.
        on_cpu = strategy == "cpu"
        layout = compute_layout if on_cpu else (lambda weight: weight)  # cuDNN takes the filters as they are
        self.depthwise = on_cpu and groups == channels and filters.dim() > 3
        self.sources_per_channel = group_sources
        forward_filters = filters.reshape(channels * group_sources, 1, *kernel) if self.depthwise else filters
        self.forward_filters = layout(forward_filters)
        self.forward_groups = channels * group_sources if self.depthwise else groups
        # A: cross-correlation with V^- (see ndc_adjoint), with merged groups on the CPU.
        self.merge = _merge_factor(groups, channels // groups) if on_cpu else 1
        self.adjoint_groups = groups // self.merge
        self.adjoint_filters = layout(_merge_groups(adjoint_filters(filters, groups), groups, self.merge))
        self.eps_bias = filters.new_full((self.adjoint_filters.shape[0],), eps)
        self.track_filter_grad = track_filter_grad
        self.filter_grads: dict[str, Tensor] = {}  # summed weight gradients of A ('adjoint') and of F ('forward')

    def _conv(self, inp: Tensor, weight: Tensor, groups: int, depth_padding: int, bias: Tensor | None = None) -> Tensor:
        return self.convolution(inp, weight, bias, padding=[depth_padding, *self.padding_rest], groups=groups)

    def forward_model(self, halo_slab: Tensor, depth_padding: int = 0) -> Tensor:
        """F on a slab read with its halo (``depth_padding`` extra planes of zeros on both sides)."""
        out = self._conv(halo_slab, self.forward_filters, self.forward_groups, depth_padding)
        if not self.depthwise:
            return out
        per_source = out.movedim(1, -1)  # channels-last: a contiguous (..., E) view
        summed = per_source.reshape(-1, self.sources_per_channel).mv(out.new_ones(self.sources_per_channel))
        return summed.view(*per_source.shape[:-1], -1).movedim(-1, 1)

    def adjoint(self, planes: _Planes, add_eps: bool) -> Tensor:
        """A on a slab read with its halo (:func:`_halo`), plus eps if ``add_eps`` (a fresh, writable tensor)."""
        slab, depth_padding = planes
        bias = self.eps_bias if add_eps else None
        return self._conv(slab, self.adjoint_filters, self.adjoint_groups, depth_padding, bias)

    def full_forward_model(self, source: Tensor) -> Tensor:
        """Y = F(S) for the whole source, slab by slab (one convolution if one slab holds it all)."""
        indices = list(_slabs(source))
        if len(indices) == 1:
            return compute_layout(self.forward_model(*_halo(source, indices[0], self.halo)))
        out = _empty_incompute_layout(source, self.channels)
        for index in indices:
            _slab(out, index).copy_(self.forward_model(*_halo(source, index, self.halo)))
        return out

    def scatter_forward_model(self, target: Tensor, index: _SlabIndex, slab: Tensor) -> None:
        """target += F(slab), with ``slab`` the values of slab ``index`` and zeros elsewhere.

        F of one slab reaches ``halo`` planes beyond it on each side, all added to ``target``.
        """
        b0, b1, start, stop = index
        out = self.forward_model(slab, depth_padding=2 * self.halo)  # planes start - halo .. stop + halo
        low, high = max(0, start - self.halo), min(target.shape[2], stop + self.halo)
        offset = start - self.halo
        target[b0:b1, :, low:high] += out[:, :, low - offset : high - offset]

    def _backward(self, grad: Tensor, planes: _Planes, operator: str, need_input: bool) -> Tensor | None:
        """The input gradient of ``operator`` (A or F) at ``grad`` if ``need_input``; adds its filter gradient."""
        weight, groups = (
            (self.adjoint_filters, self.adjoint_groups) if operator == "adjoint"
            else (self.forward_filters, self.forward_groups)
        )
        if not (need_input or self.track_filter_grad):
            return None
        slab, depth_padding = planes
        dims = grad.dim() - 2
        input_grad, weight_grad, _ = torch.ops.aten.convolution_backward(
            grad, slab, weight, None, [1] * dims, [depth_padding, *self.padding_rest], [1] * dims,
            False, [0] * dims, groups, [need_input, self.track_filter_grad, False],
        )
        if self.track_filter_grad:
            total = self.filter_grads.get(operator)
            self.filter_grads[operator] = weight_grad if total is None else total.add_(weight_grad)
        return input_grad

    def accumulate_filter_grad(self, planes: _Planes, grad: Tensor) -> None:
        """Add K(grad, planes): the gradient of <grad, A(planes)> w.r.t. the filters (planes from :func:`_halo`)."""
        self._backward(grad, planes, "adjoint", need_input=False)

    def adjoint_backward(self, grad: Tensor, planes: _Planes, need_input: bool) -> Tensor | None:
        """A^T(grad) = F(grad) for the planes' whole extent (if ``need_input``); adds K(grad, planes)."""
        return self._backward(grad, planes, "adjoint", need_input)

    def forward_model_backward(self, grad: Tensor, planes: _Planes) -> Tensor:
        """F^T(grad) = A(grad); adds K(planes, grad), the gradient of <grad, F(planes)> (not for the depthwise F)."""
        assert not self.depthwise
        input_grad = self._backward(grad, planes, "forward", need_input=True)
        assert input_grad is not None
        return input_grad

    def filter_grad(self) -> Tensor:
        """dL/dV from the accumulated gradients w.r.t. the (merged) adjoint filters and the filters of F."""
        # V -> V^- is a permutation and an involution, so it maps the gradient back as well.
        parts = [adjoint_filters(_split_groups(self.filter_grads["adjoint"], self.groups, self.merge), self.groups)]
        if "forward" in self.filter_grads:
            parts.append(self.filter_grads["forward"])
        return sum(parts[1:], parts[0])


def _update_step(ops: _Operators, observation: Tensor, source: Tensor) -> Tensor:
    """One update of eq. (7): S * (X * V^- + eps) / ((S * V) * V^- + eps)."""
    forward = ops.full_forward_model(source)
    out = torch.empty_like(source)
    for index in _slabs(source):
        numerator = ops.adjoint(_halo(observation, index, ops.halo), add_eps=True)
        denominator = ops.adjoint(_halo(forward, index, ops.halo), add_eps=True)
        source_times_ratio(_slab(source, index), numerator, denominator, out=_slab(out, index))
    return out


def _update_step_backward(
    ops: _Operators, grad: Tensor, observation: Tensor, source: Tensor, grad_observation: Tensor | None
) -> Tensor:
    """dL/dS of one update of eq. (7) given g = dL/dS1 (formulas in the module docstring).

    Adds dL/dX to ``grad_observation`` (unless None) and the filter gradient to ``ops``.
    """
    forward = ops.full_forward_model(source)
    grad_source = torch.empty_like(source)
    forward_of_grad_denominator = torch.zeros_like(forward)  # F(dL/dD)
    for index in _slabs(source):
        observation_halo = _halo(observation, index, ops.halo)
        forward_halo = _halo(forward, index, ops.halo)
        # dL/dS (the direct term g * N / D) into grad_source; dL/dN and dL/dD as new slabs.
        _, grad_numerator, grad_denominator = source_times_ratio_grads(
            _slab(grad, index),
            _slab(source, index),
            ops.adjoint(observation_halo, add_eps=True),
            ops.adjoint(forward_halo, add_eps=True),
            out=_slab(grad_source, index),
        )
        if grad_observation is not None:
            ops.scatter_forward_model(grad_observation, index, grad_numerator)  # dL/dX = F(dL/dN)
        ops.accumulate_filter_grad(observation_halo, grad_numerator)  # + K(dL/dN, X)
        ops.scatter_forward_model(forward_of_grad_denominator, index, grad_denominator)
        ops.accumulate_filter_grad(forward_halo, grad_denominator)  # + K(dL/dD, Y)
    for index in _slabs(source):
        planes = _halo(forward_of_grad_denominator, index, ops.halo)
        _slab(grad_source, index).add_(ops.adjoint(planes, add_eps=False))  # + A(F(dL/dD))
        ops.accumulate_filter_grad(planes, _slab(source, index))  # + K(S, F(dL/dD))
    return grad_source


def _promoted_dtype(*tensors: Tensor) -> torch.dtype:
    """The compute dtype of eq. (7): the inputs' promoted dtype, at least float32."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def _lean_forward(
    observation: Tensor, source: Tensor, filters: Tensor, groups: int, iterations: int, eps: float, dtype: torch.dtype
) -> Tensor:
    """S^(iterations) of eq. (7) in ``dtype`` (autocast must be off): the fused CPU kernel or the slab path."""
    if observation.is_meta:  # shapes only (profiling): let FLOP counters see the ops of eq. (7)
        return ndc_update(observation.to(dtype), source.to(dtype), filters.to(dtype), groups, iterations, eps)
    if _strategy(observation) == "cpu" and ndc_cpu_kernel.use_kernel(observation, filters, groups, dtype):
        return ndc_cpu_kernel.update(observation, source, filters.to(dtype), iterations, eps)
    ops = _Operators(filters.to(dtype), groups, eps, track_filter_grad=False, strategy=_strategy(observation))
    obs = compute_layout(observation.to(dtype))
    out = compute_layout(source.to(dtype))
    for _ in range(iterations):
        out = _update_step(ops, obs, out)
    return out


def _lean_backward(
    grad_output: Tensor,
    observation: Tensor,
    source: Tensor,
    filters: Tensor,
    groups: int,
    iterations: int,
    eps: float,
    dtype: torch.dtype,
    need_observation: bool,
    need_filters: bool,
) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """(dL/dX, dL/dS0, dL/dV) in ``dtype`` of :func:`_lean_forward` for dL/dS^(iterations) (None where not needed)."""
    if _strategy(observation) == "cpu" and ndc_cpu_kernel.use_kernel(observation, filters, groups, dtype):
        return ndc_cpu_kernel.update_backward(
            grad_output, observation, source, filters.to(dtype), iterations, eps, need_observation, need_filters
        )
    ops = _Operators(filters.to(dtype), groups, eps, track_filter_grad=need_filters, strategy=_strategy(observation))
    obs = compute_layout(observation.to(dtype))
    sources = [compute_layout(source.to(dtype))]
    for _ in range(iterations - 1):  # intermediate sources, alive during this backward only
        sources.append(_update_step(ops, obs, sources[-1]))
    grad_obs = torch.zeros_like(obs) if need_observation else None  # summed over the iterations
    grad = compute_layout(grad_output.to(dtype))
    step_backward = _update_step_backward_whole if _is_one_device_slab(sources[0]) else _update_step_backward
    while sources:
        grad = step_backward(ops, grad, obs, sources.pop(), grad_obs)
    return grad_obs, grad, ops.filter_grad() if need_filters else None


def _update_step_backward_whole(
    ops: _Operators, grad: Tensor, observation: Tensor, source: Tensor, grad_observation: Tensor | None
) -> Tensor:
    """:func:`_update_step_backward` for a source that is one slab (device strategy), without scatters.

    Every transposed operator comes with its filter gradient from one ``convolution_backward``:
    dL/dX = A^T(dL/dN) with K(dL/dN, X), F(dL/dD) = A^T(dL/dD) with K(dL/dD, Y), and
    A(F(dL/dD)) = F^T(F(dL/dD)) with K(S, F(dL/dD)).
    """
    observation_planes, source_planes = (observation, ops.halo), (source, ops.halo)
    forward = ops.forward_model(source, ops.halo)
    forward_planes = (forward, ops.halo)
    grad_source, grad_numerator, grad_denominator = source_times_ratio_grads(
        grad, source, ops.adjoint(observation_planes, add_eps=True), ops.adjoint(forward_planes, add_eps=True)
    )
    grad_from_numerator = ops.adjoint_backward(grad_numerator, observation_planes, grad_observation is not None)
    if grad_observation is not None:
        grad_observation.add_(grad_from_numerator)
    forward_of_grad_denominator = ops.adjoint_backward(grad_denominator, forward_planes, need_input=True)
    return grad_source.add_(ops.forward_model_backward(forward_of_grad_denominator, source_planes))


def _is_one_device_slab(tensor: Tensor) -> bool:
    """Whether ``tensor`` is processed as one slab by the device strategy."""
    return _strategy(tensor) == "device" and len(list(_slabs(tensor))) == 1


class LeanNDCUpdate(torch.autograd.Function):
    """Eq. (7) applied ``iterations`` times, saving only X, S0 and V for backward.

    Same inputs and result as :func:`ndc_update`; the backward is derived in the module docstring.
    Computes in float32 or float64 (the promoted dtype of the inputs, at least float32) with
    autocast disabled. On the meta device (shape, FLOP and memory profiling) the forward evaluates
    :func:`ndc_update` instead, so FLOP counters see the operations of eq. (7) rather than this
    implementation's (which adds zero blocks to merged groups); what is saved is the same. On CPU
    with G = C both directions run the fused kernel of :mod:`ndc_cpu_kernel` where it is available.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        observation: Tensor,
        source: Tensor,
        filters: Tensor,
        groups: int,
        iterations: int,
        eps: float,
    ) -> Tensor:
        dtype = _promoted_dtype(observation, source, filters)
        with autocast_disabled(observation):
            out = _lean_forward(observation, source, filters, groups, iterations, eps, dtype)
        ctx.save_for_backward(observation, source, filters)
        ctx.groups, ctx.iterations, ctx.eps, ctx.dtype = groups, iterations, eps, dtype  # type: ignore[attr-defined]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        observation, source, filters = ctx.saved_tensors
        need_observation, need_source, need_filters = ctx.needs_input_grad[:3]
        with autocast_disabled(observation):
            grad_obs, grad, grad_filters = _lean_backward(
                grad_output, observation, source, filters, ctx.groups, ctx.iterations, ctx.eps, ctx.dtype,
                need_observation, need_filters,
            )
        return (
            grad_obs.to(observation.dtype) if grad_obs is not None else None,
            grad.to(source.dtype) if need_source else None,
            grad_filters.to(filters.dtype) if grad_filters is not None else None,
            None,
            None,
            None,
        )


def ndc_update_lean(
    observation: Tensor, source: Tensor, filters: Tensor, groups: int, iterations: int, eps: float
) -> Tensor:
    """:func:`ndc_update` (eq. 7) with the memory-lean hand-written backward of :class:`LeanNDCUpdate`.

    Saves only ``observation``, ``source`` and ``filters`` for backward and recomputes the rest.
    The result equals :func:`ndc_update` up to floating-point round-off; it is channels-last for
    2-D and 3-D inputs. Not twice differentiable.
    """
    return LeanNDCUpdate.apply(observation, source, filters, groups, iterations, eps)


def _initial_source_backward(
    grad_source: Tensor, observation: Tensor, source: Tensor, weight: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """(dL/dX, dL/dW, dL/db) of S0 = ReLU(W X + b) (:func:`initial_source_channels_last`) for dL/dS0.

    Overwrites ``grad_source`` with dL/d(W X + b). The products mirror the forward's: per batch
    element, (P, E) gradient rows against the (P, C) view of X.
    """
    batch, channels, *spatial = observation.shape
    grad_pre = grad_source.masked_fill_(source <= 0, 0).movedim(1, -1).reshape(batch, -1, grad_source.shape[1])
    columns = observation.flatten(2)  # (B, C, P) view
    grad_weight = torch.bmm(columns, grad_pre).sum(0).t().reshape(weight.shape)
    grad_bias = grad_pre.sum((0, 1))
    grad_columns = torch.bmm(grad_pre, weight.flatten(1).expand(batch, *weight.shape[:2]))  # (B, P, C)
    return grad_columns.unflatten(1, spatial).movedim(-1, 1), grad_weight, grad_bias
