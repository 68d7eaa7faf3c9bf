"""SDS, FDS, FDV (paper Appendix C, eq. 25-29) with the conventions of sum-facts.md, in 2-D and 3-D.

A bare delta has a flat unit spectrum, so its FDS is the mean distance of the N^d grid to the DC bin
N // 2. For large N that is N times the mean distance of a unit square / cube to its centre:
(sqrt 2 + ln(1 + sqrt 2)) / 6 = 0.38260 and (sqrt 3 / 4 + ln(2 + sqrt 3) / 2 - pi / 24) / 2 = 0.48030,
i.e. 48.97 (the paper's Fig. 3) and 61.48 for N = 128; the grid differs from the continuum by O(1/N).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnunet_deconver.analysis.response_metrics import (
    frequency_domain_spread,
    frequency_domain_variation,
    magnitude_spectrum,
    response_metrics,
    sobel_gradient_magnitude,
    spatial_domain_spread,
)

MEAN_DISTANCE_TO_CENTRE = {
    2: (math.sqrt(2) + math.log(1 + math.sqrt(2))) / 6,
    3: (math.sqrt(3) / 4 + math.log(2 + math.sqrt(3)) / 2 - math.pi / 24) / 2,
}


def centred_delta(shape: tuple[int, ...]) -> np.ndarray:
    delta = np.zeros(shape)
    delta[tuple(n // 2 for n in shape)] = 1
    return delta


@pytest.mark.parametrize("spatial_dims, published_fds", [(2, 48.97), (3, 61.48)], ids=["2d", "3d"])
def test_bare_delta_reference_values(spatial_dims, published_fds) -> None:
    metrics = response_metrics(centred_delta((128,) * spatial_dims))
    assert metrics.sds == 0
    assert round(metrics.fds, 2) == published_fds
    assert metrics.fds == pytest.approx(128 * MEAN_DISTANCE_TO_CENTRE[spatial_dims], abs=5e-3)
    assert metrics.fdv == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("shape", [(8, 6), (7, 5), (4, 5, 6)])
def test_spectrum_is_fftshifted_with_dc_at_n_over_2(shape) -> None:
    spectrum = magnitude_spectrum(np.ones(shape))
    expected = np.zeros(shape)
    expected[tuple(n // 2 for n in shape)] = math.prod(shape)
    np.testing.assert_allclose(spectrum, expected, atol=1e-9)
    off_centre = np.zeros(shape)
    off_centre[(1,) * len(shape)] = -2
    np.testing.assert_allclose(magnitude_spectrum(off_centre), np.full(shape, 2.0))


def test_sds_weighs_distances_to_the_delta_with_absolute_values() -> None:
    response = np.zeros((16, 16))
    response[5 + 3, 6 + 4] = 1  # distance 5
    response[5, 6 - 2] = -1  # distance 2: |r| counts, a signed weight would cancel it
    assert spatial_domain_spread(response, delta_position=(5, 6)) == pytest.approx(3.5)
    centred = np.roll(response, (8 - 5, 8 - 6), axis=(0, 1))
    assert spatial_domain_spread(centred) == pytest.approx(3.5)  # default: the delta at N // 2
    volume = np.zeros((9, 10, 11))
    volume[4, 5, 5], volume[4 + 1, 5 + 2, 5 + 2] = 3, 1  # distances 0 and 3
    assert spatial_domain_spread(torch.from_numpy(volume)) == pytest.approx(0.75)


def test_fds_weighs_distances_to_dc() -> None:
    spectrum = np.zeros((32, 32))
    spectrum[16, 16], spectrum[16 + 3, 16 - 4] = 2, 2
    assert frequency_domain_spread(spectrum) == pytest.approx(2.5)
    spectrum = np.zeros((8, 9, 14))
    spectrum[4, 4, 7], spectrum[4 + 2, 4 + 3, 7 + 6] = 1, 3  # distances 0 and 7
    assert frequency_domain_spread(spectrum) == pytest.approx(0.75 * 7)


@pytest.mark.parametrize("shape", [(128, 128), (5, 6), (7, 8, 9)])
@pytest.mark.parametrize("value", [1.0, 0.3])
def test_fdv_of_a_constant_spectrum_is_zero(shape, value) -> None:
    assert frequency_domain_variation(np.full(shape, value)) == 0


@pytest.mark.parametrize("axis", [0, 1])
def test_fdv_of_a_ramp_uses_unnormalised_sobel_on_the_valid_part(axis) -> None:
    """f = index along ``axis``: each Sobel derivative there is 2 (difference) x 4 (smoothing) = 8,
    over the (H - 2)(W - 2) valid samples."""
    shape = (9, 12)
    f = np.indices(shape)[axis].astype(float)
    expected = 8 * (shape[0] - 2) * (shape[1] - 2) / np.linalg.norm(f)
    assert frequency_domain_variation(f) == pytest.approx(expected, rel=1e-12)


def test_fdv_combines_the_axes_isotropically() -> None:
    """f = h + 2 v: D_h = 8, D_v = 16, |grad| = sqrt(8^2 + 16^2) (eq. 26), in 3-D with the 4 x 4 smoothing."""
    h, v = np.indices((6, 7)).astype(float)
    assert frequency_domain_variation(h + 2 * v) == pytest.approx(math.sqrt(320) * 4 * 5 / np.linalg.norm(h + 2 * v))
    d, h, v = np.indices((5, 6, 7)).astype(float)
    f = d + 2 * v
    expected = math.sqrt(32**2 + 64**2) * 3 * 4 * 5 / np.linalg.norm(f)
    assert frequency_domain_variation(torch.from_numpy(f)) == pytest.approx(expected, rel=1e-12)


def test_sobel_gradient_matches_a_valid_convolution_with_the_true_sobel_kernels() -> None:
    """Oracle: torch's conv2d (no padding = 'valid') with the kernels of sum-facts.md."""
    f = np.random.default_rng(0).random((11, 13))
    kernels = torch.tensor([[[[1, 2, 1], [0, 0, 0], [-1, -2, -1]]], [[[1, 0, -1], [2, 0, -2], [1, 0, -1]]]],
                           dtype=torch.float64)
    d = F.conv2d(torch.from_numpy(f)[None, None], kernels.flip((-2, -1)))[0]
    np.testing.assert_allclose(sobel_gradient_magnitude(f), torch.sqrt((d**2).sum(0)).numpy(), rtol=1e-12)
    assert frequency_domain_variation(f) == pytest.approx(
        torch.sqrt((d**2).sum(0)).sum().item() / np.linalg.norm(f), rel=1e-12)


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="3 samples"):
        frequency_domain_variation(np.ones((2, 8)))
    with pytest.raises(ValueError, match="coordinates"):
        spatial_domain_spread(np.ones((4, 4)), delta_position=(1, 1, 1))
