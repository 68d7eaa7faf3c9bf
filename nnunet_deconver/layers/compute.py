"""Where the layers compute: full-precision islands inside autocast and the channels-last layout.

The multiplicative updates and coordinates (NDC, NMF, DTC) run in float32 (float64 for float64
inputs) even when nnU-Net trains under fp16 autocast; the NDC update works channels-last. On NVIDIA
GPUs since Ampere, cuDNN runs float32 convolutions as TF32 (10-bit mantissa, PyTorch's default
``torch.backends.cudnn.allow_tf32 = True``): the NDC's convolutions would then be about as precise as
fp16. They run in true float32 unless ``NNUNET_DECONVER_NDC_TF32=1`` allows TF32 (faster).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensor

_CHANNELS_LAST: dict[int, torch.memory_format] = {2: torch.channels_last, 3: torch.channels_last_3d}


def autocast_disabled(tensor: Tensor) -> torch.autocast:
    """Context disabling autocast on ``tensor``'s device (meta, which has no autocast, as CPU)."""
    return torch.autocast("cpu" if tensor.is_meta else tensor.device.type, enabled=False)


def is_fake(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a fake tensor (shapes only, as in profiling under FakeTensorMode)."""
    return isinstance(tensor, FakeTensor)


def to_autocast_dtype(tensor: Tensor) -> Tensor:
    """``tensor`` in the autocast dtype of its device if autocast is on there (clamped to that dtype's finite
    range, so a float32 value beyond it becomes its largest value instead of inf), else unchanged."""
    device = "cpu" if tensor.is_meta else tensor.device.type
    if not torch.is_autocast_enabled(device):
        return tensor
    dtype = torch.get_autocast_dtype(device)
    limit = torch.finfo(dtype).max
    return tensor.clamp(-limit, limit).to(dtype)


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """float64 for float64 tensors, float32 for everything else (half precision included)."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def compute_memory_format(tensor: Tensor) -> torch.memory_format:
    """Channels-last for (B, C, *spatial) tensors with 2 or 3 spatial axes, else contiguous."""
    return _CHANNELS_LAST.get(tensor.dim() - 2, torch.contiguous_format)


def compute_layout(tensor: Tensor) -> Tensor:
    """``tensor`` in the compute layout, copying only if needed."""
    return tensor.contiguous(memory_format=compute_memory_format(tensor))


TF32_VARIABLE = "NNUNET_DECONVER_NDC_TF32"


def ndc_allows_tf32() -> bool:
    """Whether ``NNUNET_DECONVER_NDC_TF32`` is 1 (TF32 for the NDC's float32 convolutions); default 0."""
    value = os.environ.get(TF32_VARIABLE, "0").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{TF32_VARIABLE} must be 0 (true float32, the default) or 1 (TF32); got {value!r}.")
    return value == "1"


@contextmanager
def ndc_convolution_precision(device: torch.device) -> Iterator[None]:
    """On CUDA, cuDNN's TF32 switch as :func:`ndc_allows_tf32` says for the enclosed convolutions; restored after."""
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = ndc_allows_tf32()
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous
