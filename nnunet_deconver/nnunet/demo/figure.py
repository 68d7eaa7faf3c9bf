"""The demo's picture of one held-out case: image, reference label and every trainer's prediction.

One row per configuration, columns image | label | one prediction per trainer, all on the same axial
slice (the middle one of the case's last axis), shown with the image's first axis horizontal and its
second axis pointing up.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

# background, then one colour per foreground class (enough for small demo datasets)
LABEL_COLOURS = ("black", "tab:orange", "tab:cyan", "tab:green", "tab:red", "tab:purple", "tab:olive")

# configuration -> [(panel title, 2-D picture)], columns image, label, then one per trainer
Panels = dict[str, list[tuple[str, np.ndarray]]]


def middle_axial_slice(path: Path) -> np.ndarray:
    """The middle slice of a NIfTI volume's last axis, turned so its second axis points up."""
    volume = np.asarray(nib.load(path).dataobj)
    return np.rot90(volume[..., volume.shape[-1] // 2])


def comparison_panels(image_file: Path, label_file: Path, predictions: Mapping[tuple[str, str], Path]) -> Panels:
    """The pictures to draw, per configuration.

    Args:
        image_file: the case's image (its first channel), e.g. ``imagesTs/CASE_0000.nii.gz``.
        label_file: its reference segmentation.
        predictions: (configuration, trainer) -> that trainer's segmentation of the case.

    Raises:
        ValueError: if a prediction's grid differs from the label's (predicted from another case).
    """
    image, label = middle_axial_slice(image_file), middle_axial_slice(label_file)
    panels: Panels = {}
    for (configuration, trainer), prediction_file in predictions.items():
        prediction = middle_axial_slice(prediction_file)
        if prediction.shape != label.shape:
            raise ValueError(f"{prediction_file} has a {prediction.shape} slice but the label {label_file} has "
                             f"{label.shape}; both must be segmentations of the same case.")
        row = panels.setdefault(configuration, [("image", image), ("reference label", label)])
        row.append((trainer, prediction))
    return panels


def save_comparison_figure(panels: Panels, labels: Mapping[str, int], title: str, path: Path) -> None:
    """Draw ``panels`` (from :func:`comparison_panels`) as a PNG at ``path``.

    Args:
        labels: the dataset.json ``labels`` (class name -> value 0, 1, ...), for the colours and the legend.
        title: the figure's title (which case, which slice).
    """
    if len(labels) > len(LABEL_COLOURS):
        raise ValueError(f"The figure has colours for {len(LABEL_COLOURS)} labels, the dataset has {len(labels)}.")
    colours = ListedColormap(LABEL_COLOURS[:len(labels)])
    n_columns = max(len(row) for row in panels.values())
    figure = Figure(figsize=(2.3 * n_columns, 2.5 * len(panels) + 0.6))
    axes = figure.subplots(len(panels), n_columns, squeeze=False)
    for axes_row, (configuration, row) in zip(axes, panels.items()):
        for column, (axis, (panel_title, picture)) in enumerate(zip(axes_row, row)):
            if column == 0:
                axis.imshow(picture, cmap="gray", interpolation="nearest")
            else:
                axis.imshow(picture, cmap=colours, vmin=0, vmax=len(labels) - 1, interpolation="nearest")
            axis.set_title(panel_title, fontsize=8)
        axes_row[0].set_ylabel(configuration, fontsize=10)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_frame_on(axis.has_data())
    legend = [Patch(color=LABEL_COLOURS[value], label=name) for name, value in labels.items()]
    figure.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=8, frameon=False)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.savefig(path, dpi=100)
