"""Nonnegative deconvolution (NDC) layer against papers/deconver.md sections III.B and III.F.

The reference below evaluates eq. (1) (cross-correlation with zero 'same' padding) and the adjoint
X * V^- straight from the definition V^-[d, c, m, n] = V[c, d, 2M - m, 2N - n], in float64, with an
explicit padded buffer and a loop over kernel offsets. It uses no torch convolution and none of the
package's helpers, so it is an independent check of the package's conv-based implementation.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from nnunet_deconver.blocks import DeconvMixer
from nnunet_deconver.layers import NonnegativeDeconvolution, ndc_adjoint, ndc_forward_model, ndc_update

# --------------------------------------------------------------------------------------------------
# Independent float64 reference of eq. (1), the adjoint filter V^- and eq. (7).
# --------------------------------------------------------------------------------------------------


def ref_xcorr(inp: Tensor, filters: Tensor, groups: int) -> Tensor:
    """Eq. (1), grouped: out[b, c, p] = sum_{e in group(c), o} pad(inp)[b, e, p + o] * V[c, e_local, o].

    inp: (B, E, *spatial); filters: (C, E / groups, *kernel) with odd kernel sizes.
    """
    batch, in_channels, *spatial = inp.shape
    out_channels, in_per_group, *kernel = filters.shape
    assert in_channels == in_per_group * groups and out_channels % groups == 0
    half = [k // 2 for k in kernel]
    padded = inp.new_zeros(batch, in_channels, *[n + 2 * h for n, h in zip(spatial, half)])
    padded[(slice(None), slice(None), *[slice(h, h + n) for n, h in zip(spatial, half)])] = inp
    padded = padded.reshape(batch, groups, in_per_group, *padded.shape[2:])
    grouped_filters = filters.reshape(groups, out_channels // groups, in_per_group, *kernel)
    out = inp.new_zeros(batch, groups, out_channels // groups, *spatial)
    for offset in itertools.product(*[range(k) for k in kernel]):
        window = padded[(slice(None), slice(None), slice(None), *[slice(o, o + n) for o, n in zip(offset, spatial)])]
        tap = grouped_filters[(slice(None), slice(None), slice(None), *offset)]  # (G, C_g, E_g)
        out += torch.einsum("bgi...,goi->bgo...", window, tap)
    return out.reshape(batch, out_channels, *spatial)


def ref_adjoint_filters(filters: Tensor, groups: int) -> Tensor:
    """V^- per group: V_g^-[d, c, m, n] = V_g[c, d, 2M - m, 2N - n], stacked to (E, C / groups, *kernel)."""
    out_channels, in_per_group, *kernel = filters.shape
    c_g = out_channels // groups
    spatial_axes = list(range(2, 2 + len(kernel)))
    blocks = []
    for g in range(groups):
        v_g = filters[g * c_g : (g + 1) * c_g]  # (C_g, E_g, *kernel)
        blocks.append(v_g.transpose(0, 1).flip(spatial_axes))  # (E_g, C_g, *kernel)
    return torch.cat(blocks, dim=0)


def ref_forward(source: Tensor, filters: Tensor, groups: int) -> Tensor:
    """S * V of eq. (1)."""
    return ref_xcorr(source, filters, groups)


def ref_adjoint(obs: Tensor, filters: Tensor, groups: int) -> Tensor:
    """X * V^- (cross-correlation with the adjoint filter)."""
    return ref_xcorr(obs, ref_adjoint_filters(filters, groups), groups)


def ref_eq7(obs: Tensor, source: Tensor, filters: Tensor, groups: int, iterations: int, eps: float) -> Tensor:
    """Eq. (7) applied ``iterations`` times: S <- S * (X*V^- + eps) / ((S*V)*V^- + eps)."""
    numerator = ref_adjoint(obs, filters, groups) + eps
    for _ in range(iterations):
        source = source * numerator / (ref_adjoint(ref_forward(source, filters, groups), filters, groups) + eps)
    return source


def ref_layer(layer: NonnegativeDeconvolution, x: Tensor) -> Tensor:
    """The whole layer of section III.F in float64: S0 = ReLU(W_1x1 X + b), V = ReLU(W), eq. (7)."""
    x = x.double()
    w0 = layer.source_init.weight.detach().double().flatten(1)  # (E, C)
    b0 = layer.source_init.bias.detach().double()
    source = torch.einsum("ec,bc...->be...", w0, x) + b0.reshape(1, -1, *([1] * (x.dim() - 2)))
    source = source.clamp_min(0)
    filters = layer.weight.detach().double().clamp_min(0)
    return ref_eq7(x, source, filters, layer.groups, layer.iterations, layer.eps)


def test_reference_adjoint_filter_is_a_true_adjoint() -> None:
    """Sanity of the test's own reference: <S*V, X> == <S, X*V^-> (so it can judge the package)."""
    torch.manual_seed(0)
    s = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    v = torch.randn(4, 4, 3, 5, dtype=torch.float64)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    lhs = (ref_forward(s, v, 2) * x).sum()
    rhs = (s * ref_adjoint(x, v, 2)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-10)


# --------------------------------------------------------------------------------------------------
# Layer == eq. (7).
# --------------------------------------------------------------------------------------------------

# (spatial_dims, channels, groups, ratio, kernel_size, iterations, spatial size)
LAYER_CASES = [
    pytest.param(2, 4, 1, 1, 3, 1, (6, 7), id="2d-G1-R1-k3"),
    pytest.param(2, 4, 2, 4, 5, 1, (6, 7), id="2d-G2-R4-k5"),
    pytest.param(2, 4, 4, 4, 3, 1, (5, 6), id="2d-GC-R4-k3"),
    pytest.param(2, 4, 4, 1, (3, 5), 1, (6, 7), id="2d-GC-R1-k3x5"),
    pytest.param(2, 4, 2, 4, 3, 2, (6, 5), id="2d-G2-R4-k3-it2"),
    pytest.param(3, 4, 1, 4, 3, 1, (4, 5, 3), id="3d-G1-R4-k3"),
    pytest.param(3, 4, 2, 1, 5, 1, (5, 4, 5), id="3d-G2-R1-k5"),
    pytest.param(3, 4, 4, 4, (1, 3, 3), 1, (3, 5, 4), id="3d-GC-R4-k133"),
    pytest.param(3, 2, 2, 4, 3, 2, (4, 3, 5), id="3d-GC-R4-k3-it2"),
]


def _layer_and_input(spatial_dims, channels, groups, ratio, kernel_size, iterations, size, seed=0):
    torch.manual_seed(seed)
    layer = NonnegativeDeconvolution(
        channels, spatial_dims, kernel_size=kernel_size, ratio=ratio, groups=groups, iterations=iterations
    )
    x = torch.rand(2, channels, *size)
    return layer, x


@pytest.mark.parametrize("spatial_dims,channels,groups,ratio,kernel_size,iterations,size", LAYER_CASES)
def test_layer_in_float64_equals_eq7(spatial_dims, channels, groups, ratio, kernel_size, iterations, size) -> None:
    """NonnegativeDeconvolution(...).double() computes eq. (7) (with S0 = ReLU(1x1 conv), V = ReLU(W))."""
    layer, x = _layer_and_input(spatial_dims, channels, groups, ratio, kernel_size, iterations, size)
    layer = layer.double()
    out = layer(x.double())
    expected = ref_layer(layer, x)
    assert out.dtype == torch.float64
    assert out.shape == (2, ratio * channels, *size)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("spatial_dims,channels,groups,ratio,kernel_size,iterations,size", LAYER_CASES)
def test_layer_in_float32_equals_eq7(spatial_dims, channels, groups, ratio, kernel_size, iterations, size) -> None:
    """The default float32 layer matches the float64 evaluation of eq. (7) to float32 accuracy."""
    layer, x = _layer_and_input(spatial_dims, channels, groups, ratio, kernel_size, iterations, size)
    out = layer(x)
    expected = ref_layer(layer, x)
    assert out.dtype == torch.float32
    assert out.shape == (2, ratio * channels, *size)
    torch.testing.assert_close(out.double(), expected, rtol=2e-4, atol=1e-5)
    # The update must actually change the source (otherwise matching eq. 7 would be vacuous).
    s0 = F.relu(layer.source_init(x)).double()
    assert (expected - s0).abs().max() > 1e-3


@pytest.mark.parametrize("spatial_dims,channels,groups,ratio,kernel_size,iterations,size", LAYER_CASES)
def test_ndc_update_in_float64_equals_eq7(spatial_dims, channels, groups, ratio, kernel_size, iterations, size) -> None:
    """The functional ndc_update computes eq. (7) exactly (float64, random nonnegative S0 and V)."""
    torch.manual_seed(1)
    kernel = (kernel_size,) * spatial_dims if isinstance(kernel_size, int) else kernel_size
    e = ratio * channels
    x = torch.rand(2, channels, *size, dtype=torch.float64)
    s0 = torch.rand(2, e, *size, dtype=torch.float64)
    v = torch.rand(channels, e // groups, *kernel, dtype=torch.float64)
    out = ndc_update(x, s0, v, groups, iterations, 1e-8)
    torch.testing.assert_close(out, ref_eq7(x, s0, v, groups, iterations, 1e-8), rtol=1e-11, atol=1e-13)


# --------------------------------------------------------------------------------------------------
# Forward model and adjoint.
# --------------------------------------------------------------------------------------------------

ADJOINT_CASES = [
    pytest.param(dims, groups, ratio, kernel, id=f"{dims}d-G{groups}-R{ratio}-k{kernel}")
    for dims in (2, 3)
    for groups in (1, 2, 4)  # C = 4, so 4 is G = C
    for ratio in (1, 4)
    for kernel in (3, 5)
] + [
    pytest.param(2, 2, 4, (3, 5), id="2d-G2-R4-k3x5"),
    pytest.param(2, 4, 1, (5, 1), id="2d-GC-R1-k5x1"),
    pytest.param(3, 4, 4, (1, 3, 3), id="3d-GC-R4-k133"),
    pytest.param(3, 1, 1, (3, 1, 5), id="3d-G1-R1-k315"),
]


@pytest.mark.parametrize("spatial_dims,groups,ratio,kernel_size", ADJOINT_CASES)
def test_forward_model_and_adjoint(spatial_dims, groups, ratio, kernel_size) -> None:
    """ndc_forward_model is eq. (1), ndc_adjoint is X*V^-, and <S*V, X> == <S, X*V^-> (float64)."""
    torch.manual_seed(2)
    channels = 4
    kernel = (kernel_size,) * spatial_dims if isinstance(kernel_size, int) else tuple(kernel_size)
    size = (5, 6) if spatial_dims == 2 else (4, 5, 3)
    e = ratio * channels
    s = torch.randn(2, e, *size, dtype=torch.float64)
    x = torch.randn(2, channels, *size, dtype=torch.float64)
    v = torch.randn(channels, e // groups, *kernel, dtype=torch.float64)

    forward = ndc_forward_model(s, v, groups)
    adjoint = ndc_adjoint(x, v, groups)
    assert forward.shape == x.shape and adjoint.shape == s.shape
    torch.testing.assert_close(forward, ref_forward(s, v, groups), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(adjoint, ref_adjoint(x, v, groups), rtol=1e-12, atol=1e-12)
    lhs = (forward * x).sum()
    rhs = (s * adjoint).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-10)


# --------------------------------------------------------------------------------------------------
# Theorem 1 (monotonicity of eq. 3).
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spatial_dims,groups,ratio,kernel",
    [(2, 1, 1, (3, 3)), (2, 2, 4, (5, 3)), (3, 4, 4, (3, 3, 3)), (3, 1, 2, (1, 3, 5))],
)
def test_theorem1_reconstruction_error_never_increases(spatial_dims, groups, ratio, kernel) -> None:
    """Theorem 1: with eps = 0 and X, S0, V > 0, e(t) = ||X - S(t)*V||^2 is non-increasing under eq. (3)."""
    torch.manual_seed(3)
    channels = 4
    size = (8, 9) if spatial_dims == 2 else (5, 6, 4)
    e = ratio * channels
    x = torch.rand(1, channels, *size, dtype=torch.float64) + 0.01
    v = torch.rand(channels, e // groups, *kernel, dtype=torch.float64) + 0.01
    source = 3.0 * torch.rand(1, e, *size, dtype=torch.float64) + 0.01  # deliberately a poor start

    def error(s: Tensor) -> float:
        return float(((x - ref_forward(s, v, groups)) ** 2).sum())

    errors = [error(source)]
    for _ in range(10):
        source = ndc_update(x, source, v, groups, iterations=1, eps=0.0)
        assert torch.all(source >= 0)
        errors.append(error(source))
    for before, after in zip(errors, errors[1:]):
        assert after <= before * (1 + 1e-12), errors
    # Meaningful: the iteration really fits X (a no-op or a wrong adjoint would not get here).
    assert errors[-1] < 0.5 * errors[0], errors


# --------------------------------------------------------------------------------------------------
# Gradients.
# --------------------------------------------------------------------------------------------------


def _gradcheck_layer(spatial_dims: int, size: tuple[int, ...], kernel_size) -> tuple[NonnegativeDeconvolution, Tensor]:
    torch.manual_seed(4)
    layer = NonnegativeDeconvolution(2, spatial_dims, kernel_size=kernel_size, ratio=2, groups=2).double()
    with torch.no_grad():
        layer.weight.copy_(layer.weight.abs() + 0.05)  # away from the ReLU kink of V = ReLU(W)
        layer.source_init.weight.copy_(layer.source_init.weight.abs() + 0.05)  # S0 > 0: away from ReLU kink
        layer.source_init.bias.fill_(0.1)
    x = (torch.rand(1, 2, *size, dtype=torch.float64) + 0.1).requires_grad_()
    return layer, x


GRAD_CASES = [pytest.param(2, (4, 5), 3, id="2d"), pytest.param(3, (3, 4, 3), (1, 3, 3), id="3d")]


@pytest.mark.parametrize("spatial_dims,size,kernel_size", GRAD_CASES)
def test_layer_gradcheck_input_and_weight(spatial_dims, size, kernel_size) -> None:
    """The layer is differentiable end to end: float64 gradcheck w.r.t. the input and the filter W."""
    layer, x = _gradcheck_layer(spatial_dims, size, kernel_size)
    assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-6, rtol=1e-4)

    weight = layer.weight.detach().clone().requires_grad_()

    def with_weight(w: Tensor, inp: Tensor) -> Tensor:
        return torch.func.functional_call(layer, {"weight": w}, (inp,))

    assert torch.autograd.gradcheck(with_weight, (weight, x.detach()), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("spatial_dims,size,kernel_size", GRAD_CASES)
def test_ndc_update_gradcheck(spatial_dims, size, kernel_size) -> None:
    """Eq. (7) as implemented by ndc_update: float64 gradcheck and gradgradcheck (its pointwise
    derivatives are written with differentiable operations) w.r.t. X, S0 and V (iterations=2)."""
    torch.manual_seed(5)
    kernel = (kernel_size,) * spatial_dims if isinstance(kernel_size, int) else kernel_size
    x = (torch.rand(1, 2, *size, dtype=torch.float64) + 0.1).requires_grad_()
    s0 = (torch.rand(1, 4, *size, dtype=torch.float64) + 0.1).requires_grad_()
    v = (torch.rand(2, 2, *kernel, dtype=torch.float64) + 0.05).requires_grad_()
    for check in (torch.autograd.gradcheck, torch.autograd.gradgradcheck):
        assert check(lambda a, b, c: ndc_update(a, b, c, 2, 2, 1e-8), (x, s0, v), eps=1e-6, atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------------------------------
# Numerical robustness.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spatial_dims,size", [(2, (6, 7)), (3, (4, 5, 3))])
def test_zero_large_and_nonnegative_inputs(spatial_dims, size) -> None:
    """eps keeps eq. (7) finite for X = 0; large X stays finite; X >= 0 gives a nonnegative output."""
    torch.manual_seed(6)
    layer = NonnegativeDeconvolution(4, spatial_dims, kernel_size=3, ratio=4)
    zero_out = layer(torch.zeros(2, 4, *size))
    assert torch.isfinite(zero_out).all()

    big = 1e4 * torch.rand(2, 4, *size)
    big_out = layer(big)
    assert torch.isfinite(big_out).all()
    assert (big_out >= 0).all()

    x = torch.rand(2, 4, *size)
    x[:, :, 0] = 0.0  # include exact zeros
    out = layer(x)
    assert torch.isfinite(out).all() and (out >= 0).all()
    assert (out > 0).any()


# --------------------------------------------------------------------------------------------------
# Mixed precision.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("spatial_dims,size", [(2, (6, 7)), (3, (4, 5, 3))])
def test_layer_runs_in_float32_under_autocast(dtype, spatial_dims, size) -> None:
    """Under CPU autocast the layer computes in float32 and equals its fp32 output."""
    torch.manual_seed(7)
    layer = NonnegativeDeconvolution(4, spatial_dims, kernel_size=3, ratio=4)
    x = torch.rand(2, 4, *size)
    reference = layer(x)
    with torch.autocast("cpu", dtype=dtype):
        out = layer(x)
        # Inside a network the input comes from an autocast op, i.e. in half precision.
        out_half_input = layer(x.to(dtype))
    assert out.dtype == torch.float32 and out_half_input.dtype == torch.float32
    torch.testing.assert_close(out, reference, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out_half_input, layer(x.to(dtype).float()), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_deconv_mixer_under_autocast_is_finite(dtype) -> None:
    """Eq. (6) under autocast: runs, keeps the input shape and gives finite values (also for zero input)."""
    torch.manual_seed(8)
    mixer = DeconvMixer(8, torch.nn.Conv3d, kernel_size=3, ratio=4)
    x = torch.randn(1, 8, 4, 5, 6)
    with torch.autocast("cpu", dtype=dtype):
        out = mixer(x)
        zero_out = mixer(torch.zeros_like(x))
    assert out.shape == x.shape
    assert torch.isfinite(out).all() and torch.isfinite(zero_out).all()
    torch.testing.assert_close(out.float(), mixer(x), rtol=0.05, atol=0.05)


# --------------------------------------------------------------------------------------------------
# Argument validation.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(channels=4, spatial_dims=2, kernel_size=4), r"odd"),
        (dict(channels=4, spatial_dims=3, kernel_size=(1, 2, 3)), r"odd"),
        (dict(channels=4, spatial_dims=3, kernel_size=(3, 3)), r"kernel_size"),
        (dict(channels=6, spatial_dims=2, groups=4), r"groups \(4\).*divide.*\(6\)"),
        (dict(channels=4, spatial_dims=2, eps=0.0), r"eps"),
        (dict(channels=4, spatial_dims=2, eps=-1e-8), r"eps"),
        (dict(channels=4, spatial_dims=2, ratio=0), r"ratio"),
        (dict(channels=4, spatial_dims=2, iterations=0), r"iterations"),
        (dict(channels=4, spatial_dims=4), r"spatial dimensions"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match) -> None:
    """Invalid NDC hyper-parameters fail at construction with a message naming the culprit."""
    with pytest.raises(ValueError, match=match):
        NonnegativeDeconvolution(**kwargs)
