"""The lean NDC layer (S0 = ReLU(PointwiseConv(X)) and eq. (7), papers/deconver.md III.F) for eager and compiled use.

Eagerly it is :class:`~nnunet_deconver.layers.ndc_lean.LeanNDCLayer`. Under ``torch.compile`` it is
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

from nnunet_deconver.layers.compute import compute_memory_format
from nnunet_deconver.layers.ndc_lean import LeanNDCLayer, lean_layer_backward, lean_layer_forward


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
