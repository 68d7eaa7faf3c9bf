"""Keep parameters that one forward pass leaves out in the autograd graph, for DistributedDataParallel.

Without deep supervision a U-Net's low-resolution segmentation heads take no part in the forward pass,
and DistributedDataParallel with ``find_unused_parameters=False`` (nnU-Net's setting) stops with an
error when a parameter gets no gradient. Adding 0 x (their sum) is exactly zero and gives them zero
gradients; inference (no gradient recording) skips it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def with_idle_parameters_in_graph(output: Tensor, idle_modules: Iterable[nn.Module]) -> Tensor:
    """``output`` plus 0 x every trainable parameter of ``idle_modules`` when gradients are recorded."""
    if not torch.is_grad_enabled():
        return output
    idle = [p for module in idle_modules for p in module.parameters() if p.requires_grad]
    return output + 0.0 * sum(p.sum() for p in idle) if idle else output
