"""The lean NDC layer (S0 = ReLU(PointwiseConv(X)) and eq. (7), papers/deconver.md III.F) for eager and compiled use.

Eagerly it is :class:`LeanNDCLayer`. Under ``torch.compile`` it is
one opaque operator, ``nnunet_deconver::ndc_layer``, with its backward another
(``nnunet_deconver::ndc_layer_backward``), registered with ``torch.library.custom_op``: dynamo and
inductor see one node per direction, whatever the slab count, and the operator runs the same eager
code (the fused CPU kernel on CPU, large whole-batch slabs on CUDA). Tracing the slab loops instead
unrolled them and turned every slab write into a full-tensor ``slice_scatter`` (the graph grew with
the input size and each slab rewrote the whole tensor).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from nnunet_deconver.layers import ndc_cpu_kernel
from nnunet_deconver.layers.compute import autocast_disabled, compute_memory_format, ndc_convolution_precision
from nnunet_deconver.layers.ndc_layer_slabs import slab_layer_backward, slab_layer_forward
from nnunet_deconver.layers.ndc_lean import (
    _initial_source_backward,
    _lean_backward,
    _lean_forward,
    _promoted_dtype,
    _strategy,
    initial_source_channels_last,
    slabs_of,
)


def lean_layer_forward(
    x: Tensor, source_weight: Tensor, source_bias: Tensor, filters: Tensor, groups: int, iterations: int, eps: float
) -> Tensor:
    """S0 = ReLU(PointwiseConv(x)) and eq. (7), computed in float32 (float64 for float64 weights), autocast off.

    One update (the paper's) runs slab by slab with S0 recomputed per slab (:mod:`ndc_layer_slabs`) except
    on the fused CPU kernel, which takes S0 whole; more updates and the meta device take S0 whole.
    """
    dtype = _promoted_dtype(source_weight, source_bias, filters)
    with autocast_disabled(x), ndc_convolution_precision(x.device):
        if _slab_by_slab(x, source_weight.shape[0], filters, groups, iterations, dtype):
            return slab_layer_forward(x, source_weight, source_bias, filters, groups, eps, dtype)
        observation = x.to(dtype)
        source = initial_source_channels_last(observation, source_weight.to(dtype), source_bias.to(dtype))
        return _lean_forward(observation, source, filters, groups, iterations, eps, dtype)


def lean_layer_backward(
    grad_output: Tensor,
    x: Tensor,
    source_weight: Tensor,
    source_bias: Tensor,
    filters: Tensor,
    groups: int,
    iterations: int,
    eps: float,
    need_x: bool = True,
    need_filters: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """(dL/dx, dL/dW, dL/db, dL/dV) of :func:`lean_layer_forward`, each in its input's dtype; S0 is recomputed.

    dL/dx is computed in full (both its paths) only if ``need_x`` (always with one update); dL/dV is None
    unless ``need_filters``.
    """
    dtype = _promoted_dtype(source_weight, source_bias, filters)
    with autocast_disabled(x), ndc_convolution_precision(x.device):
        if _slab_by_slab(x, source_weight.shape[0], filters, groups, iterations, dtype):
            grad_x, grad_weight, grad_bias, grad_filters = slab_layer_backward(
                grad_output, x, source_weight, source_bias, filters, groups, eps, dtype, need_filters)
            return _in_input_dtypes(grad_x, grad_weight, grad_bias, grad_filters, x, source_weight, source_bias, filters)
        observation, weight = x.to(dtype), source_weight.to(dtype)
        source = initial_source_channels_last(observation, weight, source_bias.to(dtype))
        grad_observation, grad_source, grad_filters = _lean_backward(
            grad_output, observation, source, filters, groups, iterations, eps, dtype, need_x, need_filters
        )
        grad_x, grad_weight, grad_bias = _initial_source_backward(grad_source, observation, source, weight)
        if grad_observation is not None:
            grad_x = grad_x.add_(grad_observation)
    return _in_input_dtypes(grad_x, grad_weight, grad_bias, grad_filters, x, source_weight, source_bias, filters)


def _in_input_dtypes(
    grad_x: Tensor, grad_weight: Tensor, grad_bias: Tensor, grad_filters: Tensor | None,
    x: Tensor, source_weight: Tensor, source_bias: Tensor, filters: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    return (
        grad_x.to(x.dtype),
        grad_weight.to(source_weight.dtype),
        grad_bias.to(source_bias.dtype),
        grad_filters.to(filters.dtype) if grad_filters is not None else None,
    )


def _slab_by_slab(
    x: Tensor, source_channels: int, filters: Tensor, groups: int, iterations: int, dtype: torch.dtype
) -> bool:
    """Whether the layer runs :mod:`ndc_layer_slabs`: one update, not on 'meta', not on the fused CPU kernel,
    and a source that takes more than one slab (for one slab S0 whole is no larger than a slab, and the
    unfused path launches fewer kernels)."""
    strategy = _strategy(x)
    if iterations != 1 or x.is_meta or (strategy == "cpu" and ndc_cpu_kernel.use_kernel(x, filters, groups, dtype)):
        return False
    source_shape = (x.shape[0], source_channels, *x.shape[2:])
    return len(list(slabs_of(source_shape, torch.finfo(dtype).bits // 8, strategy))) > 1


class LeanNDCLayer(torch.autograd.Function):
    """The NDC layer of section III.F: S0 = ReLU(PointwiseConv(X)), then eq. (7); saves only X and the weights.

    Like :class:`LeanNDCUpdate`, but S0 (R*C channels) is recomputed in backward from X instead of
    being saved, and X is saved in the dtype it arrives in (fp16 under autocast), not as a float32
    copy: the layer keeps nothing for backward beyond its input and parameters. The pointwise
    convolution costs 2 * C * R*C FLOPs per voxel again in backward, a fraction of eq. (7)'s.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: Tensor,
        source_weight: Tensor,
        source_bias: Tensor,
        filters: Tensor,
        groups: int,
        iterations: int,
        eps: float,
    ) -> Tensor:
        ctx.save_for_backward(x, source_weight, source_bias, filters)
        ctx.settings = (groups, iterations, eps)  # type: ignore[attr-defined]
        return lean_layer_forward(x, source_weight, source_bias, filters, groups, iterations, eps)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        need_x, need_weight, need_bias, need_filters = ctx.needs_input_grad[:4]
        grad_x, grad_weight, grad_bias, grad_filters = lean_layer_backward(
            grad_output, *ctx.saved_tensors, *ctx.settings, need_x=need_x, need_filters=need_filters
        )
        return (
            grad_x if need_x else None,
            grad_weight if need_weight else None,
            grad_bias if need_bias else None,
            grad_filters,
            None,
            None,
            None,
        )


@torch.library.custom_op("nnunet_deconver::ndc_layer", mutates_args=())
def _ndc_layer_op(
    x: Tensor, source_weight: Tensor, source_bias: Tensor, filters: Tensor, groups: int, iterations: int, eps: float
) -> Tensor:
    return lean_layer_forward(x, source_weight, source_bias, filters, groups, iterations, eps)


@_ndc_layer_op.register_fake
def _(x: Tensor, source_weight: Tensor, source_bias: Tensor, filters: Tensor, groups: int, iterations: int, eps: float):
    dtype = torch.promote_types(torch.promote_types(source_weight.dtype, filters.dtype), torch.float32)
    shape = (x.shape[0], source_weight.shape[0], *x.shape[2:])
    return x.new_empty(shape, dtype=dtype).contiguous(memory_format=compute_memory_format(x))


@torch.library.custom_op("nnunet_deconver::ndc_layer_backward", mutates_args=())
def _ndc_layer_backward_op(
    grad: Tensor, x: Tensor, source_weight: Tensor, source_bias: Tensor, filters: Tensor,
    groups: int, iterations: int, eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    grad_x, grad_weight, grad_bias, grad_filters = lean_layer_backward(
        grad, x, source_weight, source_bias, filters, groups, iterations, eps
    )
    assert grad_filters is not None
    layout = compute_memory_format(x)
    return grad_x.contiguous(memory_format=layout), grad_weight.contiguous(), grad_bias, grad_filters.contiguous()


@_ndc_layer_backward_op.register_fake
def _(grad: Tensor, x: Tensor, source_weight: Tensor, source_bias: Tensor, filters: Tensor,
      groups: int, iterations: int, eps: float):
    layout = compute_memory_format(x)
    return (
        torch.empty_like(x, memory_format=layout),
        torch.empty_like(source_weight, memory_format=torch.contiguous_format),
        torch.empty_like(source_bias),
        torch.empty_like(filters, memory_format=torch.contiguous_format),
    )


def _setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
    x, source_weight, source_bias, filters, groups, iterations, eps = inputs
    ctx.save_for_backward(x, source_weight, source_bias, filters)
    ctx.settings = (groups, iterations, eps)


def _backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    grads = _ndc_layer_backward_op(grad, *ctx.saved_tensors, *ctx.settings)
    return (*grads, None, None, None)


_ndc_layer_op.register_autograd(_backward, setup_context=_setup_context)


def ndc_layer(
    x: Tensor, source_weight: Tensor, source_bias: Tensor, filters: Tensor, groups: int, iterations: int, eps: float
) -> Tensor:
    """ReLU(PointwiseConv(x)) followed by eq. (7), saving only x and the weights for backward.

    Args:
        x: (B, C, *spatial) nonnegative input, any dtype (kept as it is for backward).
        source_weight, source_bias: the pointwise convolution giving S0 (R*C output channels).
        filters: (C, R*C / groups, *kernel) nonnegative filters V.
        groups, iterations, eps: as in eq. (7).

    Returns:
        S^(iterations), (B, R*C, *spatial), float32 (float64 for float64 weights), channels-last for 2-D/3-D.
    """
    if torch.compiler.is_compiling():
        return _ndc_layer_op(x, source_weight, source_bias, filters, groups, iterations, eps)
    return LeanNDCLayer.apply(x, source_weight, source_bias, filters, groups, iterations, eps)
