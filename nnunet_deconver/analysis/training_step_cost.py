"""What one training step costs a network, measured without computing: saved activations and kernel launches.

The network runs forward and backward on fake tensors (``torch._subclasses.FakeTensorMode``: shapes,
dtypes and strides, no data), so realistic nnU-Net plans (128^3 patches, batch 2) cost seconds and no
memory. Three measurements, each of one step (forward, sum of every output as the loss, backward):

* saved activations in float32: the distinct storages autograd keeps for backward
  (:func:`~nnunet_deconver.analysis.memory.saved_tensor_bytes`), parameters and the input excluded;
  with activation checkpointing these are the checkpointed blocks' inputs, not their internals;
* the same under fp16 autocast (CPU autocast on fake CPU tensors; its lists of fp16 and fp32 ops
  match CUDA's for convolutions, matrix products and normalisations);
* the peak of all memory a step holds (parameters, gradients, activations and temporaries) on the
  device path, float32 and fp16 autocast, estimated by PyTorch's ``MemTracker`` from the lifetimes
  of the fake tensors (a real step adds the allocator's rounding and caching, and cuDNN workspaces);
* kernel-launching aten ops of the step on the CUDA path: every aten op that returns a tensor and
  is neither a view nor an allocation (``empty*``), with the NDC in its device strategy (whole
  batch, large slabs), the one it takes on CUDA.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from nnunet_deconver.analysis.memory import saved_tensor_bytes
from nnunet_deconver.layers.ndc_lean import ndc_strategy

_ALLOCATIONS = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"})


@dataclass(frozen=True)
class TrainingStepCost:
    """Saved activations and peak memory (bytes) and kernel launches of one training step."""

    saved_bytes_fp32: int
    saved_bytes_autocast: int
    peak_bytes_fp32: int
    peak_bytes_autocast: int
    launches: int


def _launches_kernel(func: torch._ops.OpOverload) -> bool:
    """Whether ``func`` launches a kernel: an aten op returning a new tensor (not a view, not an allocation)."""
    returns = func._schema.returns
    if func.namespace != "aten" or not returns or not isinstance(returns[0].type, torch.TensorType):
        return False  # prim.device, promote_types and other queries of metadata
    if func.overloadpacket.__name__ in _ALLOCATIONS or func.is_view:
        return False
    alias = returns[0].alias_info
    return alias is None or alias.is_write


class _LaunchCounter(TorchDispatchMode):
    """Counts the aten ops that launch a kernel (see :func:`_launches_kernel`)."""

    def __init__(self) -> None:
        super().__init__()
        self.launches = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if _launches_kernel(func):
            self.launches += 1
        return func(*args, **(kwargs or {}))


def _loss(output: Tensor | list[Tensor] | tuple[Tensor, ...]) -> Tensor:
    outputs = output if isinstance(output, (list, tuple)) else [output]
    return sum(o.float().sum() for o in outputs)


def _autocast(dtype: torch.dtype | None) -> AbstractContextManager:
    """CPU autocast to ``dtype`` (the fake tensors live on the CPU), or nothing for None."""
    return torch.autocast("cpu", dtype=dtype) if dtype is not None else nullcontext()


@contextmanager
def _fake_network(build: Callable[[], nn.Module], input_shape: tuple[int, ...]) -> Iterator[tuple[nn.Module, Tensor]]:
    """The network of ``build()``, built on fake CPU tensors, in training mode, and a fake input."""
    with FakeTensorMode():
        yield build().train(), torch.zeros(input_shape)


def saved_activation_bytes(
    build: Callable[[], nn.Module], input_shape: tuple[int, ...], autocast_dtype: torch.dtype | None = None
) -> int:
    """Bytes autograd saves for backward in one forward pass of ``build()`` on ``input_shape``.

    Args:
        build: returns the network; it is called under fake-tensor mode on the CPU (no device of its own).
        input_shape: (batch, channels, *spatial).
        autocast_dtype: None for float32, or the autocast dtype (torch.float16 as nnU-Net on CUDA).
    """
    with _fake_network(build, input_shape) as (network, x):
        with _autocast(autocast_dtype):
            return saved_tensor_bytes(lambda: _loss(network(x)), exclude=[x, *network.parameters()])


def peak_step_bytes(
    build: Callable[[], nn.Module], input_shape: tuple[int, ...], autocast_dtype: torch.dtype | None = None
) -> int:
    """Peak bytes held during one forward and backward pass of ``build()`` (device path of the NDC), estimated
    by ``torch.distributed._tools.mem_tracker.MemTracker`` on fake tensors (see the module docstring)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    with _fake_network(build, input_shape) as (network, x), ndc_strategy("device"):
        tracker = MemTracker()
        tracker.track_external(network)
        with tracker, _autocast(autocast_dtype):
            _loss(network(x)).backward()
        peaks = tracker.get_tracker_snapshot("peak")
    return max(int(per_device["Total"]) for per_device in peaks.values())


def kernel_launches(build: Callable[[], nn.Module], input_shape: tuple[int, ...]) -> int:
    """Kernel-launching aten ops of one forward and backward pass on the CUDA path (see the module docstring)."""
    with _fake_network(build, input_shape) as (network, x), ndc_strategy("device"):
        with _LaunchCounter() as counter:
            _loss(network(x)).backward()
        return counter.launches


def training_step_cost(build: Callable[[], nn.Module], input_shape: tuple[int, ...]) -> TrainingStepCost:
    """Saved activations and peak memory (float32 and fp16 autocast) and CUDA-path kernel launches of one step."""
    return TrainingStepCost(
        saved_bytes_fp32=saved_activation_bytes(build, input_shape),
        saved_bytes_autocast=saved_activation_bytes(build, input_shape, torch.float16),
        peak_bytes_fp32=peak_step_bytes(build, input_shape),
        peak_bytes_autocast=peak_step_bytes(build, input_shape, torch.float16),
        launches=kernel_launches(build, input_shape),
    )
