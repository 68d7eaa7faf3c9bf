"""Spread and variation of an impulse response: papers/segmentation-cnns-are-denoising-models.md, Appendix C.

Conventions (the authors' code, as the SUM facts sheet sum-facts.md records it), for responses of any
number of dimensions (the paper's 2-D formulas with the sums and distances over every axis):

* the response ``r`` is the impulse response itself, with no scaling; the spectrum is
  ``f = |fftshift(fftn(r))|`` over every axis, no zero padding, no window, DC at index ``N // 2``;
* SDS (eq. 29) weighs distances with ``|r| / sum |r|``: the paper prints ``r``, the code takes the
  absolute value (responses have negative lobes);
* FDS (eq. 29) weighs the distances of the bins to DC with ``f / sum f``;
* FDV (eq. 25-28) is ``sum sqrt(sum_axis D_axis^2) / ||f||_F`` with ``D_axis`` the 'valid'
  convolution of ``f`` with the unnormalised Sobel kernel of that axis (derivative ``[1, 0, -1]``
  along it, smoothing ``[1, 2, 1]`` along every other axis). In 2-D these are the true Sobel kernels
  ``[[1, 2, 1], [0, 0, 0], [-1, -2, -1]]`` and its transpose; the paper's printed ``s_h`` has a typo.

Inputs are numpy arrays or torch tensors; the metrics are computed in float64 and returned as floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

ArrayLike = np.ndarray | torch.Tensor

SOBEL_DERIVATIVE = np.array([1.0, 0.0, -1.0])
SOBEL_SMOOTHING = np.array([1.0, 2.0, 1.0])


@dataclass(frozen=True)
class ResponseMetrics:
    """SDS, FDS and FDV of one impulse response (Appendix C)."""

    sds: float
    fds: float
    fdv: float


def as_float64(values: ArrayLike) -> np.ndarray:
    """``values`` as a float64 numpy array (a torch tensor is detached and copied to the CPU)."""
    if isinstance(values, torch.Tensor):
        return values.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def magnitude_spectrum(response: ArrayLike) -> np.ndarray:
    """``f = |F{r}|`` of Appendix C: ``|fftshift(fftn(r))|`` over every axis, DC at ``N // 2``."""
    return np.abs(np.fft.fftshift(np.fft.fftn(as_float64(response))))


def _weighted_distance(weights: np.ndarray, centre: Sequence[int]) -> float:
    """``sum (w / sum w) * ||index - centre||``: the spread of eq. (29)."""
    if len(centre) != weights.ndim:
        raise ValueError(f"The centre {tuple(centre)} has {len(centre)} coordinates; "
                         f"the array has {weights.ndim} axes.")
    offsets = np.indices(weights.shape) - np.reshape(centre, (-1,) + (1,) * weights.ndim)
    return float(np.sum(weights * np.sqrt(np.sum(offsets**2, axis=0))) / np.sum(weights))


def spatial_domain_spread(response: ArrayLike, *, delta_position: Sequence[int] | None = None) -> float:
    """SDS of eq. (29): the mean distance to the delta's position, weighted by ``|r|``.

    Args:
        response: the impulse response ``r``, any number of axes.
        delta_position: index of the input delta in ``response``; default ``N // 2`` on every axis,
            where :func:`nnunet_deconver.analysis.impulse.impulse_response` puts it.
    """
    r = np.abs(as_float64(response))
    centre = tuple(n // 2 for n in r.shape) if delta_position is None else tuple(delta_position)
    return _weighted_distance(r, centre)


def frequency_domain_spread(spectrum: ArrayLike) -> float:
    """FDS of eq. (29): the mean distance of the bins to DC (``N // 2``), weighted by ``f``.

    Args:
        spectrum: ``f`` as :func:`magnitude_spectrum` returns it (fftshifted, non-negative).
    """
    f = as_float64(spectrum)
    return _weighted_distance(f, tuple(n // 2 for n in f.shape))


def _valid_correlation(values: np.ndarray, taps: np.ndarray, axis: int) -> np.ndarray:
    """'Valid' correlation of ``values`` with the 1-D ``taps`` along ``axis`` (the convolution with the
    Sobel taps up to the derivative's sign, which the gradient magnitude drops)."""
    return sliding_window_view(values, len(taps), axis=axis) @ taps


def sobel_gradient_magnitude(values: np.ndarray) -> np.ndarray:
    """``sqrt(sum_axis D_axis^2)`` of eq. (26), ``D_axis`` the 'valid' N-D Sobel derivative (eq. 27-28)."""
    if min(values.shape) < 3:
        raise ValueError(f"The Sobel gradient needs at least 3 samples on every axis; got shape {values.shape}.")
    squares = np.zeros(tuple(n - 2 for n in values.shape))
    for axis in range(values.ndim):
        derivative = values
        for other in range(values.ndim):
            taps = SOBEL_DERIVATIVE if other == axis else SOBEL_SMOOTHING
            derivative = _valid_correlation(derivative, taps, other)
        squares += derivative**2
    return np.sqrt(squares)


def frequency_domain_variation(spectrum: ArrayLike) -> float:
    """FDV of eq. (25): the total variation of ``f`` (eq. 26-28, Sobel, 'valid') over its Frobenius norm.

    Args:
        spectrum: ``f`` as :func:`magnitude_spectrum` returns it (the variation is taken on the
            fftshifted array, as the authors' code does).
    """
    f = as_float64(spectrum)
    return float(np.sum(sobel_gradient_magnitude(f)) / np.linalg.norm(f.ravel()))


def response_metrics(response: ArrayLike, *, delta_position: Sequence[int] | None = None) -> ResponseMetrics:
    """SDS of ``response`` and FDS, FDV of its :func:`magnitude_spectrum` (Appendix C)."""
    spectrum = magnitude_spectrum(response)
    return ResponseMetrics(
        sds=spatial_domain_spread(response, delta_position=delta_position),
        fds=frequency_domain_spread(spectrum),
        fdv=frequency_domain_variation(spectrum),
    )
