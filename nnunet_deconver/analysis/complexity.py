"""Parameters and FLOPs per voxel of a network, on any device including 'meta' (memory: :mod:`training_step_cost`).

FLOP conventions (both count 2 FLOPs per multiply-accumulate):

* ``full``: every convolution and matrix product, as :class:`torch.utils.flop_counter.FlopCounterMode`
  counts them, NDC-internal convolutions included.
* ``paper`` (the Deconver paper's tables): the convolutions *except* the NDC layer's internal
  ones (X*V^- and, per iteration, S*V and its adjoint), plus one FLOP per output element of
  elementwise operations (activations, residual additions, normalisation, and the NDC update's
  epsilon additions, product and quotient). This reproduces the paper's k3 = k5 FLOPs and its
  +2.06 K/voxel for a second NDC iteration (Table VI) exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from nnunet_deconver.layers.ndc import NonnegativeDeconvolution

ELEMENTWISE_OPS = frozenset({
    "add", "sub", "mul", "div", "relu", "gelu", "leaky_relu", "sigmoid", "tanh", "native_batch_norm",
})


@dataclass(frozen=True)
class Complexity:
    """What :func:`measure_complexity` reports for one network and input size."""

    parameters: int
    flops: int
    paper_flops: int
    voxels: int

    @property
    def flops_per_voxel(self) -> float:
        return self.flops / self.voxels

    @property
    def paper_flops_per_voxel(self) -> float:
        return self.paper_flops / self.voxels


class _ElementwiseCounter(TorchDispatchMode):
    """Counts output elements of elementwise aten ops."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ in ELEMENTWISE_OPS:
            first = out[0] if isinstance(out, (tuple, list)) else out
            self.elements += first.numel()
        return out


def _ndc_internal_flops(network: nn.Module) -> tuple[list[int], list[torch.utils.hooks.RemovableHandle]]:
    """Register hooks that add up the FLOPs of NDC-internal convolutions for each forward pass.

    Per NDC layer: (1 + 2 * iterations) grouped convolutions, each 2 * C * (R*C / G) * prod(kernel)
    FLOPs per voxel.
    """
    total = [0]

    def hook(module: NonnegativeDeconvolution, inputs: tuple[Tensor, ...], _output: Tensor) -> None:
        x = inputs[0]
        voxels = x.shape[0] * math.prod(x.shape[2:])
        per_conv = 2 * module.channels * (module.out_channels // module.groups) * math.prod(module.kernel_size)
        total[0] += (1 + 2 * module.iterations) * per_conv * voxels

    handles = [m.register_forward_hook(hook) for m in network.modules() if isinstance(m, NonnegativeDeconvolution)]
    return total, handles


def measure_complexity(network: nn.Module, input_shape: tuple[int, ...], device: str = "meta") -> Complexity:
    """Profile one forward pass of ``network``: parameters and FLOPs.

    Args:
        network: the model; its parameters must live on ``device``.
        input_shape: (batch, channels, *spatial).
        device: 'meta' costs no memory and no time and is exact for counts.
    """
    x = torch.zeros(input_shape, device=device)
    voxels = math.prod(input_shape[2:]) * input_shape[0]
    ndc_flops, handles = _ndc_internal_flops(network)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as flop_counter, _ElementwiseCounter() as elementwise:
            network(x)
    finally:
        for handle in handles:
            handle.remove()
    full = flop_counter.get_total_flops()

    return Complexity(
        parameters=sum(p.numel() for p in network.parameters()),
        flops=full,
        paper_flops=full - ndc_flops[0] + elementwise.elements,
        voxels=voxels,
    )
