"""The linearised response r = J(x0) delta (nnunet_deconver.analysis.linear_response) against exact references.

A network without nonlinearity is its own linearisation: r is its impulse response (paper Appendix B,
eq. 24), whatever x0. A ReLU network's r changes with x0. In float64, r is the column of the full
Jacobian (reverse mode) at the delta, and a central difference; the fallback for layers without a
forward-mode rule (the central difference) gives it too, where the double-backward product would not.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from nnunet_deconver.analysis.impulse import impulse_response
from nnunet_deconver.analysis.linear_response import (
    CENTRAL_DIFFERENCE,
    FORWARD_MODE,
    crop_around,
    delta_index,
    jacobian_vector_product,
    linearised_response,
)

STRIDES = [[1, 1], [2, 2]]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class DownUp(nn.Module):
    """conv, 2 x 2 mean pooling, nearest upsampling, conv: linear, bias-free, shift-variant (period 2)."""

    def __init__(self, channels: int = 1, outputs: int = 1, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.first = nn.Conv2d(channels, 3, 3, padding=1, bias=False)
        self.last = nn.Conv2d(3, outputs, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.last(F.interpolate(F.avg_pool2d(self.first(x), 2), scale_factor=2))


def _relu_network(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(4, 2, 3, padding=1)).double()


def test_the_linearisation_of_a_linear_network_is_its_impulse_response() -> None:
    network = DownUp().double()
    x0 = torch.randn(1, 1, 32, 32, dtype=torch.float64, generator=_generator(1))
    linear = linearised_response(network, x0, input_channel=0, output_channel=0, strides=STRIDES, size=(11, 11))
    assert linear.method == FORWARD_MODE
    assert linear.delta_position == (5, 5)
    exact = impulse_response(network, size=(11, 11), strides=STRIDES, radius=6, dtype=torch.float64)
    torch.testing.assert_close(linear.response, exact, rtol=0, atol=1e-14)


def test_channels_pick_the_delta_input_and_the_response_output() -> None:
    network = DownUp(channels=2, outputs=3).double()
    x0 = torch.zeros(1, 2, 16, 16, dtype=torch.float64)
    linear = linearised_response(network, x0, input_channel=1, output_channel=2, strides=STRIDES, size=(16, 16))
    delta = torch.zeros_like(x0)
    delta[0, 1, 7, 7] = 1  # phase 1 (mod 2) nearest the centre 8
    torch.testing.assert_close(linear.response, network(delta)[0, 2].detach(), rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="no input channel 2"):
        linearised_response(network, x0, input_channel=2, output_channel=0, strides=STRIDES, size=(4, 4))
    with pytest.raises(ValueError, match="no output channel 3"):
        linearised_response(network, x0, input_channel=0, output_channel=3, strides=STRIDES, size=(4, 4))


def test_a_relu_networks_linearisation_depends_on_x0() -> None:
    network = _relu_network()
    responses = [linearised_response(network, torch.randn(1, 1, 16, 16, dtype=torch.float64, generator=_generator(s)),
                                     input_channel=0, output_channel=1, strides=STRIDES, size=(9, 9)).response
                 for s in (1, 2)]
    assert (responses[0] - responses[1]).abs().max() > 1e-3


def test_the_product_is_the_jacobians_column_and_a_central_difference() -> None:
    network = _relu_network()
    x0 = torch.randn(1, 1, 8, 8, dtype=torch.float64, generator=_generator(3))
    linear = linearised_response(network, x0, input_channel=0, output_channel=1, strides=STRIDES, size=(8, 8))
    jacobian = torch.autograd.functional.jacobian(lambda x: network(x)[0, 1], x0)  # (8, 8, 1, 1, 8, 8), reverse mode
    torch.testing.assert_close(linear.response, jacobian[..., 0, 0, 3, 3], rtol=0, atol=1e-13)
    delta = torch.zeros_like(x0)
    delta[0, 0, 3, 3] = 1
    with torch.no_grad():
        difference = (network(x0 + 1e-6 * delta) - network(x0 - 1e-6 * delta))[0, 1] / 2e-6
    torch.testing.assert_close(linear.response, difference, rtol=0, atol=1e-8)


class _NoForwardMode(torch.autograd.Function):
    """x * |x| with setup_context and a backward written in differentiable operations, but no jvp: forward
    mode fails (NotImplementedError)."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x * x.abs()

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor], output: Tensor) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * 2 * x.abs()


class _OnceDifferentiable(torch.autograd.Function):
    """The same in the old style (forward takes ctx: functorch refuses it, a RuntimeError), with a backward
    that cannot be differentiated again."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x * x.abs()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * 2 * x.abs()


@pytest.mark.parametrize("function", [_NoForwardMode, _OnceDifferentiable])
def test_layers_without_forward_mode_fall_back_to_the_central_difference(function) -> None:
    x0 = torch.randn(1, 1, 6, 6, dtype=torch.float64, generator=_generator(4))
    tangent = torch.randn(1, 1, 6, 6, dtype=torch.float64, generator=_generator(5))
    product, used = jacobian_vector_product(function.apply, x0, tangent)
    assert used == CENTRAL_DIFFERENCE
    torch.testing.assert_close(product, 2 * x0.abs() * tangent, rtol=0, atol=1e-8)


class _DetachedBackward(_NoForwardMode):
    """x * |x| + x whose backward is computed outside autograd (as a custom op without a double backward is):
    the double-backward product loses its x * |x| part silently, strict mode or not."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x * x.abs()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return (grad * 2 * x.abs()).detach()


def test_the_double_backward_product_would_be_wrong_where_the_difference_is_right() -> None:
    def network(x: Tensor) -> Tensor:
        return _DetachedBackward.apply(x) + x

    x0 = torch.randn(1, 1, 6, 6, dtype=torch.float64, generator=_generator(6))
    tangent = torch.randn(1, 1, 6, 6, dtype=torch.float64, generator=_generator(7))
    exact = (2 * x0.abs() + 1) * tangent
    double_backward = torch.autograd.functional.jvp(network, x0, tangent, strict=True)[1]
    assert (double_backward - exact).abs().max() > 0.1
    torch.testing.assert_close(jacobian_vector_product(network, x0, tangent)[0], exact, rtol=0, atol=1e-8)


@pytest.mark.parametrize(("patch", "strides", "expected"), [
    ((32, 32), STRIDES, (15, 15)),  # 15 and 17 are both 1 from the centre 16: the lower one
    ((64, 48), [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]], (31, 31)),  # P = 16: 1 below the centre 32, 7 above 24
    ((16, 8), [[1, 1], [2, 2], [2, 2], [2, 2], [2, 1]], (15, 7)),  # a patch of one period: its last sample
])
def test_the_delta_takes_the_protocols_phase_nearest_the_centre(patch, strides, expected) -> None:
    assert delta_index(patch, strides) == expected


def test_a_patch_shorter_than_the_stride_period_is_refused() -> None:
    with pytest.raises(ValueError, match="must be a multiple"):
        delta_index((4, 8), [[1, 1], [2, 2], [2, 2], [2, 2]])


def test_the_crop_centres_the_delta_unless_the_patch_ends() -> None:
    assert crop_around((15, 15), (32, 32), (9, 32)) == (slice(11, 20), slice(0, 32))
    response = linearised_response(DownUp().double(), torch.zeros(1, 1, 16, 16, dtype=torch.float64), input_channel=0,
                                   output_channel=0, strides=STRIDES, size=(16, 5))
    assert response.response.shape == (16, 5) and response.delta_position == (7, 2)
    with pytest.raises(ValueError, match="must fit the network's patch"):
        linearised_response(DownUp().double(), torch.zeros(1, 1, 16, 16, dtype=torch.float64), input_channel=0,
                            output_channel=0, strides=STRIDES, size=(17, 5))
