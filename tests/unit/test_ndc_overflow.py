"""NDC (eq. 7 of papers/deconver.md) stays finite for inputs of any magnitude from 0 to 1e30 in float32.

S * N / D is evaluated as max(S, N) * (min(S, N) / D) (``source_times_ratio``): S * N alone overflows
float32 from about 1e19 each, N / D where S and D are near zero. The lean backward (torch path and
C++ kernel) saturates its out-of-range sensitivities, so they multiply zero sources and all-zero
filters to 0 instead of NaN. Checked here: the product against float64, constructed worst cases
against the float64 plain autograd graph, and a fuzz over random layers and inputs of magnitudes
0, 1e-30 ... 1e30 under fp32 and CPU autocast (fp16, bf16).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor

from nnunet_deconver.layers import NonnegativeDeconvolution, ndc_cpu_kernel, ndc_update, ndc_update_lean
from nnunet_deconver.layers.ndc_operators import source_times_ratio

FLOAT32_MAX = torch.finfo(torch.float32).max
MAGNITUDES = [0.0, 1e-30, 1e-20, 1e-10, 1.0, 1e10, 1e20, 1e30]
LEAN_PATHS = ["torch", "cpp"]
FUZZ_CASES = 40  # random layers per magnitude


@pytest.fixture
def ndc_kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Selects the lean path (``torch`` or ``cpp``, the parameter); skips ``cpp`` where it does not build."""
    path = request.param
    if path == "cpp" and isinstance(ndc_cpu_kernel._build(), BaseException):
        pytest.skip(f"the NDC CPU extension does not build here: {ndc_cpu_kernel._build()}")
    monkeypatch.setenv(ndc_cpu_kernel.ENVIRONMENT_VARIABLE, path)
    return path


def test_source_times_ratio_is_finite_and_exact_wherever_the_result_is_representable() -> None:
    """S, N from 0 to 1e38 and D >= eps: the float32 result is finite wherever S * N / D (float64) is
    below the float32 max, and equals it to float32 round-off wherever it and min(S, N) / D are normal."""
    values = [0.0, 1e-37, 1e-30, 1e-8, 1.0, 1e19, 1e30, 1e38]
    s, n, d = (torch.tensor(v, dtype=torch.float64) for v in zip(*itertools.product(values, values, values[3:])))
    exact = s * n / d
    got = source_times_ratio(s.float(), n.float(), d.float()).double()
    assert torch.isfinite(got[exact <= FLOAT32_MAX]).all()
    tiny = torch.finfo(torch.float32).tiny
    normal = (torch.minimum(s, n) / d >= tiny) & (exact >= tiny) & (exact <= FLOAT32_MAX)
    torch.testing.assert_close(got[normal], exact[normal], rtol=1e-6, atol=0)
    naive = s.float() * n.float() / d.float()
    assert not torch.isfinite(naive[normal]).all()  # the issue this order solves: S * N overflows first


def _worst_case_inputs(dims: int, magnitude: float) -> tuple[Tensor, Tensor, Tensor]:
    """X and S0 of the given magnitude, S0 zero on half of every (channel, first-axis) plane and for
    the sources of channel 0 everywhere; the filters of source 1 are all zero (a dead ReLU(W))."""
    generator = torch.Generator().manual_seed(0)
    channels, ratio, size = 3, 2, (6, 5, 4)[:dims]
    x = magnitude * torch.rand(2, channels, *size, generator=generator, dtype=torch.float64)
    s0 = magnitude * torch.rand(2, ratio * channels, *size, generator=generator, dtype=torch.float64)
    s0[:, :ratio] = 0.0
    s0[:, :, : size[0] // 2] = 0.0
    v = torch.rand(channels, ratio, *(3,) * dims, generator=generator, dtype=torch.float64)
    v[0, 1] = 0.0
    return x, s0, v


@pytest.mark.parametrize("ndc_kernel", LEAN_PATHS, indirect=True)
@pytest.mark.parametrize("iterations", [1, 2])
@pytest.mark.parametrize("magnitude", [1e20, 1e30])
@pytest.mark.parametrize("dims", [2, 3])
def test_lean_update_and_gradients_at_huge_magnitudes_equal_float64(dims, magnitude, iterations, ndc_kernel) -> None:
    """float32 ndc_update_lean (G = C) with zero sources and an all-zero filter at magnitudes where
    S * N overflows: S^(T) and dL/dX equal the float64 plain autograd graph, dL/dS0 and dL/dV do
    where S0 > 0 and the filters are not zero (elsewhere the true values exceed float32; saturated)."""
    x, s0, v = _worst_case_inputs(dims, magnitude)
    grad = torch.randn(s0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    results = []
    for update, dtype in ((ndc_update_lean, torch.float32), (ndc_update, torch.float64)):
        inputs = [t.to(dtype).requires_grad_() for t in (x, s0, v)]
        out = update(*inputs, x.shape[1], iterations, 1e-8)
        results.append((out, *torch.autograd.grad(out, inputs, grad.to(dtype))))
    (out, grad_x, grad_s0, grad_v), (out64, grad_x64, grad_s064, grad_v64) = results
    live_source, live_filter = s0 > 0, v.flatten(2).amax(-1) > 0
    assert torch.isfinite(out).all() and torch.isfinite(grad_x).all() and torch.isfinite(grad_s0).all()
    torch.testing.assert_close(out.double(), out64, rtol=1e-4, atol=0)
    torch.testing.assert_close(grad_x.double(), grad_x64, rtol=1e-4, atol=1e-6 * grad_x64.abs().max().item())
    torch.testing.assert_close(grad_s0.double()[live_source], grad_s064[live_source], rtol=1e-4, atol=1e-4)
    scale = grad_v64[live_filter].abs().max().item()  # dL/dV sums terms of both signs: float32 cancellation
    torch.testing.assert_close(grad_v.double()[live_filter], grad_v64[live_filter], rtol=1e-4, atol=1e-6 * scale)


def _random_layer_and_input(case: int, magnitude: float, cpp: bool) -> tuple[NonnegativeDeconvolution, Tensor]:
    """A random layer (1-D to 3-D, G = 1 or C, R, kernel 3 or 5, 1 or 2 iterations) and a random input
    of the magnitude with 30 % zeros; ``cpp``: the cases the C++ kernel computes (2-D/3-D, G = C)."""
    generator = torch.Generator().manual_seed(case)

    def pick(options: list) -> object:
        return options[int(torch.randint(len(options), (), generator=generator))]

    dims, channels = pick([2, 3] if cpp else [1, 2, 3]), pick([2, 3, 4])
    groups = channels if cpp else pick([1, channels])
    size = [int(torch.randint(3, 8, (), generator=generator)) for _ in range(dims)]
    torch.manual_seed(case)
    layer = NonnegativeDeconvolution(
        channels, dims, kernel_size=pick([3, 5]), ratio=pick([1, 2, 4]), groups=groups, iterations=pick([1, 2])
    )
    x = magnitude * torch.rand(2, channels, *size, generator=generator)
    return layer, x * (torch.rand(x.shape, generator=generator) > 0.3)


def _layer_outputs(layer: NonnegativeDeconvolution, x: Tensor, autocast: torch.dtype | None) -> list[Tensor]:
    """The layer's output for ``x`` (and for ``x`` in the autocast dtype, where that is finite)."""
    if autocast is None:
        return [layer(x)]
    inputs = [x] + ([x.to(autocast)] if torch.isfinite(x.to(autocast)).all() else [])
    with torch.autocast("cpu", dtype=autocast):
        return [layer(inp) for inp in inputs]


AUTOCAST = [pytest.param(None, id="fp32"), pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]


@pytest.mark.parametrize("autocast", AUTOCAST)
@pytest.mark.parametrize("ndc_kernel", LEAN_PATHS, indirect=True)
def test_fuzz_lean_layer_forward_and_backward_are_finite(ndc_kernel, autocast) -> None:
    """Random layers and inputs of magnitudes 0, 1e-30 ... 1e30: finite output and finite gradients
    w.r.t. the input and every parameter, for a random output gradient."""
    for magnitude, case in itertools.product(MAGNITUDES, range(FUZZ_CASES)):
        layer, x = _random_layer_and_input(case, magnitude, cpp=ndc_kernel == "cpp")
        x.requires_grad_()
        for out in _layer_outputs(layer, x, autocast):
            assert out.dtype == torch.float32 and torch.isfinite(out).all(), (magnitude, case)
            grads = torch.autograd.grad(out, (x, *layer.parameters()), torch.randn_like(out))
            assert all(torch.isfinite(g).all() for g in grads), (magnitude, case)


@pytest.mark.parametrize("autocast", AUTOCAST)
def test_fuzz_plain_layer_forward_is_finite(autocast) -> None:
    """The same for lean=False (the plain autograd graph of ndc_update), forward only: its backward is
    autograd's, which multiplies out-of-range sensitivities by zeros (NaN) for 2 iterations from 1e20."""
    for magnitude, case in itertools.product(MAGNITUDES, range(FUZZ_CASES)):
        layer, x = _random_layer_and_input(case, magnitude, cpp=False)
        layer.lean = False
        with torch.no_grad():
            for out in _layer_outputs(layer, x, autocast):
                assert out.dtype == torch.float32 and torch.isfinite(out).all(), (magnitude, case)
