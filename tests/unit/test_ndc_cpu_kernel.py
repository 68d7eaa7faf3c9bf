"""Fused C++ CPU kernel for eq. (7) (nnunet_deconver/csrc/ndc_cpu.cpp) against the torch paths.

The kernel (G = C, 2-D and 3-D, float32/float64) must give the same S^(T) and dL/dX, dL/dS0, dL/dV
as the torch path of ndc_update_lean (NNUNET_DECONVER_NDC_KERNEL=torch) and as the plain autograd
graph of ndc_update, and fall back to the torch path where it cannot be used. Skipped if the
extension cannot be built here.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from nnunet_deconver.layers import LeanNDCUpdate, NonnegativeDeconvolution, ndc_cpu_kernel, ndc_update, ndc_update_lean

SIZES = {2: (7, 9), 3: (5, 4, 7)}
ANISOTROPIC = {2: (5, 3), 3: (1, 3, 3)}


@pytest.fixture(scope="module", autouse=True)
def _extension_built() -> None:
    if isinstance(ndc_cpu_kernel._build(), BaseException):
        pytest.skip(f"the NDC CPU extension does not build here: {ndc_cpu_kernel._build()}")


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every call of the kernel's forward and backward."""
    calls: list[str] = []
    for name in ("update", "update_backward"):
        original = getattr(ndc_cpu_kernel, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(ndc_cpu_kernel, name, spy)
    return calls


def _kernel(dims: int, kernel: int | str) -> tuple[int, ...]:
    return ANISOTROPIC[dims] if kernel == "aniso" else (int(kernel),) * dims


def _inputs(dims: int, channels: int, ratio: int, kernel: tuple[int, ...], dtype: torch.dtype) -> tuple[Tensor, ...]:
    torch.manual_seed(0)
    size = SIZES[dims]
    x = torch.rand(2, channels, *size, dtype=dtype)
    s0 = torch.rand(2, ratio * channels, *size, dtype=dtype)
    v = torch.rand(channels, ratio, *kernel, dtype=dtype)
    grad = torch.randn(2, ratio * channels, *size, dtype=dtype)
    return x, s0, v, grad


def _values(update: Callable[..., Tensor], x: Tensor, s0: Tensor, v: Tensor, grad: Tensor, iterations: int):
    """S^(T) and the gradients w.r.t. X, S0 and V for dL/dS^(T) = grad."""
    x, s0, v = (t.detach().clone().requires_grad_() for t in (x, s0, v))
    out = update(x, s0, v, x.shape[1], iterations, 1e-8)
    return (out, *torch.autograd.grad(out, (x, s0, v), grad))


def _lean_with(mode: str, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Tensor]:
    def update(*args) -> Tensor:
        monkeypatch.setenv(ndc_cpu_kernel.ENVIRONMENT_VARIABLE, mode)
        return ndc_update_lean(*args)

    return update


def _assert_all_close(got: tuple[Tensor, ...], expected: tuple[Tensor, ...], rtol: float, atol: float) -> None:
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


GRID = [
    pytest.param(dims, ratio, kernel, iterations, id=f"{dims}d-R{ratio}-k{kernel}-it{iterations}")
    for dims, ratio, kernel, iterations in itertools.product((2, 3), (1, 4), (3, 5, "aniso"), (1, 2))
]


@pytest.mark.parametrize("dims,ratio,kernel,iterations", GRID)
def test_kernel_equals_torch_path_and_plain_autograd(dims, ratio, kernel, iterations, kernel_calls, monkeypatch) -> None:
    """Forward and all three gradients, float64: kernel == torch path of ndc_update_lean == ndc_update."""
    x, s0, v, grad = _inputs(dims, 3, ratio, _kernel(dims, kernel), torch.float64)
    fused = _values(_lean_with("cpp", monkeypatch), x, s0, v, grad, iterations)
    assert kernel_calls == ["update", "update_backward"]
    torch_path = _values(_lean_with("torch", monkeypatch), x, s0, v, grad, iterations)
    assert kernel_calls == ["update", "update_backward"]  # not called again
    plain = _values(ndc_update, x, s0, v, grad, iterations)
    _assert_all_close(fused, torch_path, rtol=1e-11, atol=1e-13)
    _assert_all_close(fused, plain, rtol=1e-11, atol=1e-13)
    assert fused[0].is_contiguous(memory_format=torch.channels_last_3d if dims == 3 else torch.channels_last)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("channels", [16, 20])
def test_kernel_float32_vector_paths(dims, channels, monkeypatch) -> None:
    """float32 with whole vectors of channels (16) and a remainder (20), R = 4: the vectorised layout
    conversions and the padded channel block, against the float64 torch path."""
    x, s0, v, grad = _inputs(dims, channels, 4, (3,) * dims, torch.float32)
    fused = _values(_lean_with("cpp", monkeypatch), x, s0, v, grad, 1)
    reference = _values(ndc_update, *(t.double() for t in (x, s0, v, grad)), 1)
    _assert_all_close(fused, tuple(t.float() for t in reference), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("dims,kernel", [(2, (3, 5)), (3, (3, 1, 3))])
def test_kernel_gradcheck(dims, kernel, kernel_calls, monkeypatch) -> None:
    """The kernel's backward against finite differences (float64, 2 iterations)."""
    monkeypatch.setenv(ndc_cpu_kernel.ENVIRONMENT_VARIABLE, "cpp")
    torch.manual_seed(2)
    size = {2: (4, 5), 3: (3, 4, 3)}[dims]
    x = (torch.rand(1, 2, *size, dtype=torch.float64) + 0.1).requires_grad_()
    s0 = (torch.rand(1, 8, *size, dtype=torch.float64) + 0.1).requires_grad_()
    v = (torch.rand(2, 4, *kernel, dtype=torch.float64) + 0.05).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b, c: LeanNDCUpdate.apply(a, b, c, 2, 2, 1e-8), (x, s0, v), eps=1e-6, atol=1e-6, rtol=1e-4
    )
    assert "update_backward" in kernel_calls


def test_partial_gradients(kernel_calls, monkeypatch) -> None:
    """Only the gradients asked for are returned; dL/dS0 alone equals the torch path's."""
    x, s0, v, grad = _inputs(3, 3, 4, (3, 3, 3), torch.float64)
    results = []
    for mode in ("cpp", "torch"):
        monkeypatch.setenv(ndc_cpu_kernel.ENVIRONMENT_VARIABLE, mode)
        source = s0.clone().requires_grad_()
        (grad_source,) = torch.autograd.grad(ndc_update_lean(x, source, v, 3, 1, 1e-8), (source,), grad)
        results.append(grad_source)
    assert kernel_calls == ["update", "update_backward"]
    torch.testing.assert_close(results[0], results[1], rtol=1e-11, atol=1e-13)


def test_layer_uses_the_kernel_by_default(kernel_calls, monkeypatch) -> None:
    """NonnegativeDeconvolution (G = C, CPU) runs the kernel in auto mode, with the torch path's values."""
    monkeypatch.delenv(ndc_cpu_kernel.ENVIRONMENT_VARIABLE, raising=False)
    torch.manual_seed(5)
    layer = NonnegativeDeconvolution(4, 3, kernel_size=3, ratio=4).double()
    x = torch.rand(2, 4, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    grads = torch.autograd.grad(out.sum(), (x, layer.weight))
    assert kernel_calls == ["update", "update_backward"]
    monkeypatch.setenv(ndc_cpu_kernel.ENVIRONMENT_VARIABLE, "torch")
    expected = layer(x)
    torch.testing.assert_close(out, expected, rtol=1e-11, atol=1e-13)
    for got, want in zip(grads, torch.autograd.grad(expected.sum(), (x, layer.weight)), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("case", ["groups", "1d"])
def test_unsupported_cases_use_the_torch_path(case, kernel_calls, monkeypatch) -> None:
    """G != C and 1-D inputs run the torch path, even with NNUNET_DECONVER_NDC_KERNEL=cpp, silently."""
    monkeypatch.setenv(ndc_cpu_kernel.ENVIRONMENT_VARIABLE, "cpp")
    size, groups = ((6, 5), 2) if case == "groups" else ((9,), 4)
    x = torch.rand(1, 4, *size, dtype=torch.float64, requires_grad=True)
    s0 = torch.rand(1, 8, *size, dtype=torch.float64)
    v = torch.rand(4, 8 // groups, *(3,) * len(size), dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ndc_update_lean(x, s0, v, groups, 1, 1e-8)
        out.sum().backward()
    assert kernel_calls == []
    torch.testing.assert_close(out, ndc_update(x, s0, v, groups, 1, 1e-8), rtol=1e-11, atol=1e-13)


def test_build_failure_falls_back_with_one_warning(kernel_calls, monkeypatch) -> None:
    """auto: a failed build warns once and the torch path gives the same values; cpp: it raises."""
    monkeypatch.setattr(ndc_cpu_kernel, "_build", lambda: RuntimeError("no compiler"))
    monkeypatch.setattr(ndc_cpu_kernel, "_warned", False)
    monkeypatch.delenv(ndc_cpu_kernel.ENVIRONMENT_VARIABLE, raising=False)
    x, s0, v, grad = _inputs(2, 3, 4, (3, 3), torch.float64)
    with pytest.warns(RuntimeWarning, match="did not build"):
        fallback = _values(ndc_update_lean, x, s0, v, grad, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # at most one warning per process
        _values(ndc_update_lean, x, s0, v, grad, 1)
    assert kernel_calls == []
    _assert_all_close(fallback, _values(ndc_update, x, s0, v, grad, 1), rtol=1e-11, atol=1e-13)
    monkeypatch.setenv(ndc_cpu_kernel.ENVIRONMENT_VARIABLE, "cpp")
    with pytest.raises(RuntimeError, match="no compiler"):
        ndc_update_lean(x, s0, v, 3, 1, 1e-8)


def test_invalid_mode_is_rejected(monkeypatch) -> None:
    monkeypatch.setenv(ndc_cpu_kernel.ENVIRONMENT_VARIABLE, "gpu")
    with pytest.raises(ValueError, match="NNUNET_DECONVER_NDC_KERNEL"):
        ndc_cpu_kernel.kernel_mode()
