"""Training-step cost on fake tensors: saved activations (float32 and fp16 autocast), peak, launches."""

from __future__ import annotations

import torch
from torch import nn

from nnunet_deconver.analysis.training_step_cost import (
    _launches_kernel,
    kernel_launches,
    peak_step_bytes,
    saved_activation_bytes,
    training_step_cost,
)

SHAPE = (2, 3, 16, 12)


def conv_relu() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))


def test_saved_bytes_are_what_autograd_keeps_in_the_compute_dtype() -> None:
    """Conv -> ReLU -> Conv keeps the ReLU output once (ReLU and the second conv share it): 8 channels."""
    voxels = SHAPE[0] * SHAPE[2] * SHAPE[3]
    assert saved_activation_bytes(conv_relu, SHAPE) == 8 * voxels * 4
    # under fp16 autocast the convolutions compute in fp16: the ReLU output is half as large, and autocast's
    # fp16 copies of the input and of both weights are kept too (they are real memory on the GPU)
    fp16_weights = (8 * 3 * 3 * 3 + 4 * 8) * 2
    assert saved_activation_bytes(conv_relu, SHAPE, torch.float16) == (8 + 3) * voxels * 2 + fp16_weights


def test_kernel_launches_leave_out_views_allocations_and_queries() -> None:
    ops = torch.ops.aten
    assert _launches_kernel(ops.convolution.default) and _launches_kernel(ops.add_.Tensor)
    assert _launches_kernel(ops.copy_.default) and _launches_kernel(ops.zeros_like.default)
    for op in (ops.view.default, ops.transpose.int, ops.empty.memory_format, ops.empty_like.default,
               ops.promote_types.default, torch.ops.prim.device.default, ops.expand.default):
        assert not _launches_kernel(op), op


def test_kernel_launches_of_a_small_network() -> None:
    """Forward: conv, relu, conv, and the loss (sum); backward: two convolution backwards, the ReLU's, the
    loss's expansion and the gradient accumulation: a count that changes only if the network does."""
    launches = kernel_launches(conv_relu, SHAPE)
    assert 6 <= launches <= 20
    # one more ReLU: its forward and its backward (threshold_backward), nothing else
    assert kernel_launches(lambda: nn.Sequential(conv_relu(), nn.ReLU()), SHAPE) == launches + 2


def test_peak_covers_parameters_gradients_and_saved_activations() -> None:
    cost = training_step_cost(conv_relu, SHAPE)
    parameters = sum(p.numel() * 4 for p in conv_relu().parameters())
    assert cost.peak_bytes_fp32 >= cost.saved_bytes_fp32 + 2 * parameters
    assert cost.peak_bytes_autocast < cost.peak_bytes_fp32
    assert peak_step_bytes(conv_relu, (4, *SHAPE[1:])) > cost.peak_bytes_fp32  # twice the batch
