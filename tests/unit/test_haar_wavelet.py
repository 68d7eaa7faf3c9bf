"""Haar DWT / IDWT on the strided axes (the SUM's down/up-sampling, papers/segmentation-cnns-are-denoising-models.md).

Checks: perfect reconstruction, adjointness and norm preservation (orthonormal), a hand-computed 2x2
block, and PyWavelets ('haar', mode 'periodization') as an oracle, band by band: our band b is the
``pywt.dwtn`` key spelled by b's binary digits over the strided axes (0 -> 'a', 1 -> 'd').
"""

from __future__ import annotations

import math

import pytest
import torch

from nnunet_deconver.layers.haar_wavelet import HaarDWT, HaarIDWT, haar_dwt, haar_idwt

# (strides, spatial size): nnU-Net's stride patterns plus 1-D, each with even sizes on strided axes.
CASES = [
    pytest.param((2,), (10,), id="1d"),
    pytest.param((2, 2), (6, 8), id="2d"),
    pytest.param((1, 2), (5, 8), id="2d-(1,2)"),
    pytest.param((2, 1), (6, 7), id="2d-(2,1)"),
    pytest.param((1, 2, 2), (3, 4, 6), id="3d-(1,2,2)"),
    pytest.param((2, 2, 2), (4, 6, 2), id="3d-(2,2,2)"),
    pytest.param((2, 1, 1), (4, 3, 5), id="3d-(2,1,1)"),
]
BATCH, CHANNELS = 2, 3


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _coarse(spatial: tuple[int, ...], strides: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(n // s for n, s in zip(spatial, strides))


def _pywt_key(band: int, strided_axes: int) -> str:
    return "".join("ad"[int(bit)] for bit in format(band, f"0{strided_axes}b"))


@pytest.mark.parametrize(("strides", "spatial"), CASES)
def test_shapes_and_perfect_reconstruction(strides, spatial) -> None:
    x = _randn(BATCH, CHANNELS, *spatial)
    y = haar_dwt(x, strides)
    assert y.shape == (BATCH, CHANNELS * math.prod(strides), *_coarse(spatial, strides))
    assert torch.allclose(haar_idwt(y, strides), x, rtol=0, atol=1e-12)
    assert torch.allclose(haar_dwt(haar_idwt(y, strides), strides), y, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("strides", "spatial"), CASES)
def test_idwt_is_the_adjoint_and_the_transform_is_orthonormal(strides, spatial) -> None:
    x = _randn(BATCH, CHANNELS, *spatial, seed=1)
    y = _randn(BATCH, CHANNELS * math.prod(strides), *_coarse(spatial, strides), seed=2)
    assert torch.dot(haar_dwt(x, strides).flatten(), y.flatten()).item() == pytest.approx(
        torch.dot(x.flatten(), haar_idwt(y, strides).flatten()).item(), abs=1e-12
    )
    assert torch.linalg.vector_norm(haar_dwt(x, strides)).item() == pytest.approx(
        torch.linalg.vector_norm(x).item(), abs=1e-12
    )


def test_one_2x2_block_by_hand() -> None:
    """Bands (aa, ad, da, dd) of [[a, b], [c, d]], 'd' = first sample minus second along that axis."""
    a, b, c, d = 1.0, 2.0, 4.0, 8.0
    y = haar_dwt(torch.tensor([[[[a, b], [c, d]]]], dtype=torch.float64), (2, 2)).flatten().tolist()
    assert y == pytest.approx([(a + b + c + d) / 2, (a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2])


@pytest.mark.parametrize(("strides", "spatial"), CASES)
def test_bands_equal_pywavelets_dwtn(strides, spatial) -> None:
    pywt = pytest.importorskip("pywt", reason="the oracle is PyWavelets: pip install -e '.[test]'")
    x = _randn(BATCH, CHANNELS, *spatial, seed=3)
    strided_axes = tuple(2 + i for i, s in enumerate(strides) if s == 2)
    expected = pywt.dwtn(x.numpy(), "haar", mode="periodization", axes=strided_axes)
    bands = haar_dwt(x, strides).reshape(BATCH, 2 ** len(strided_axes), CHANNELS, *_coarse(spatial, strides))
    for band in range(bands.shape[1]):
        reference = torch.from_numpy(expected[_pywt_key(band, len(strided_axes))])
        assert torch.allclose(bands[:, band], reference, rtol=0, atol=1e-12)


def test_2d_bands_equal_pywavelets_dwt2_as_documented() -> None:
    """Our bands (0, 1, 2, 3) are pywt.dwt2's (cA, cV, cH, cD)."""
    pywt = pytest.importorskip("pywt", reason="the oracle is PyWavelets: pip install -e '.[test]'")
    x = _randn(1, 1, 6, 4, seed=4)
    c_a, (c_h, c_v, c_d) = pywt.dwt2(x[0, 0].numpy(), "haar", mode="periodization")
    bands = haar_dwt(x, (2, 2))[0]
    for band, reference in enumerate((c_a, c_v, c_h, c_d)):
        assert torch.allclose(bands[band], torch.from_numpy(reference), rtol=0, atol=1e-12)


def test_low_band_comes_first_and_carries_the_mean() -> None:
    """A constant image has only a low band, in the first C channels (what the SUM passes down)."""
    for strides in ((2, 2), (1, 2, 2), (2, 2, 2)):
        y = haar_dwt(torch.ones(1, CHANNELS, *(4,) * len(strides)), strides)
        low, high = y.split([CHANNELS, y.shape[1] - CHANNELS], dim=1)
        assert torch.allclose(low, torch.full_like(low, math.sqrt(math.prod(strides))))
        assert torch.equal(high, torch.zeros_like(high))


def test_modules_have_no_state_and_match_the_functions() -> None:
    dwt, idwt = HaarDWT((1, 2, 2)), HaarIDWT((1, 2, 2))
    assert not list(dwt.parameters()) and not list(dwt.buffers()) and not dwt.state_dict()
    assert not list(idwt.parameters()) and not list(idwt.buffers()) and not idwt.state_dict()
    x = _randn(1, 2, 3, 4, 4)
    assert torch.equal(dwt(x), haar_dwt(x, (1, 2, 2)))
    assert torch.equal(idwt(dwt(x)), haar_idwt(haar_dwt(x, (1, 2, 2)), (1, 2, 2)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_keeps_its_dtype(dtype: torch.dtype) -> None:
    x = torch.randn(1, 2, 4, 4).to(dtype)
    y = haar_dwt(x, (2, 2))
    assert y.dtype == dtype and haar_idwt(y, (2, 2)).dtype == dtype
    assert torch.allclose(haar_idwt(y, (2, 2)).float(), x.float(), atol=0.05)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: haar_dwt(torch.zeros(1, 1, 4, 7), (2, 2)), "even size on spatial axis 1 .* got 7; crop or pad"),
        (lambda: haar_dwt(torch.zeros(1, 1, 4, 4), (3, 1)), "strides 1 or 2, got 3 on spatial axis 0"),
        (lambda: haar_dwt(torch.zeros(1, 1, 4, 4), (2, 2, 2)), "3 strides for 2 spatial axes"),
        (lambda: haar_idwt(torch.zeros(1, 6, 2, 2), (2, 2)), "multiple of 4 channels"),
        (lambda: HaarDWT((2, 4)), "strides 1 or 2, got 4 on spatial axis 1"),
    ],
    ids=["odd-size", "stride-3", "stride-count", "idwt-channels", "module-stride"],
)
def test_bad_input_gets_a_one_line_error(call, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        call()
    assert "\n" not in str(error.value)

