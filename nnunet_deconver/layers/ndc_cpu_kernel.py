"""Fused C++ CPU kernel for the NDC update, eq. (7) of papers/deconver.md section III.F, for G = C.

``csrc/ndc_cpu.cpp`` computes eq. (7) (``iterations`` updates) and the backward derived in
:mod:`nnunet_deconver.layers.ndc_lean` row by row with OpenMP (through ``at::parallel_for``, so
it uses ``torch.get_num_threads()`` threads), keeping the R*C-channel intermediates (N, D, dL/dN,
dL/dD) one row at a time in cache. Like the torch path it saves only X, S0 and V for backward.
Its results and C-channel temporaries are allocated on transparent huge pages where the OS allows
it (first touches of 4 KiB pages otherwise cost as much as the arithmetic).

The extension is compiled on first use with :func:`torch.utils.cpp_extension.load` (``-O3
-march=native -fopenmp``, cached in the torch extensions directory; the name includes a hash of
the CPU's feature flags, so a cache shared between different CPUs never runs foreign
instructions, and of the source, so environments with different versions of the package never
rebuild one shared build folder under each other). :class:`~nnunet_deconver.layers.ndc_lean.LeanNDCUpdate` uses it for
CPU float32/float64 2-D and 3-D inputs with G = C; otherwise, or if it does not build, it runs
the torch path. The environment variable ``NNUNET_DECONVER_NDC_KERNEL`` selects:

* ``auto`` (default): the kernel where supported; a build failure is reported by one warning,
  unsupported cases only in the log (debug level);
* ``torch``: always the torch path;
* ``cpp``: the kernel where supported, and a build failure raises.

Under ``torch.compile`` the torch path is traced and compiled instead (the extension is opaque to
dynamo, and the graph break it would cause makes inductor recompile the rest with dynamic shapes).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import warnings
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from nnunet_deconver.layers.compute import compute_layout, is_fake

ENVIRONMENT_VARIABLE = "NNUNET_DECONVER_NDC_KERNEL"
_MODES = ("auto", "torch", "cpp")
_SOURCE = Path(__file__).resolve().parent.parent / "csrc" / "ndc_cpu.cpp"
_FLAGS = ["-O3", "-march=native", "-fopenmp"]

_log = logging.getLogger(__name__)
_warned = False


def kernel_mode() -> str:
    """The value of ``NNUNET_DECONVER_NDC_KERNEL``: ``auto`` (default), ``torch`` or ``cpp``."""
    mode = os.environ.get(ENVIRONMENT_VARIABLE, "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(f"{ENVIRONMENT_VARIABLE} must be one of {', '.join(_MODES)}; got {mode!r}.")
    return mode


def _cpu_tag() -> str:
    """Short hash of the CPU feature flags, for the extension name (it is built with -march=native)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return hashlib.sha1(flags.encode()).hexdigest()[:8]


def _source_tag() -> str:
    """Short hash of the C++ source: installs of different versions never share (and rebuild) one build folder."""
    return hashlib.sha1(_SOURCE.read_bytes()).hexdigest()[:8]


@functools.cache
def _build() -> ModuleType | BaseException:
    """The compiled extension, or the exception its build raised (tried once per process)."""
    # Importing cpp_extension logs "No CUDA runtime is found" on CPU-only machines: irrelevant to a CPU
    # kernel and confusing in a training log, so that import runs with the module's logger quietened.
    extension_log = logging.getLogger("torch.utils.cpp_extension")
    level = extension_log.level
    extension_log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        extension_log.setLevel(level)

    try:
        return cpp_extension.load(
            name=f"nnunet_deconver_ndc_cpu_{_cpu_tag()}_{_source_tag()}",
            sources=[str(_SOURCE)],
            extra_cflags=_FLAGS,
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as error:  # no compiler, failed compilation or link: fall back to torch
        return error


def extension() -> ModuleType | None:
    """The compiled extension (built on first call), or None if it cannot be built.

    Raises:
        RuntimeError: if the build fails and ``NNUNET_DECONVER_NDC_KERNEL=cpp``.
    """
    global _warned
    built = _build()
    if not isinstance(built, BaseException):
        return built
    if kernel_mode() == "cpp":
        raise RuntimeError(f"{ENVIRONMENT_VARIABLE}=cpp, but the NDC CPU kernel did not build: {built}") from built
    if not _warned:
        _warned = True
        warnings.warn(
            f"The fused NDC CPU kernel did not build; using the slower torch path ({type(built).__name__}: "
            f"{str(built).strip().splitlines()[-1] if str(built).strip() else ''}).",
            RuntimeWarning,
            stacklevel=3,
        )
    return None


def unsupported_reason(observation: Tensor, filters: Tensor, groups: int, dtype: torch.dtype) -> str | None:
    """Why the kernel cannot compute this call of eq. (7), or None if it can."""
    if observation.device.type != "cpu" or filters.device.type != "cpu":
        return f"device {observation.device.type}"
    if is_fake(observation):
        return "fake tensor (profiling)"
    if observation.dim() not in (4, 5):
        return f"{observation.dim() - 2}-D input (2-D and 3-D only)"
    if groups != filters.shape[0]:
        return f"groups {groups} != channels {filters.shape[0]}"
    if dtype not in (torch.float32, torch.float64):
        return f"dtype {dtype}"
    return None


def use_kernel(observation: Tensor, filters: Tensor, groups: int, dtype: torch.dtype) -> bool:
    """Whether :class:`~nnunet_deconver.layers.ndc_lean.LeanNDCUpdate` computes this call with the kernel.

    See the module docstring.
    """
    if kernel_mode() == "torch" or torch.compiler.is_compiling():  # inductor compiles the torch path instead
        return False
    reason = unsupported_reason(observation, filters, groups, dtype)
    if reason is not None:
        _log.debug("NDC CPU kernel not used: %s", reason)
        return False
    return extension() is not None


def _channels_last(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    return compute_layout(tensor.to(dtype))


def update(observation: Tensor, source: Tensor, filters: Tensor, iterations: int, eps: float) -> Tensor:
    """S^(iterations) of eq. (7) for G = C, computed in ``filters.dtype``; channels-last result."""
    dtype = filters.dtype
    module = extension()
    assert module is not None
    return module.forward(
        _channels_last(observation, dtype), _channels_last(source, dtype), filters.contiguous(), iterations, eps
    )


def update_backward(
    grad: Tensor,
    observation: Tensor,
    source: Tensor,
    filters: Tensor,
    iterations: int,
    eps: float,
    need_observation: bool,
    need_filters: bool,
) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """(dL/dX, dL/dS0, dL/dV) of :func:`update` for dL/dS^(iterations) = ``grad`` (None where not needed).

    The formulas are those of :mod:`nnunet_deconver.layers.ndc_lean`; only X, S0 and V are needed.
    """
    dtype = filters.dtype
    module = extension()
    assert module is not None
    grad_observation, grad_source, grad_filters = module.backward(
        _channels_last(grad, dtype),
        _channels_last(observation, dtype),
        _channels_last(source, dtype),
        filters.contiguous(),
        iterations,
        eps,
        need_observation,
        need_filters,
    )
    return (
        grad_observation if need_observation else None,
        grad_source,
        grad_filters if need_filters else None,
    )
