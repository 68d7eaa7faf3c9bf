"""The figures of ``nnunet-deconver impulse``, from numpy arrays (matplotlib, no display needed).

* :func:`save_impulse_figure`, like Fig. 3 of papers/segmentation-cnns-are-denoising-models.md: the
  impulse response r (a diverging colour map symmetric about 0) next to its log-magnitude spectrum
  20 log10 |F{r}| (DC in the centre), with SDS, FDS and FDV (Appendix C). A 3-D response is drawn as
  three rows, the planes through the delta (response) and through DC (spectrum) normal to each axis.
* :func:`save_signal_flow_figure`, like Fig. 2 (signal flow of Appendix D, Fig. 7): input, the ED at
  alpha = 0 (its linear part), the ED at alpha = 1 (c^, the input of the output layer), the
  prediction and, if known, the label, on one slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from nnunet_deconver.analysis.impulse import log_magnitude_spectrum
from nnunet_deconver.analysis.response_metrics import ResponseMetrics


def _planes(volume: np.ndarray, centre: Sequence[int]) -> list[tuple[str, np.ndarray]]:
    """The array itself (2-D), or its planes through ``centre`` normal to each axis (3-D), with their names."""
    if volume.ndim == 2:
        return [("", volume)]
    return [(f"axis {axis} = {centre[axis]}", np.take(volume, centre[axis], axis=axis)) for axis in range(volume.ndim)]


def save_impulse_figure(response: np.ndarray, path: Path, *, delta_position: Sequence[int],
                        metrics: ResponseMetrics, title: str) -> None:
    """PNG of ``response`` (2-D or 3-D) and its log-magnitude spectrum, side by side (module docstring).

    Args:
        response: the impulse response (or linearised response) crop.
        delta_position: where the delta sits in ``response`` (the 3-D planes go through it).
        metrics: of ``response``, shown in the titles.
        title: the figure's title (which model, which kind of response).
    """
    spectrum = log_magnitude_spectrum(response)
    planes = list(zip(_planes(response, delta_position), _planes(spectrum, [n // 2 for n in response.shape])))
    limit = float(np.abs(response).max()) or 1.0
    figure = Figure(figsize=(9.5, 4.2 * len(planes) + 0.5))
    axes = figure.subplots(len(planes), 2, squeeze=False)
    for (spatial, spectral), ((plane, values), (_, decibels)) in zip(axes, planes):
        shown = spatial.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        figure.colorbar(shown, ax=spatial, fraction=0.046)
        spatial.set_title(f"response {plane}\nSDS {metrics.sds:.2f}".strip(), fontsize=9)
        shown = spectral.imshow(decibels, cmap="viridis", interpolation="nearest")
        figure.colorbar(shown, ax=spectral, fraction=0.046, label="dB")
        spectral.set_title(f"log-magnitude spectrum {plane}\nFDS {metrics.fds:.2f}, FDV {metrics.fdv:.3f}", fontsize=9)
        for axis in (spatial, spectral):
            axis.set_xticks([])
            axis.set_yticks([])
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


@dataclass(frozen=True)
class SignalFlow:
    """One slice of each signal of Fig. 2 (2-D arrays of the same shape); ``label`` may be unknown."""

    image: np.ndarray
    linear_ed: np.ndarray
    nonlinear_ed: np.ndarray
    prediction: np.ndarray
    label: np.ndarray | None = None


def save_signal_flow_figure(flow: SignalFlow, path: Path, *, title: str) -> None:
    """PNG of the signal flow of Fig. 2 in one row: the image and the ED outputs each on its own grey scale,
    the prediction and the label on one shared scale of class values."""
    label_maps = [("prediction", flow.prediction)] + ([("label", flow.label)] if flow.label is not None else [])
    classes = {"cmap": "viridis", "vmin": 0, "vmax": max(1, *(float(values.max()) for _, values in label_maps))}
    panels = [("input", flow.image, {"cmap": "gray"}), ("ED at alpha = 0 (linear)", flow.linear_ed, {"cmap": "gray"}),
              ("ED at alpha = 1 (input of the output layer)", flow.nonlinear_ed, {"cmap": "gray"}),
              *((name, values, classes) for name, values in label_maps)]
    figure = Figure(figsize=(2.8 * len(panels), 3.3))
    for axis, (name, picture, scale) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        axis.imshow(picture, interpolation="nearest", **scale)
        axis.set_title(name, fontsize=8)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
