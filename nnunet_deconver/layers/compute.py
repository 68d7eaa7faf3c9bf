"""Where the layers compute: full-precision islands inside autocast and the channels-last layout.

The multiplicative updates and coordinates (NDC, NMF, DTC) run in float32 (float64 for float64
inputs) even when nnU-Net trains under fp16 autocast; the NDC update works channels-last.
"""

from __future__ import annotations

import torch
from torch import Tensor

_CHANNELS_LAST: dict[int, torch.memory_format] = {2: torch.channels_last, 3: torch.channels_last_3d}


def autocast_disabled(tensor: Tensor) -> torch.autocast:
    """Context disabling autocast on ``tensor``'s device (meta, which has no autocast, as CPU)."""
    return torch.autocast("cpu" if tensor.is_meta else tensor.device.type, enabled=False)


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """float64 for float64 tensors, float32 for everything else (half precision included)."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def compute_memory_format(tensor: Tensor) -> torch.memory_format:
    """Channels-last for (B, C, *spatial) tensors with 2 or 3 spatial axes, else contiguous."""
    return _CHANNELS_LAST.get(tensor.dim() - 2, torch.contiguous_format)


def compute_layout(tensor: Tensor) -> Tensor:
    """``tensor`` in the compute layout, copying only if needed."""
    return tensor.contiguous(memory_format=compute_memory_format(tensor))
