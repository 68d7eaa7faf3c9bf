"""Test-time image corruptions of the SUM paper's robustness study (Table 2), for any nnU-Net image.

Paper: ``../shared/papers/segmentation-cnns-are-denoising-models.md``, Appendix E: the test images are
corrupted with Gaussian blur (sigma_blur = 1) or additive Gaussian noise (sigma_noise = 10 % of the image's
dynamic range); the authors' code (``../shared/sum-facts.md``, "Robustness protocol") applies both to the raw
intensities before any scaling, blurs with ``scipy.ndimage.gaussian_filter``'s defaults (mode 'reflect',
truncate 4.0) and clips the noisy image back to the range. This module adds sigma = 2 voxels and 5 % noise.

Conventions, for images as nnU-Net's readers return them, channel first ``(C, *spatial)``:

* every channel is corrupted on its own; the channel axis is never blurred;
* blur: sigma in voxels on the spatial axes given (``blur_axes``, 0 = the first spatial axis), 0 on the
  others, which stay exactly untouched;
* noise: ``N(0, (fraction * (max_c - min_c))^2)`` added to channel ``c``, then clipped to ``[min_c, max_c]``
  of the clean channel (a constant channel stays unchanged); drawn from
  ``numpy.random.default_rng(seed).standard_normal`` in the image's float dtype, with
  :func:`corruption_seed` deriving the seed from a base seed, the case and the corruption, so every model
  sees the same noisy image;
* results are new arrays (the input is never changed nor returned) of the input's float dtype, float32 for
  integer images up to 16 bits.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter


def float_dtype(image: np.ndarray) -> np.dtype:
    """The dtype corrupted images get: float32, or float64 where the input needs it."""
    return np.result_type(image.dtype, np.float32)


def gaussian_blur(image: np.ndarray, *, sigma: float, axes: Sequence[int]) -> np.ndarray:
    """Blur every channel of ``image`` (C, *spatial) with a Gaussian of ``sigma`` voxels along the spatial
    ``axes`` (0 = first spatial axis), with ``gaussian_filter``'s defaults: mode 'reflect', truncate 4.0.

    Raises:
        ValueError: an axis is not a spatial axis of the image.
    """
    n_spatial = image.ndim - 1
    if any(not 0 <= axis < n_spatial for axis in axes):
        raise ValueError(f"Blur axes {tuple(axes)} are not spatial axes of an image with {n_spatial} spatial axes.")
    sigmas = [0.0] + [sigma if axis in axes else 0.0 for axis in range(n_spatial)]
    return gaussian_filter(image.astype(float_dtype(image), copy=False), sigma=sigmas)


def additive_noise(image: np.ndarray, *, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian noise of standard deviation ``fraction`` x (max - min) to every channel of ``image``
    (C, *spatial), then clip each channel back to its clean [min, max]."""
    noisy = image.astype(float_dtype(image), copy=True)
    spatial_axes = tuple(range(1, noisy.ndim))
    low = noisy.min(axis=spatial_axes, keepdims=True)
    high = noisy.max(axis=spatial_axes, keepdims=True)
    noisy += rng.standard_normal(noisy.shape, dtype=noisy.dtype) * (fraction * (high - low))
    return np.clip(noisy, low, high, out=noisy)


def corruption_seed(base_seed: int, case: str, corruption: str) -> int:
    """The noise seed of one case under one corruption: CRC-32 of ``"<base_seed>/<case>/<corruption>"``
    (stable across runs, machines and Python versions, unlike ``hash``)."""
    return zlib.crc32(f"{base_seed}/{case}/{corruption}".encode())


@dataclass(frozen=True)
class Corruption:
    """One named corruption: a Gaussian blur of ``blur_sigma`` voxels, then additive noise of
    ``noise_fraction`` of each channel's range; zero skips a step (both zero: the clean image)."""

    name: str
    blur_sigma: float = 0.0
    noise_fraction: float = 0.0

    def describe(self, blur_axes: Sequence[int] | None = None) -> str:
        """One line for reports, e.g. ``Gaussian blur, sigma 1 voxel on spatial axes (1, 2)``."""
        steps = []
        if self.blur_sigma:
            where = "" if blur_axes is None else f" on spatial axes {tuple(blur_axes)}"
            steps.append(f"Gaussian blur, sigma {self.blur_sigma:g} voxel{'s' * (self.blur_sigma != 1)}{where}")
        if self.noise_fraction:
            steps.append(f"additive Gaussian noise, sigma {100 * self.noise_fraction:g} % of each channel's "
                         f"intensity range, clipped to that range")
        return "; ".join(steps) or "no corruption"

    def apply(self, image: np.ndarray, *, blur_axes: Sequence[int], seed: int) -> np.ndarray:
        """The corrupted copy of ``image`` (C, *spatial); ``seed`` seeds the noise (see :func:`corruption_seed`)."""
        if self.blur_sigma:
            corrupted = gaussian_blur(image, sigma=self.blur_sigma, axes=blur_axes)
        else:
            corrupted = image.astype(float_dtype(image), copy=True)
        if self.noise_fraction:
            corrupted = additive_noise(corrupted, fraction=self.noise_fraction, rng=np.random.default_rng(seed))
        return corrupted


CORRUPTIONS: dict[str, Corruption] = {
    corruption.name: corruption
    for corruption in (
        Corruption("clean"),
        Corruption("blur_sigma1", blur_sigma=1.0),
        Corruption("blur_sigma2", blur_sigma=2.0),
        Corruption("noise_5pct", noise_fraction=0.05),
        Corruption("noise_10pct", noise_fraction=0.10),
    )
}
CORRUPTION_NAMES: tuple[str, ...] = tuple(CORRUPTIONS)


def select_corruptions(names: Sequence[str]) -> tuple[Corruption, ...]:
    """The registered corruptions of ``names``, in the given order, each once.

    Raises:
        ValueError: no names, or a name that is not registered.
    """
    unknown = [name for name in names if name not in CORRUPTIONS]
    if unknown or not names:
        raise ValueError(f"Unknown corruption {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"choose from {', '.join(CORRUPTION_NAMES)}.")
    return tuple(CORRUPTIONS[name] for name in dict.fromkeys(names))
