"""The test-time corruptions of the SUM paper's robustness study (Appendix E): blur, noise, seeds, registry."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from nnunet_deconver.analysis.corruptions import (
    CORRUPTION_NAMES,
    CORRUPTIONS,
    additive_noise,
    corruption_seed,
    gaussian_blur,
    select_corruptions,
)


def random_image(shape: tuple[int, ...] = (2, 6, 20, 24), seed: int = 0) -> np.ndarray:
    """A channel-first float32 image whose two channels have very different intensity ranges."""
    image = np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)
    image[1] = image[1] * 1000 - 200
    return image


def test_registry_names_and_order() -> None:
    assert CORRUPTION_NAMES == ("clean", "blur_sigma1", "blur_sigma2", "noise_5pct", "noise_10pct")
    assert [CORRUPTIONS[name].blur_sigma for name in CORRUPTION_NAMES] == [0, 1, 2, 0, 0]
    assert [CORRUPTIONS[name].noise_fraction for name in CORRUPTION_NAMES] == [0, 0, 0, 0.05, 0.10]


@pytest.mark.parametrize("axes", [(0, 1, 2), (1, 2)], ids=["3d", "in-plane"])
def test_blur_keeps_a_constant_image_and_its_mean(axes) -> None:
    constant = np.full((2, 5, 9, 9), 3.25, dtype=np.float32)
    constant[1] = -7.0
    blurred = gaussian_blur(constant, sigma=2.0, axes=axes)
    np.testing.assert_allclose(blurred, constant, rtol=1e-6)
    np.testing.assert_allclose(blurred.mean(axis=(1, 2, 3)), [3.25, -7.0], rtol=1e-6)


def test_blur_is_scipys_filter_per_channel_with_its_defaults() -> None:
    image = random_image()
    blurred = gaussian_blur(image, sigma=1.0, axes=(0, 1, 2))
    for channel in range(2):
        expected = gaussian_filter(image[channel], sigma=1.0, mode="reflect", truncate=4.0)
        np.testing.assert_allclose(blurred[channel], expected, rtol=1e-5, atol=1e-4)


def test_in_plane_blur_leaves_the_through_plane_axis_untouched() -> None:
    """A 2-D configuration's blur: each slice along the untouched axis is blurred on its own."""
    image = random_image()
    blurred = gaussian_blur(image, sigma=1.0, axes=(1, 2))
    for index in range(image.shape[1]):
        expected = gaussian_filter(image[:, index], sigma=(0, 1.0, 1.0))
        np.testing.assert_array_equal(blurred[:, index], expected)
    # the other through-plane choice (transpose_forward[0] = 2) blurs the other slices
    blurred = gaussian_blur(image, sigma=1.0, axes=(0, 1))
    np.testing.assert_array_equal(blurred[..., 3], gaussian_filter(image[..., 3], sigma=(0, 1.0, 1.0)))


def test_blur_refuses_an_axis_the_image_does_not_have() -> None:
    with pytest.raises(ValueError, match="not spatial axes"):
        gaussian_blur(random_image(), sigma=1.0, axes=(1, 3))


@pytest.mark.parametrize("fraction", [0.05, 0.10])
def test_noise_standard_deviation_is_the_fraction_of_each_channels_range(fraction) -> None:
    """Far from the range's ends clipping never acts, so the added noise shows its standard deviation."""
    image = np.full((2, 40, 50, 50), 50.0, dtype=np.float32)
    image[1] = 5000.0
    image[:, 0, 0, 0] = [0.0, 0.0]
    image[:, 0, 0, 1] = [100.0, 10000.0]
    noise = additive_noise(image, fraction=fraction, rng=np.random.default_rng(1)) - image
    interior = noise[:, 1:]
    np.testing.assert_allclose(interior.std(axis=(1, 2, 3)), [100 * fraction, 10000 * fraction], rtol=0.01)
    np.testing.assert_allclose(interior.mean(axis=(1, 2, 3)), 0, atol=0.01 * 10000 * fraction)


def test_noise_is_clipped_to_each_channels_clean_range() -> None:
    image = random_image()
    noisy = additive_noise(image, fraction=0.10, rng=np.random.default_rng(2))
    np.testing.assert_array_equal(noisy.min(axis=(1, 2, 3)), image.min(axis=(1, 2, 3)))
    np.testing.assert_array_equal(noisy.max(axis=(1, 2, 3)), image.max(axis=(1, 2, 3)))
    assert not np.array_equal(noisy, image)


def test_noise_leaves_a_constant_channel_unchanged() -> None:
    image = random_image()
    image[0] = 4.0
    noisy = additive_noise(image, fraction=0.10, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(noisy[0], image[0])


def test_seeds_are_stable_and_distinguish_cases_and_corruptions() -> None:
    assert corruption_seed(0, "case_001", "noise_10pct") == corruption_seed(0, "case_001", "noise_10pct")
    seeds = {corruption_seed(base, case, name) for base in (0, 1) for case in ("case_001", "case_002")
             for name in ("noise_5pct", "noise_10pct")}
    assert len(seeds) == 8
    # CRC-32 of "0/case_001/noise_10pct": the same number in every process and on every machine, unlike hash()
    assert corruption_seed(0, "case_001", "noise_10pct") == 2924919358


def test_same_seed_same_noise_other_case_other_noise() -> None:
    image = random_image()
    corruption = CORRUPTIONS["noise_5pct"]
    first = corruption.apply(image, blur_axes=(1, 2), seed=corruption_seed(0, "a", corruption.name))
    again = corruption.apply(image, blur_axes=(1, 2), seed=corruption_seed(0, "a", corruption.name))
    other = corruption.apply(image, blur_axes=(1, 2), seed=corruption_seed(0, "b", corruption.name))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_clean_is_an_identity_copy_and_no_corruption_changes_its_input() -> None:
    image = random_image()
    original = image.copy()
    clean = CORRUPTIONS["clean"].apply(image, blur_axes=(0, 1, 2), seed=0)
    np.testing.assert_array_equal(clean, image)
    assert clean.dtype == np.float32 and not np.shares_memory(clean, image)
    for corruption in CORRUPTIONS.values():
        corrupted = corruption.apply(image, blur_axes=(0, 1, 2), seed=5)
        assert corrupted.shape == image.shape and corrupted.dtype == np.float32
        assert not np.shares_memory(corrupted, image)
    np.testing.assert_array_equal(image, original)


def test_integer_images_become_float() -> None:
    image = (random_image()[:1] * 100).astype(np.int16)
    assert CORRUPTIONS["clean"].apply(image, blur_axes=(0, 1, 2), seed=0).dtype == np.float32
    assert CORRUPTIONS["blur_sigma1"].apply(image.astype(np.int32), blur_axes=(0, 1, 2), seed=0).dtype == np.float64


def test_descriptions_name_sigma_and_axes() -> None:
    assert CORRUPTIONS["blur_sigma1"].describe((1, 2)) == "Gaussian blur, sigma 1 voxel on spatial axes (1, 2)"
    assert "sigma 2 voxels" in CORRUPTIONS["blur_sigma2"].describe()
    assert "10 % of each channel's intensity range" in CORRUPTIONS["noise_10pct"].describe()
    assert CORRUPTIONS["clean"].describe() == "no corruption"


def test_select_corruptions_keeps_order_and_refuses_unknown_names() -> None:
    selected = select_corruptions(["noise_10pct", "clean", "noise_10pct"])
    assert [c.name for c in selected] == ["noise_10pct", "clean"]
    with pytest.raises(ValueError, match="Unknown corruption 'blur3'; choose from clean, blur_sigma1"):
        select_corruptions(["clean", "blur3"])
    with pytest.raises(ValueError, match="Unknown corruption"):
        select_corruptions([])
