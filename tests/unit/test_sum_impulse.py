"""The exact impulse response of a real SUMNet's encoder-decoder (paper Appendix B, eq. 22-24).

At alpha = 0 every shrinkage is the identity, so the ED is linear whatever its thresholds (eq. 15); at
alpha = 1 with nonzero thresholds it is not. With identity (Dirac) filters, no skip convolution and zero
thresholds the ED is the Haar analysis followed by its synthesis, the identity: its response is the
unit delta itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from nnunet_deconver.analysis.impulse import impulse_response, receptive_field, total_strides
from nnunet_deconver.analysis.linear_response import sum_channels, sum_impulse_response, sum_receptive_field
from nnunet_deconver.analysis.response_metrics import response_metrics
from nnunet_deconver.architectures.sum_network import SUMNet
from nnunet_deconver.layers.shrinkage import SoftShrinkage, shrinkage_modules, shrinkage_scale

TOPOLOGIES = {
    2: dict(conv_op=nn.Conv2d, kernel_sizes=3, strides=[1, 2, 2]),
    3: dict(conv_op=nn.Conv3d, kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]],
            strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]]),  # nnU-Net's anisotropic 3-D layout
}


def _sum(spatial_dims: int, features=(4, 8, 16), input_channels: int = 1, **options) -> SUMNet:
    """A float64 SUM on a 3-stage topology with thresholds of both signs (trained SUMs have 40-55 % negative)."""
    torch.manual_seed(0)
    network = SUMNet(input_channels, 3, list(features), num_classes=2, **TOPOLOGIES[spatial_dims], **options).double()
    with torch.no_grad():
        for shrinkage in shrinkage_modules(network):
            shrinkage.threshold.normal_(std=0.5)
    return network


def _random(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_the_ed_is_linear_at_alpha_0_and_not_at_alpha_1(spatial_dims) -> None:
    network = _sum(spatial_dims)
    shape = (1, 1, 16, 16) if spatial_dims == 2 else (1, 1, 4, 8, 8)
    x, y = _random(shape, 1), _random(shape, 2)
    with torch.no_grad(), shrinkage_scale(network, 0.0):
        torch.testing.assert_close(network.encoder_decoder(2.5 * x - 0.75 * y),
                                   2.5 * network.encoder_decoder(x) - 0.75 * network.encoder_decoder(y),
                                   rtol=0, atol=1e-12)
    with torch.no_grad(), shrinkage_scale(network, 1.0):
        combined = network.encoder_decoder(2.5 * x - 0.75 * y)
        superposed = 2.5 * network.encoder_decoder(x) - 0.75 * network.encoder_decoder(y)
    assert (combined - superposed).abs().max() > 1e-3 * combined.abs().max()


def _haar_round_trip(spatial_dims: int) -> SUMNet:
    """A SUM of width 1 (the input's) whose filters are the identity, without the skip convolution: its ED is
    IDWT(DWT(x)) at every level, zero thresholds."""
    network = SUMNet(1, 3, [1, 1, 1], num_classes=2, **TOPOLOGIES[spatial_dims]).double()
    with torch.no_grad():
        for name, conv in network.named_modules():
            if isinstance(conv, _ConvNd) and not name.startswith("output_layer"):
                conv.weight.zero_() if "conv_skip" in name else nn.init.dirac_(conv.weight)
    return network


@pytest.mark.parametrize(("spatial_dims", "size"), [(2, (16, 12)), (3, (5, 8, 9))])
def test_identity_filters_respond_with_the_delta_itself(spatial_dims, size) -> None:
    network = _haar_round_trip(spatial_dims)
    x = _random((1, 1, *(4 * n for n in network.size_divisor)), 3)
    with torch.no_grad(), shrinkage_scale(network, 0.0):
        torch.testing.assert_close(network.encoder_decoder(x), x, rtol=0, atol=1e-13)
    result = sum_impulse_response(network, size=size)
    delta = torch.zeros(size, dtype=torch.float64)
    delta[tuple(n // 2 for n in size)] = 1
    torch.testing.assert_close(result.response, delta, rtol=0, atol=1e-13)
    assert result.delta_position == tuple(n // 2 for n in size)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_the_receptive_field_keeps_the_border_away(spatial_dims) -> None:
    """impulse_response checks that nothing reaches beyond the radius; a wider zero margin around the delta
    (two more stride periods on each side) changes nothing."""
    network = _sum(spatial_dims)
    radius = sum_receptive_field(network)
    assert radius == receptive_field(network.kernel_sizes, network.strides)
    size = (7,) * spatial_dims
    with shrinkage_scale(network, 0.0):
        wider = impulse_response(network.encoder_decoder, size=size, strides=network.strides, dtype=torch.float64,
                                 radius=[r + 2 * p for r, p in zip(radius, total_strides(network.strides))])
    torch.testing.assert_close(sum_impulse_response(network, size=size).response, wider, rtol=0, atol=1e-14)


def test_the_3d_response_has_finite_metrics() -> None:
    network = _sum(3)
    result = sum_impulse_response(network, size=(9, 12, 12))
    assert result.response.shape == (9, 12, 12) and result.response.abs().max() > 0
    metrics = response_metrics(result.response, delta_position=result.delta_position)
    assert all(np.isfinite([metrics.sds, metrics.fds, metrics.fdv]))
    assert metrics.sds > 0


def test_the_delta_goes_into_one_input_channel_and_one_ed_channel_is_read() -> None:
    network = _sum(2, input_channels=2)
    assert sum_channels(network) == (2, 2)
    result = sum_impulse_response(network, size=(12, 12), input_channel=1, output_channel=0)

    def second_to_first(x: torch.Tensor) -> torch.Tensor:
        return network.encoder_decoder(torch.cat((torch.zeros_like(x), x), dim=1))[:, :1]

    with shrinkage_scale(network, 0.0):
        expected = impulse_response(second_to_first, size=(12, 12), strides=network.strides,
                                    radius=sum_receptive_field(network), dtype=torch.float64)
    torch.testing.assert_close(result.response, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no input channel 2"):
        sum_impulse_response(network, size=(12, 12), input_channel=2)
    with pytest.raises(ValueError, match="no ED output channel 2"):
        sum_impulse_response(network, size=(12, 12), output_channel=2)


def test_an_ed_with_one_map_per_class_and_alpha_restored() -> None:
    network = _sum(2, ed_channels="classes")
    assert sum_channels(network) == (1, 2)
    sum_impulse_response(network, size=(8, 8), output_channel=1)
    assert {module.alpha for module in network.modules() if isinstance(module, SoftShrinkage)} == {1.0}
