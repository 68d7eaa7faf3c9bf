"""Full-precision islands inside autocast: the multiplicative updates and coordinates (NDC, NMF, DTC)
run in float32 (or float64) even when nnU-Net trains under fp16 autocast."""

from __future__ import annotations

import torch
from torch import Tensor


def autocast_disabled(tensor: Tensor) -> torch.autocast:
    """Context disabling autocast on ``tensor``'s device (meta, which has no autocast, as CPU)."""
    return torch.autocast("cpu" if tensor.is_meta else tensor.device.type, enabled=False)
