"""The impulse protocol (paper Appendix B; sum-facts.md) and the receptive field, on operators with known responses.

The strided operators are written here with plain reshapes: the orthonormal Haar low band of a block
is its sum over sqrt(block size), its synthesis (the adjoint) spreads a coarse sample back over the
block with the same factor, so a low-band down-up round trip is the mean over each stride block.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnunet_deconver.analysis.impulse import (
    impulse_response,
    log_magnitude_spectrum,
    receptive_field,
    total_strides,
)

STRIDES = {2: [[1, 1], [2, 2]], 3: [[1, 1, 1], [1, 2, 2], [2, 2, 2]]}


def convolve(x: torch.Tensor, kernel: torch.Tensor, padding_mode: str = "constant") -> torch.Tensor:
    """torch's 'same' convolution (a cross-correlation) of a (1, 1, *spatial) tensor, odd kernels."""
    pads = [p for k in reversed(kernel.shape) for p in (k // 2, k // 2)]
    conv = getattr(F, f"conv{kernel.ndim}d")
    return conv(F.pad(x, pads, mode=padding_mode), kernel[None, None])


def haar_low_down(x: torch.Tensor, stride: tuple[int, ...]) -> torch.Tensor:
    """Orthonormal Haar low band over ``stride`` blocks: the block's sum / sqrt(block size)."""
    lead, spatial = x.shape[:2], x.shape[2:]
    blocks = x.reshape(*lead, *(d for n, s in zip(spatial, stride) for d in (n // s, s)))
    return blocks.sum(dim=tuple(range(3, blocks.ndim, 2))) / math.sqrt(math.prod(stride))


def haar_low_up(low: torch.Tensor, stride: tuple[int, ...]) -> torch.Tensor:
    """The adjoint of :func:`haar_low_down`: each coarse sample over its block, / sqrt(block size)."""
    lead, spatial = low.shape[:2], low.shape[2:]
    spread = low.reshape(*lead, *(d for n in spatial for d in (n, 1)))
    spread = spread.expand(*lead, *(d for n, s in zip(spatial, stride) for d in (n, s)))
    return spread.reshape(*lead, *(n * s for n, s in zip(spatial, stride))) / math.sqrt(math.prod(stride))


def delta_at(size: tuple[int, ...], position: tuple[int, ...]) -> torch.Tensor:
    delta = torch.zeros(size, dtype=torch.float64)
    delta[position] = 1
    return delta


@pytest.mark.parametrize("size", [(16, 12), (9, 10, 7)], ids=["2d", "3d"])
def test_identity_gives_the_delta_at_the_crops_centre(size) -> None:
    response = impulse_response(lambda x: x, size=size, strides=[1], radius=0, dtype=torch.float64)
    assert torch.equal(response, delta_at(size, tuple(n // 2 for n in size)))


@pytest.mark.parametrize("kernel_shape", [(3, 5), (5, 3, 7)], ids=["2d", "3d"])
@pytest.mark.parametrize("padding_mode", ["constant", "replicate"])
def test_convolution_gives_its_kernel_flipped_about_the_delta(kernel_shape, padding_mode) -> None:
    """torch convolves by cross-correlation: out[g + d] = w[c - d], the kernel flipped about its centre c."""
    kernel = torch.randn(kernel_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    size = (12,) * len(kernel_shape)
    response = impulse_response(lambda x: convolve(x, kernel, padding_mode), size=size,
                                strides=STRIDES[len(size)], radius=max(kernel_shape) // 2, dtype=torch.float64)
    expected = torch.zeros(size, dtype=torch.float64)
    expected[tuple(slice(n // 2 - k // 2, n // 2 + k // 2 + 1) for n, k in zip(size, kernel_shape))] = kernel.flip(
        tuple(range(kernel.ndim)))
    assert torch.equal(response, expected)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_haar_low_band_round_trip_spreads_the_delta_over_the_block_it_ends(spatial_dims) -> None:
    """Phase P - 1: the delta is the last sample of its P-block, which is crop [N//2 - P + 1, N//2]."""
    strides = STRIDES[spatial_dims]
    steps = [tuple(s) for s in strides]

    def round_trip(x: torch.Tensor) -> torch.Tensor:
        for step in steps:
            x = haar_low_down(x, step)
        for step in reversed(steps):
            x = haar_low_up(x, step)
        return x

    period = total_strides(strides)
    size = (12,) * spatial_dims
    response = impulse_response(round_trip, size=size, strides=strides, radius=max(period) - 1, dtype=torch.float64)
    expected = torch.zeros(size, dtype=torch.float64)
    expected[tuple(slice(n // 2 - p + 1, n // 2 + 1) for n, p in zip(size, period))] = 1 / math.prod(period)
    torch.testing.assert_close(response, expected, rtol=1e-12, atol=1e-15)


def test_convolution_between_haar_down_and_up_acts_on_the_deltas_block() -> None:
    """Crop sample u lies in block b = (u - (N//2 - P + 1)) // P relative to the delta's; the coarse
    convolution puts its flipped kernel c at blocks -1..1, so r[u] = c[1 - b] / P^2 (2-D, P = 2)."""
    coarse = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    step = (2, 2)
    response = impulse_response(lambda x: haar_low_up(convolve(haar_low_down(x, step), coarse), step),
                                size=(10, 10), strides=[1, 2], radius=3, dtype=torch.float64)
    block = (np.arange(10) - (5 - 2 + 1)) // 2
    expected = np.zeros((10, 10))
    for u, v in itertools.product(range(10), repeat=2):
        if abs(block[u]) <= 1 and abs(block[v]) <= 1:
            expected[u, v] = coarse[1 - block[u], 1 - block[v]] / 4
    np.testing.assert_allclose(response.numpy(), expected, rtol=1e-12, atol=1e-15)


def linear_unet(kernel_sizes, strides, *, convs: int, decoder_convs: int):
    """The topology receptive_field describes, every weight positive (no cancellation, so the support
    of a response is the set of outputs that depend on the delta): Haar low band down and up, additive
    skips, all-ones kernels."""
    ones = [torch.ones(k, dtype=torch.float64) for k in kernel_sizes]

    def stage_convs(x: torch.Tensor, s: int, count: int) -> torch.Tensor:
        for _ in range(count):
            x = convolve(x, ones[s])
        return x

    def network(x: torch.Tensor) -> torch.Tensor:
        skips = []
        for s, step in enumerate(strides):
            x = stage_convs(haar_low_down(x, tuple(step)), s, convs)
            skips.append(x)
        for s in reversed(range(len(strides) - 1)):
            x = stage_convs(haar_low_up(x, tuple(strides[s + 1])) + skips[s], s, decoder_convs)
        return x

    return network


def brute_force_radius(network, kernel_sizes, strides) -> tuple[int, ...]:
    """The largest one-sided offset of a nonzero output from its delta, over every phase of the delta."""
    period = np.array(total_strides(strides))
    jumps = np.cumprod(np.array(strides), axis=0)
    bound = (2 * (np.array(kernel_sizes) - 1) * jumps).sum(axis=0) + 2 * period  # generous; checked below
    base = -(-bound // period) * period
    radius = np.zeros(len(period), dtype=int)
    for phase in itertools.product(*(range(p) for p in period)):
        x = torch.zeros((1, 1, *(2 * base + period).tolist()), dtype=torch.float64)
        x[(0, 0, *(base + phase).tolist())] = 1
        offsets = np.argwhere(network(x)[0, 0].numpy() > 0) - (base + phase)
        radius = np.maximum(radius, np.abs(offsets).max(axis=0))
    assert np.all(radius < base), "the support reached the input's border: enlarge the bound"
    return tuple(radius.tolist())


TOPOLOGIES = [
    pytest.param([[3]] * 5, [[1], [2], [2], [2], [2]], 2, 2, id="sum-depth4-3x3"),
    pytest.param([[5], [3], [3]], [[1], [3], [2]], 1, 3, id="1d-stride3-k5"),
    pytest.param([[3, 3], [3, 5], [1, 3]], [[1, 1], [2, 1], [2, 2]], 2, 2, id="2d-anisotropic"),
    pytest.param([[1, 3, 3], [3, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2], [2, 2, 2]], 2, 1, id="3d-nnunet-like"),
]


@pytest.mark.parametrize("kernel_sizes, strides, convs, decoder_convs", TOPOLOGIES)
def test_receptive_field_is_the_support_of_a_linear_unets_impulse_response(
    kernel_sizes, strides, convs, decoder_convs
) -> None:
    network = linear_unet(kernel_sizes, strides, convs=convs, decoder_convs=decoder_convs)
    radius = receptive_field(kernel_sizes, strides, convs_per_stage=convs, convs_per_decoder_stage=decoder_convs)
    assert radius == brute_force_radius(network, kernel_sizes, strides)
    size = (8,) * len(radius)
    response = impulse_response(network, size=size, strides=strides, radius=radius, dtype=torch.float64)
    padded_more = impulse_response(network, size=size, strides=strides, radius=[r + 5 for r in radius],
                                   dtype=torch.float64)
    assert torch.equal(response, padded_more)


def test_receptive_field_of_the_papers_sum() -> None:
    """Depth 4, 3 x 3, two convs per stage: 2 (1+2+4+8+16) + 2 (1+2+4+8) + 16 - 1 = 107 per side."""
    assert receptive_field([[3, 3]] * 5, [[1, 1]] + [[2, 2]] * 4) == (107, 107)
    assert receptive_field([3] * 5, [1, 2, 2, 2, 2]) == (107,)


def test_receptive_field_broadcasts_ints_over_the_axes() -> None:
    """Axis 0: 4 convs at J = 1, 2 at J = 2, P - 1 = 1; axis 1: 4 convs at J = 1, 2 at J = 1, P - 1 = 0."""
    assert receptive_field([3, [3, 3]], [1, [2, 1]]) == (4 + 4 + 1, 4 + 2 + 0)


@pytest.mark.parametrize("kernel_sizes, strides, message", [
    ([3, 4], [1, 2], "odd"),
    ([3, 3], [2, 2], "first stage"),
    ([3, 3, 3], [1, 2], "per stage"),
    ([[3, 3], [3, 3, 3]], [1, 2], "number of axes"),
])
def test_receptive_field_rejects_impossible_topologies(kernel_sizes, strides, message) -> None:
    with pytest.raises(ValueError, match=message):
        receptive_field(kernel_sizes, strides)


def test_impulse_response_names_a_wrong_output_shape_or_a_too_small_radius() -> None:
    with pytest.raises(ValueError, match="shape of its input"):
        impulse_response(lambda x: x[:, :, 1:], size=(8, 8), strides=[1], radius=1)
    kernel = torch.ones(5, 5)
    with pytest.raises(ValueError, match="receptive field"):
        impulse_response(lambda x: convolve(x, kernel), size=(8, 8), strides=[1], radius=1)


def test_log_magnitude_spectrum_is_in_decibels_with_a_floor() -> None:
    size = (8, 6)
    delta = delta_at(size, (4, 3))
    np.testing.assert_allclose(log_magnitude_spectrum(delta), np.zeros(size), atol=1e-12)
    np.testing.assert_allclose(log_magnitude_spectrum(3 * delta), np.full(size, 20 * np.log10(3)), rtol=1e-12)
    np.testing.assert_array_equal(log_magnitude_spectrum(torch.zeros(size), floor_db=-80.0), np.full(size, -80.0))
