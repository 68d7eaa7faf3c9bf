"""Memory-lean NDC (ndc_update_lean / LeanNDCUpdate) against the plain autograd graph of eq. (7).

The plain :func:`ndc_update` is itself checked against an independent reference in test_ndc.py;
here the lean version must give the same forward values and the same gradients (float64, every
grouping, ratio, kernel and iteration count), save only X, S0 and V for backward, and keep the
float32 behaviour under autocast.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

import nnunet_deconver.layers.ndc_layer_op as ndc_layer_op
import nnunet_deconver.layers.ndc_layer_slabs as ndc_layer_slabs
import nnunet_deconver.layers.ndc_lean as ndc_lean
from nnunet_deconver.analysis.memory import saved_tensor_bytes
from nnunet_deconver.layers import LeanNDCUpdate, NonnegativeDeconvolution, ndc_update, ndc_update_lean

CHANNELS = 4
SIZES = {1: (11,), 2: (7, 6), 3: (5, 4, 6)}
ANISOTROPIC = {1: (5,), 2: (5, 3), 3: (1, 3, 5)}

GRID = [
    pytest.param(dims, groups, ratio, kernel, iterations, id=f"{dims}d-G{groups}-R{ratio}-k{kernel}-it{iterations}")
    for dims, groups, ratio, kernel, iterations in itertools.product(
        (1, 2, 3), (1, 2, CHANNELS), (1, 4), (3, 5, "aniso"), (1, 2)
    )
]


def _kernel(dims: int, kernel: int | str) -> tuple[int, ...]:
    return ANISOTROPIC[dims] if kernel == "aniso" else (int(kernel),) * dims


@pytest.fixture
def one_plane_slabs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Process every tensor one plane at a time, so halos span several slabs (and the borders)."""
    monkeypatch.setattr(ndc_lean, "_SLAB_BYTES", 1)


def _assert_same(lean: tuple[Tensor, ...], plain: tuple[Tensor, ...]) -> None:
    for got, expected in zip(lean, plain, strict=True):
        assert got.shape == expected.shape and got.dtype == expected.dtype
        torch.testing.assert_close(got, expected, rtol=1e-11, atol=1e-13)


def _functional_values(update, x: Tensor, s0: Tensor, v: Tensor, grad: Tensor, groups: int, iterations: int):
    x, s0, v = (t.detach().clone().requires_grad_() for t in (x, s0, v))
    out = update(x, s0, v, groups, iterations, 1e-8)
    return (out, *torch.autograd.grad(out, (x, s0, v), grad))


@pytest.mark.parametrize("slabs", ["whole", "one-plane", "device", "device-one-plane"])
@pytest.mark.parametrize("dims,groups,ratio,kernel,iterations", GRID)
def test_update_and_gradients_equal_plain_autograd(dims, groups, ratio, kernel, iterations, slabs, monkeypatch) -> None:
    """ndc_update_lean == ndc_update: S^(T) and dL/dX, dL/dS0, dL/dV for a random dL/dS^(T) (float64),
    with the CPU strategy (per batch element) and the device strategy (whole batch, one slab or one plane each)."""
    monkeypatch.setattr(ndc_lean, "_SLAB_BYTES" if slabs == "one-plane" else "_DEVICE_SLAB_BYTES", 1)
    if slabs.startswith("device"):
        monkeypatch.setattr(ndc_lean, "_forced_strategy", ["device"])
        if slabs == "device":
            monkeypatch.setattr(ndc_lean, "_DEVICE_SLAB_BYTES", 2**40)
    torch.manual_seed(0)
    size, source_channels = SIZES[dims], ratio * CHANNELS
    x = torch.rand(2, CHANNELS, *size, dtype=torch.float64)
    s0 = torch.rand(2, source_channels, *size, dtype=torch.float64)
    v = torch.rand(CHANNELS, source_channels // groups, *_kernel(dims, kernel), dtype=torch.float64)
    grad = torch.randn(2, source_channels, *size, dtype=torch.float64)
    expected_slabs = {"whole": 2, "one-plane": 2 * size[0], "device": 1, "device-one-plane": size[0]}[slabs]
    assert len(list(ndc_lean._slabs(s0))) == expected_slabs  # per batch element on CPU, whole batch on devices
    lean = _functional_values(ndc_update_lean, x, s0, v, grad, groups, iterations)
    plain = _functional_values(ndc_update, x, s0, v, grad, groups, iterations)
    _assert_same(lean, plain)
    assert (plain[0] - s0).abs().max() > 1e-3  # the update really changes the source


def _layer_pair(dims: int, groups: int, ratio: int, kernel, iterations: int):
    torch.manual_seed(1)
    kwargs = dict(kernel_size=_kernel(dims, kernel), ratio=ratio, groups=groups, iterations=iterations)
    lean = NonnegativeDeconvolution(CHANNELS, dims, **kwargs).double()
    plain = NonnegativeDeconvolution(CHANNELS, dims, lean=False, **kwargs).double()
    plain.load_state_dict(lean.state_dict())
    return lean, plain


def _layer_values(layer: NonnegativeDeconvolution, x: Tensor, grad: Tensor) -> tuple[Tensor, ...]:
    x = x.detach().clone().requires_grad_()
    out = layer(x)
    parameters = (layer.source_init.weight, layer.source_init.bias, layer.weight)
    return (out, *torch.autograd.grad(out, (x, *parameters), grad))


@pytest.mark.parametrize("dims,groups,ratio,kernel,iterations", GRID)
def test_layer_output_and_all_gradients_equal_plain(dims, groups, ratio, kernel, iterations, one_plane_slabs) -> None:
    """The default layer (lean=True) == lean=False: output and the gradients w.r.t. the input,
    the pointwise source_init weight and bias (through S0) and the filter weight W (float64)."""
    lean, plain = _layer_pair(dims, groups, ratio, kernel, iterations)
    assert lean.lean and not plain.lean
    x = torch.rand(2, CHANNELS, *SIZES[dims], dtype=torch.float64)
    grad = torch.randn(2, ratio * CHANNELS, *SIZES[dims], dtype=torch.float64)
    _assert_same(_layer_values(lean, x, grad), _layer_values(plain, x, grad))


@pytest.mark.parametrize("path", ["cpu-one-plane", "device-one-plane", "device-whole"])
@pytest.mark.parametrize("dims,groups,ratio,kernel", [
    pytest.param(dims, groups, ratio, kernel, id=f"{dims}d-G{groups}-R{ratio}-k{kernel}")
    for dims, groups, ratio, kernel in itertools.product((1, 2, 3), (1, CHANNELS), (1, 4), (3, 5, "aniso"))
])
def test_layer_slab_by_slab_with_s0_per_slab_equals_plain(dims, groups, ratio, kernel, path, monkeypatch) -> None:
    """One update with S0 recomputed slab by slab (ndc_layer_slabs: halos of 2h for S0, Y zero outside the
    volume, dL/dS0 split through the ReLU) == lean=False, on the CPU and the device strategy (float64); a
    source that fits one slab takes the unfused path, equal as well."""
    monkeypatch.setenv("NNUNET_DECONVER_NDC_KERNEL", "torch")
    monkeypatch.setattr(ndc_lean, "_SLAB_BYTES", 1)
    monkeypatch.setattr(ndc_lean, "_DEVICE_SLAB_BYTES", 2**40 if path == "device-whole" else 1)
    if path.startswith("device"):
        monkeypatch.setattr(ndc_lean, "_forced_strategy", ["device"])
    calls = []
    original = ndc_layer_slabs.slab_layer_backward
    monkeypatch.setattr(ndc_layer_op, "slab_layer_backward", lambda *a, **k: calls.append(1) or original(*a, **k))
    lean, plain = _layer_pair(dims, groups, ratio, kernel, 1)
    x = torch.rand(2, CHANNELS, *SIZES[dims], dtype=torch.float64)
    grad = torch.randn(2, ratio * CHANNELS, *SIZES[dims], dtype=torch.float64)
    _assert_same(_layer_values(lean, x, grad), _layer_values(plain, x, grad))
    assert calls == ([] if path == "device-whole" else [1])  # a source that fits one slab is taken whole


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last_3d])
def test_layer_accepts_any_input_layout_and_returns_channels_last(memory_format) -> None:
    """Documented layout: any input layout works; the lean 3-D output is channels-last."""
    lean, plain = _layer_pair(3, CHANNELS, 4, 3, 1)
    x = torch.rand(1, CHANNELS, *SIZES[3], dtype=torch.float64).contiguous(memory_format=memory_format)
    out = lean(x)
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(out, plain(x), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize(
    "dims,groups,kernel", [(1, 2, (3,)), (2, CHANNELS, (3, 5)), (3, 2, (3, 1, 3)), (3, CHANNELS, (3, 3, 3))]
)
def test_function_gradcheck(dims, groups, kernel, one_plane_slabs) -> None:
    """LeanNDCUpdate's hand-written backward against finite differences (float64, 2 iterations)."""
    torch.manual_seed(2)
    size = {1: (6,), 2: (4, 5), 3: (3, 4, 3)}[dims]
    x = (torch.rand(1, 4, *size, dtype=torch.float64) + 0.1).requires_grad_()
    s0 = (torch.rand(1, 8, *size, dtype=torch.float64) + 0.1).requires_grad_()
    v = (torch.rand(4, 8 // groups, *kernel, dtype=torch.float64) + 0.05).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b, c: LeanNDCUpdate.apply(a, b, c, groups, 2, 1e-8), (x, s0, v), eps=1e-6, atol=1e-6, rtol=1e-4
    )


def test_double_backward_is_refused() -> None:
    """The backward is not itself differentiable; asking for a second derivative fails loudly."""
    x = torch.rand(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    s0 = torch.rand(1, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    v = torch.rand(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    (grad_x,) = torch.autograd.grad(ndc_update_lean(x, s0, v, 2, 1, 1e-8).sum(), (x,), create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(grad_x.sum(), (x,))


# --------------------------------------------------------------------------------------------------
# Memory saved for backward.
# --------------------------------------------------------------------------------------------------


def _saved_bytes(layer: NonnegativeDeconvolution, x: Tensor) -> int:
    """Bytes of the distinct storages saved for backward by layer(x), the input's storage excluded."""
    return saved_tensor_bytes(lambda: layer(x), exclude=[x])


@pytest.mark.parametrize("dims,size", [(2, (32, 24)), (3, (12, 16, 10))])
@pytest.mark.parametrize("iterations", [1, 2])
def test_lean_layer_saves_only_its_input_and_parameters(dims, size, iterations) -> None:
    """Default layer: nothing saved beyond the input (excluded here) and the parameters (S0 is recomputed);
    the plain graph saves ~13U."""
    torch.manual_seed(3)
    layer = NonnegativeDeconvolution(CHANNELS, dims, kernel_size=3, ratio=4, iterations=iterations)
    x = torch.rand(2, CHANNELS, *size, requires_grad=True)
    unit = x.numel() * x.element_size()  # U, in bytes
    parameter_bytes = sum(p.numel() * p.element_size() for p in layer.parameters())
    assert parameter_bytes < 0.05 * unit  # the bound below is about activations
    lean_saved = _saved_bytes(layer, x)
    assert lean_saved <= parameter_bytes

    plain = NonnegativeDeconvolution(
        CHANNELS, dims, kernel_size=3, ratio=4, iterations=iterations, lean=False
    )
    plain.load_state_dict(layer.state_dict())
    assert _saved_bytes(plain, x) > 12 * unit  # ~13U (one iteration)


def test_meta_device_profiles_the_lean_memory_and_the_plain_flops() -> None:
    """On 'meta' (network profiling) the lean layer runs forward and backward, FLOP counters see the
    same operations as for the plain graph of eq. (7), and the saved memory is the lean one."""
    with torch.device("meta"):
        lean = NonnegativeDeconvolution(CHANNELS, 3, kernel_size=3, ratio=4)
        plain = NonnegativeDeconvolution(CHANNELS, 3, kernel_size=3, ratio=4, lean=False)
        x = torch.empty(1, CHANNELS, 8, 8, 8, requires_grad=True)
    flops = []
    for layer in (lean, plain):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            layer(x)
        flops.append(counter.get_total_flops())
    assert flops[0] == flops[1] > 0
    unit = x.numel() * x.element_size()
    assert _saved_bytes(lean, x) <= sum(p.numel() * p.element_size() for p in lean.parameters()) < unit
    lean(x).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape and lean.weight.grad.shape == lean.weight.shape


# --------------------------------------------------------------------------------------------------
# Mixed precision.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dims", [2, 3])
def test_autocast_gives_float32_equal_to_float32_computation(dtype, dims) -> None:
    """Under CPU autocast the lean layer and ndc_update_lean compute in float32: same output and
    gradients as without autocast."""
    torch.manual_seed(4)
    layer = NonnegativeDeconvolution(CHANNELS, dims, kernel_size=3, ratio=4)
    x = torch.rand(2, CHANNELS, *SIZES[dims], requires_grad=True)
    reference = layer(x)
    reference_grads = torch.autograd.grad(reference.sum(), (x, layer.weight))
    with torch.autocast("cpu", dtype=dtype):
        out = layer(x)
        half_input_out = layer(x.detach().to(dtype))
    assert out.dtype == torch.float32 and half_input_out.dtype == torch.float32
    torch.testing.assert_close(out, reference, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(half_input_out, layer(x.detach().to(dtype).float()), rtol=1e-6, atol=1e-7)
    for got, expected in zip(torch.autograd.grad(out.sum(), (x, layer.weight)), reference_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)

    s0 = torch.rand(2, 4 * CHANNELS, *SIZES[dims])
    v = torch.rand(CHANNELS, 4, *(3,) * dims)
    with torch.autocast("cpu", dtype=dtype):
        functional = ndc_update_lean(x.detach(), s0, v, CHANNELS, 1, 1e-8)
    assert functional.dtype == torch.float32
    torch.testing.assert_close(functional, ndc_update_lean(x.detach(), s0, v, CHANNELS, 1, 1e-8))
